//! Criterion benches of the ops at DARTS search sizes (batch 64, 16–64 channels, 32×32 down to
//! 8×8), per kernel family: forward alone, and forward + backward through the tape, on the CPU
//! always and on CUDA GPU 0 when one is usable (otherwise one line says why it was skipped).
//! On CUDA, each iteration waits for the GPU, so the times are the kernels' and not the launches'.
//! A `cuda-variants` group times a family's kernel variants side by side on the same data.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use darts::device::cpu::softmax::Lanes;
use darts::device::gpu::matmul::{self, DeviceMat};
use darts::device::gpu::softmax::{Normalize, Strategy, lanes_forward};
use darts::device::gpu::{GemmPrecision, elementwise, mixed};
use darts::ops::batchnorm::{Activation, batch_norm_train};
use darts::ops::conv::{Conv2dArgs, Conv2dParams, conv2d, conv2d_many};
use darts::ops::elementwise::{add_all, weighted_sum_at};
use darts::ops::mixed::{MixedTerm, normalized_weighted_sum_at};
use darts::ops::pool::{avg_pool2d, max_and_avg_pool2d, max_pool2d};
use darts::ops::softmax::softmax;
use darts::{Device, Result, Rng, Tape, Tensor, Var};

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
            op: Box::new(|t, v| {
                Ok(batch_norm_train(t, v[0], None, 1e-5, None, Activation::Identity)?.0)
            }),
        });
        // A DARTS search edge's end: seven candidates, six batch-normalised, and the weighted
        // sum, as one op and op by op.
        let mut edge: Vec<Tensor> = (0..7).map(|k| randn(&[64, c, hw, hw], 10 + k)).collect();
        edge.push(randn(&[7], 17));
        cases.push(Case {
            name: format!("mixed_edge_fused/{c}x{hw}x{hw}"),
            inputs: edge.clone(),
            op: Box::new(|t, v| {
                let terms: Vec<MixedTerm<'_>> = (v[..7].iter().enumerate())
                    .map(|(k, &x)| match k {
                        2 => MixedTerm::Plain(x),
                        _ => MixedTerm::Normalized(x, None),
                    })
                    .collect();
                Ok(normalized_weighted_sum_at(t, &terms, v[7], 0, 1e-5)?.0)
            }),
        });
        cases.push(Case {
            name: format!("mixed_edge_ops/{c}x{hw}x{hw}"),
            inputs: edge,
            op: Box::new(|t, v| {
                let ts = (v[..7].iter().enumerate())
                    .map(|(k, &x)| match k {
                        2 => Ok(x),
                        _ => Ok(batch_norm_train(t, x, None, 1e-5, None, Activation::Identity)?.0),
                    })
                    .collect::<Result<Vec<_>>>()?;
                weighted_sum_at(t, &ts, v[7], 0)
            }),
        });
        // A DARTS search edge's first convolution stage: the first depthwise convolutions of its
        // four separable and dilated candidates on one input, then their four 1×1
        // convolutions, as two ops (two launches each way on a GPU) and one by one.
        let mut stage = vec![x.clone()];
        stage.extend(
            EDGE_WINDOWS
                .iter()
                .map(|&(k, _)| randn(&[c, 1, k, k], 40 + k as u64)),
        );
        stage.extend((0..4).map(|s| randn(&[c, c, 1, 1], 50 + s)));
        for (label, as_one_op) in [("one_op", true), ("one_by_one", false)] {
            cases.push(Case {
                name: format!("edge_convs_{label}/{c}x{hw}x{hw}"),
                inputs: stage.clone(),
                op: Box::new(move |t, v| edge_first_stage(t, v, c, as_one_op)),
            });
        }
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
        // A search edge's two pooling candidates as one op (one launch each way on a GPU).
        cases.push(Case {
            name: format!("maxavgpool3x3_s1/{c}x{hw}x{hw}"),
            inputs: vec![x.clone()],
            op: Box::new(|t, v| {
                let pools = max_and_avg_pool2d(t, v[0], 3, 1, 1)?;
                add_all(t, &pools)
            }),
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

/// The kernel size and dilation of the first depthwise convolution of a DARTS edge's
/// sep_conv_3x3, sep_conv_5x5, dil_conv_3x3 and dil_conv_5x5.
const EDGE_WINDOWS: [(usize, usize); 4] = [(3, 1), (5, 1), (3, 2), (5, 2)];

/// An edge's first convolution stage on `v = [x, four depthwise weights, four 1×1 weights]` (`c`
/// channels), its four outputs added up: through `conv2d_many` or one `conv2d` at a time.
fn edge_first_stage(t: &mut Tape, v: &[Var], c: usize, as_one_op: bool) -> Result<Var> {
    let depthwise: Vec<Conv2dArgs> = (EDGE_WINDOWS.iter().enumerate())
        .map(|(s, &(k, d))| Conv2dArgs {
            x: v[0],
            weight: v[1 + s],
            params: Conv2dParams::new(1, d * (k - 1) / 2).dilation(d).groups(c),
        })
        .collect();
    let convs = |t: &mut Tape, args: &[Conv2dArgs]| match as_one_op {
        true => conv2d_many(t, args),
        false => (args.iter())
            .map(|a| conv2d(t, a.x, a.weight, None, a.params))
            .collect(),
    };
    let hs = convs(t, &depthwise)?;
    let pointwise: Vec<Conv2dArgs> = (hs.iter().enumerate())
        .map(|(s, &h)| Conv2dArgs {
            x: h,
            weight: v[5 + s],
            params: Conv2dParams::default(),
        })
        .collect();
    let ys = convs(t, &pointwise)?;
    add_all(t, &ys)
}

fn run(case: &Case, inputs: &[Tensor], backward: bool, device: Device) {
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|x| tape.leaf(x.clone())).collect();
    let y = (case.op)(&mut tape, &vars).unwrap();
    if backward {
        let seed = Tensor::full_on(tape.shape(y), 1.0, device).unwrap();
        tape.backward_from(y, seed, &vars).unwrap();
    }
    device.synchronize().unwrap();
}

/// The devices to bench: the CPU, and CUDA GPU 0 when it can run here.
fn devices() -> Vec<Device> {
    match Device::Cuda(0).check_available() {
        Ok(()) => vec![Device::Cpu, Device::Cuda(0)],
        Err(e) => {
            println!("cuda benches skipped: {e}");
            vec![Device::Cpu]
        }
    }
}

fn ops(c: &mut Criterion) {
    // As the `darts` binary does, so the numbers match it.
    darts::malloc::keep_freed_memory();
    for device in devices() {
        let mut group = c.benchmark_group(device.to_string());
        group.sample_size(10);
        group.warm_up_time(std::time::Duration::from_millis(300));
        group.measurement_time(std::time::Duration::from_secs(1));
        for case in cases() {
            let inputs: Vec<Tensor> = case
                .inputs
                .iter()
                .map(|t| t.to_device(device).unwrap())
                .collect();
            for (label, backward) in [("forward", false), ("fwd+bwd", true)] {
                group.bench_function(BenchmarkId::new(label, &case.name), |b| {
                    b.iter(|| run(&case, &inputs, backward, device))
                });
            }
        }
        group.finish();
    }
}

/// Kernel variants of one family side by side on CUDA: softmax with a block per lane and with a
/// thread per lane (the α rows, and channels of an NCHW tensor), the mixed op over stacked
/// candidates against the one reading each candidate in place, and the GEMM in float (SIMT)
/// against TF32 tensor cores.
fn cuda_variants(c: &mut Criterion) {
    darts::malloc::keep_freed_memory();
    let device = Device::Cuda(0);
    let Ok(Some(exec)) = device.executor() else {
        return;
    };
    let mut group = c.benchmark_group("cuda-variants");
    group.sample_size(10);
    let upload = |shape: &[usize], seed| exec.to_device(randn(shape, seed).data()).unwrap();
    for (name, shape, dim) in [
        ("alpha_14x8", vec![14, 8], 1),
        ("channels_64x16x32x32", vec![64, 16, 32, 32], 1),
    ] {
        let x = upload(&shape, 6);
        let lanes = Lanes::new(&shape, dim);
        for strategy in [Strategy::BlockPerLane, Strategy::ThreadPerLane] {
            let id = BenchmarkId::new(format!("softmax {strategy:?}"), name);
            group.bench_function(id, |b| {
                b.iter(|| {
                    lanes_forward(exec, Normalize::Softmax, strategy, &x, lanes).unwrap();
                    exec.synchronize().unwrap();
                })
            });
        }
    }
    let n = 64 * 16 * 32 * 32;
    let candidates: Vec<_> = (0..8).map(|k| upload(&[n], 10 + k)).collect();
    let stacked = upload(&[8 * n], 20);
    let weights = upload(&[8], 21);
    group.bench_function("mixed op, stacked [8, n]", |b| {
        b.iter(|| {
            elementwise::weighted_sum(exec, &stacked, &weights).unwrap();
            exec.synchronize().unwrap();
        })
    });
    let refs: Vec<_> = candidates.iter().collect();
    group.bench_function("mixed op, 8 buffers in place", |b| {
        b.iter(|| {
            let run = mixed::WeightRun {
                weights: &weights,
                offset: 0,
            };
            mixed::mixed_forward(exec, &refs, run).unwrap();
            exec.synchronize().unwrap();
        })
    });
    // A 1×1 conv of a search cell's 64 channels over a batch of 64 images of 8×8 (one GEMM of
    // the whole batch), and a large square product.
    for (m, k, n) in [(64, 64, 64 * 8 * 8), (1024, 1024, 1024)] {
        let (a, b) = (upload(&[m, k], 30), upload(&[k, n], 31));
        let mut out = exec.alloc::<f32>(m * n).unwrap();
        for precision in [GemmPrecision::F32, GemmPrecision::Tf32] {
            exec.set_gemm_precision(precision).unwrap();
            let id = BenchmarkId::new(format!("gemm {precision:?}"), format!("{m}x{k}x{n}"));
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    let (a, b) = (DeviceMat::new(&a, m, k), DeviceMat::new(&b, k, n));
                    matmul::gemm(exec, a, b, 0.0, &mut out).unwrap();
                    exec.synchronize().unwrap();
                })
            });
        }
        exec.set_gemm_precision(GemmPrecision::F32).unwrap();
    }
    group.finish();
}

criterion_group!(benches, ops, cuda_variants);
criterion_main!(benches);
