//! Criterion benches of the CPU ops at DARTS search sizes (batch 64, 16–64 channels, 32×32 down to
//! 8×8): forward alone, and forward + backward through the tape.

/// The allocator the `darts` binary uses, so the numbers match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use darts::ops::batchnorm::batch_norm_train;
use darts::ops::conv::{Conv2dParams, conv2d};
use darts::ops::pool::{avg_pool2d, max_pool2d};
use darts::ops::softmax::softmax;
use darts::{Result, Rng, Tape, Tensor, Var};

/// An op applied to leaf variables on a tape.
type OpFn = Box<dyn Fn(&mut Tape, &[Var]) -> Result<Var>>;

/// One op applied to leaves, with the inputs it needs.
struct Case {
    name: String,
    inputs: Vec<Tensor>,
    op: OpFn,
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::normal(shape, 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for &(c, hw) in &[(16, 32), (32, 16), (64, 8)] {
        let x = randn(&[64, c, hw, hw], 1);
        for &(k, d) in &[(3, 1), (3, 2), (5, 1)] {
            let p = Conv2dParams::new(1, d * (k - 1) / 2).dilation(d).groups(c);
            cases.push(Case {
                name: format!("dwconv{k}x{k}_d{d}/{c}x{hw}x{hw}"),
                inputs: vec![x.clone(), randn(&[c, 1, k, k], 2)],
                op: Box::new(move |t, v| conv2d(t, v[0], v[1], None, p)),
            });
        }
        cases.push(Case {
            name: format!("conv1x1/{c}x{hw}x{hw}"),
            inputs: vec![x.clone(), randn(&[c, c, 1, 1], 3)],
            op: Box::new(|t, v| conv2d(t, v[0], v[1], None, Conv2dParams::default())),
        });
        cases.push(Case {
            name: format!("batchnorm/{c}x{hw}x{hw}"),
            inputs: vec![x.clone()],
            op: Box::new(|t, v| Ok(batch_norm_train(t, v[0], None, 1e-5)?.0)),
        });
        cases.push(Case {
            name: format!("maxpool3x3_s1/{c}x{hw}x{hw}"),
            inputs: vec![x.clone()],
            op: Box::new(|t, v| max_pool2d(t, v[0], 3, 1, 1)),
        });
        cases.push(Case {
            name: format!("avgpool3x3_s1/{c}x{hw}x{hw}"),
            inputs: vec![x.clone()],
            op: Box::new(|t, v| avg_pool2d(t, v[0], 3, 1, 1)),
        });
    }
    cases.push(Case {
        name: "softmax/alpha_14x8".into(),
        inputs: vec![randn(&[14, 8], 4)],
        op: Box::new(|t, v| softmax(t, v[0], 1)),
    });
    cases.push(Case {
        name: "softmax/logits_64x10".into(),
        inputs: vec![randn(&[64, 10], 5)],
        op: Box::new(|t, v| softmax(t, v[0], 1)),
    });
    cases
}

fn run(case: &Case, backward: bool) {
    let mut tape = Tape::new();
    let vars: Vec<Var> = case.inputs.iter().map(|x| tape.leaf(x.clone())).collect();
    let y = (case.op)(&mut tape, &vars).unwrap();
    if backward {
        let seed = Tensor::full(tape.shape(y), 1.0).unwrap();
        tape.backward_from(y, seed, &vars).unwrap();
    }
}

fn ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(300));
    group.measurement_time(std::time::Duration::from_secs(1));
    for case in cases() {
        group.bench_with_input(BenchmarkId::new("forward", &case.name), &case, |b, case| {
            b.iter(|| run(case, false))
        });
        group.bench_with_input(BenchmarkId::new("fwd+bwd", &case.name), &case, |b, case| {
            b.iter(|| run(case, true))
        });
    }
    group.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
