//! Every op of the engine on the emulator (the CUDA kernels and launch code, run on the host), and
//! on a CUDA GPU when one is present, against the same op on the CPU reference: forward values and the gradients of every input,
//! through the tape, on small awkward shapes. This checks the dispatch from `ops` to the GPU
//! families (argument order, shapes, saved tensors); the kernels themselves are checked one by
//! one in `tests/kernels_*.rs`.

mod common;

use common::{assert_close, randn, randn_away_from_zero, uniform};
use darts::ops::batchnorm::{Activation, RunningStats, batch_norm_eval, batch_norm_train};
use darts::ops::conv::{Conv2dArgs, Conv2dParams, conv2d, conv2d_many};
use darts::ops::dropout::{drop_path, dropout, variational_dropout};
use darts::ops::elementwise::{
    add, add_all, mul, relu, scale, sigmoid, sub, tanh, weighted_sum, weighted_sum_at,
};
use darts::ops::matmul::{embedding, linear, matmul};
use darts::ops::mixed::{MixedTerm, normalized_weighted_sum_at};
use darts::ops::pool::{avg_pool2d, global_avg_pool, max_and_avg_pool2d, max_pool2d};
use darts::ops::reduce::{mean, sum};
use darts::ops::rnn::{NodeActivation, recurrent_node};
use darts::ops::shape::{concat, reshape, slice, zero};
use darts::ops::softmax::{cross_entropy, log_softmax, softmax};
use darts::optim::adam::Adam;
use darts::optim::asgd::Asgd;
use darts::optim::clip::clip_grad_norm;
use darts::optim::optimizer::Optimizer;
use darts::optim::sgd::Sgd;
use darts::{Device, Result, Tape, Tensor, Var};

/// Absolute and relative tolerance for comparing the two devices: the GEMMs and reductions add in
/// other orders, and `expf`/`tanhf` differ by an ulp or two.
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

/// The output and the input gradients of `f` on `device`, copied to the host. The output
/// gradient seed is fixed random data, so every element of every gradient matters.
fn run(
    device: Device,
    inputs: &[Tensor],
    f: &dyn Fn(&mut Tape, &[Var]) -> Result<Var>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| tape.leaf(t.to_device(device).unwrap()))
        .collect();
    let y = f(&mut tape, &vars).unwrap();
    let value = tape.value(y).clone();
    assert_eq!(value.device(), device, "the output stays on {device}");
    let seed = randn(value.shape(), 99).to_device(device).unwrap();
    let grads = tape.backward_from(y, seed, &vars).unwrap();
    let host = |t: &Tensor| t.to_host().unwrap().to_vec();
    (host(&value), grads.iter().map(host).collect())
}

/// The GPU devices to compare with the CPU: the emulator, and CUDA GPU 0 when it can run here
/// (otherwise a printed line says the CUDA half was skipped).
fn gpu_devices() -> Vec<Device> {
    match Device::Cuda(0).check_available() {
        Ok(()) => vec![Device::Emu, Device::Cuda(0)],
        Err(e) => {
            println!("skipped the cuda half: {e}");
            vec![Device::Emu]
        }
    }
}

/// Runs `f` on the CPU and on each GPU device and compares the outputs and every input gradient.
fn check(what: &str, inputs: Vec<Tensor>, f: impl Fn(&mut Tape, &[Var]) -> Result<Var>) {
    let (y_cpu, g_cpu) = run(Device::Cpu, &inputs, &f);
    for device in gpu_devices() {
        let (y, g) = run(device, &inputs, &f);
        assert_close(
            &format!("{what} on {device}: output"),
            &y,
            &y_cpu,
            ATOL,
            RTOL,
        );
        for (i, (e, c)) in g.iter().zip(&g_cpu).enumerate() {
            assert_close(
                &format!("{what} on {device}: gradient {i}"),
                e,
                c,
                ATOL,
                RTOL,
            );
        }
    }
}

#[test]
fn elementwise_ops() {
    let (a, b) = (
        randn_away_from_zero(&[3, 5, 7], 1, 0.01),
        randn(&[3, 5, 7], 2),
    );
    check("relu", vec![a.clone()], |t, v| relu(t, v[0]));
    check("tanh", vec![a.clone()], |t, v| tanh(t, v[0]));
    check("sigmoid", vec![a.clone()], |t, v| sigmoid(t, v[0]));
    check("add", vec![a.clone(), b.clone()], |t, v| add(t, v[0], v[1]));
    check("add_all", vec![a.clone(), b.clone(), a.clone()], add_all);
    check("sub", vec![a.clone(), b.clone()], |t, v| sub(t, v[0], v[1]));
    check("mul", vec![a.clone(), b.clone()], |t, v| mul(t, v[0], v[1]));
    check("scale", vec![a.clone()], |t, v| scale(t, v[0], -1.5));
    let w = uniform(&[3], 0.0, 1.0, 3);
    let c = randn(&[3, 5, 7], 4);
    check(
        "weighted_sum",
        vec![a.clone(), b.clone(), c.clone(), w],
        |t, v| weighted_sum(t, &v[..3], v[3]),
    );
    // Three weights from row 2, column 1 of a [4, 8] matrix, as a DARTS edge reads its row.
    let matrix = uniform(&[4, 8], 0.0, 1.0, 5);
    check("weighted_sum_at", vec![a, b, c, matrix], |t, v| {
        weighted_sum_at(t, &v[..3], v[3], 17)
    });
}

#[test]
fn convolutions() {
    let x = randn(&[2, 6, 9, 7], 5);
    let cases = [
        ("dense 3x3", [4, 6, 3, 3], Conv2dParams::new(1, 1)),
        ("dense 5x5 stride 2", [3, 6, 5, 5], Conv2dParams::new(2, 2)),
        ("pointwise", [5, 6, 1, 1], Conv2dParams::default()),
        (
            "depthwise dilated stride 2",
            [6, 1, 3, 3],
            Conv2dParams::new(2, 2).dilation(2).groups(6),
        ),
        ("grouped", [4, 3, 3, 3], Conv2dParams::new(1, 1).groups(2)),
    ];
    for (what, w_shape, params) in cases {
        let w = randn(&w_shape, 6);
        let b = randn(&[w_shape[0]], 7);
        check(what, vec![x.clone(), w.clone()], |t, v| {
            conv2d(t, v[0], v[1], None, params)
        });
        check(&format!("{what} + bias"), vec![x.clone(), w, b], |t, v| {
            conv2d(t, v[0], v[1], Some(v[2]), params)
        });
    }
}

/// Five convolutions of one shape as one op (two launches per kernel on a GPU), concatenated:
/// a DARTS edge's first-stage depthwise windows plus one more, all on one input, and five 1×1
/// convolutions on two inputs.
#[test]
fn convolutions_of_one_shape() {
    let c = 6;
    let depthwise = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2), (3, 1, 1)]
        .map(|(k, pad, dil)| (k, Conv2dParams::new(2, pad).dilation(dil).groups(c)));
    let pointwise = [(1, Conv2dParams::default()); 5];
    for (what, convs, inputs) in [
        ("depthwise convolutions", depthwise, [0; 5]),
        ("1x1 convolutions", pointwise, [0, 1, 0, 1, 1]),
    ] {
        let mut tensors = vec![randn(&[2, c, 9, 7], 8), randn(&[2, c, 9, 7], 9)];
        for (s, (k, params)) in convs.iter().enumerate() {
            tensors.push(randn(&[c, c / params.groups, *k, *k], 10 + s as u64));
        }
        check(what, tensors, |t, v| {
            let args: Vec<Conv2dArgs> = (convs.iter().zip(inputs).enumerate())
                .map(|(s, (&(_, params), input))| Conv2dArgs {
                    x: v[input],
                    weight: v[2 + s],
                    params,
                })
                .collect();
            let ys = conv2d_many(t, &args)?;
            concat(t, &ys, 1)
        });
    }
}

#[test]
fn pooling() {
    let x = randn(&[2, 3, 7, 6], 8);
    check("max_pool 3x3", vec![x.clone()], |t, v| {
        max_pool2d(t, v[0], 3, 1, 1)
    });
    check("max_pool stride 2", vec![x.clone()], |t, v| {
        max_pool2d(t, v[0], 3, 2, 1)
    });
    check("avg_pool 3x3", vec![x.clone()], |t, v| {
        avg_pool2d(t, v[0], 3, 1, 1)
    });
    check("avg_pool stride 2", vec![x.clone()], |t, v| {
        avg_pool2d(t, v[0], 3, 2, 1)
    });
    for stride in [1, 2] {
        check(
            &format!("max and avg pool, stride {stride}"),
            vec![x.clone()],
            |t, v| {
                let pools = max_and_avg_pool2d(t, v[0], 3, stride, 1)?;
                concat(t, &pools, 1)
            },
        );
    }
    check("global_avg_pool", vec![x], |t, v| global_avg_pool(t, v[0]));
}

#[test]
fn batch_norm() {
    let x = randn(&[3, 5, 4, 3], 9);
    let (gamma, beta) = (randn(&[5], 10), randn(&[5], 11));
    let mean_ = randn(&[5], 13);
    let var_ = uniform(&[5], 0.5, 2.0, 14);
    for act in [Activation::Identity, Activation::Relu] {
        let name = |what: &str| format!("bn {what} {act:?}");
        let train = |t: &mut Tape, v: &[Var]| {
            let affine = (v.len() == 3).then(|| (v[1], v[2]));
            Ok(batch_norm_train(t, v[0], affine, 1e-5, None, act)?.0)
        };
        let affine_inputs = vec![x.clone(), gamma.clone(), beta.clone()];
        check(&name("train affine"), affine_inputs.clone(), train);
        check(&name("train plain"), vec![x.clone()], train);
        check(&name("train [N, C]"), vec![randn(&[7, 5], 12)], train);
        let eval = |t: &mut Tape, v: &[Var]| {
            let device = t.value(v[0]).device();
            let (m, s) = (
                mean_.to_device(device).unwrap(),
                var_.to_device(device).unwrap(),
            );
            let affine = (v.len() == 3).then(|| (v[1], v[2]));
            batch_norm_eval(t, v[0], affine, &m, &s, 1e-5, act)
        };
        check(&name("eval affine"), affine_inputs, eval);
        check(&name("eval plain"), vec![x.clone()], eval);
    }
    // The running statistics after one training forward, with and without affine parameters.
    let stats_on = |device: Device| -> Vec<Vec<f32>> {
        let mut tape = Tape::new();
        let on = |t: &Tensor| t.to_device(device).unwrap();
        let xv = tape.constant(on(&x));
        let (g, b) = (tape.constant(on(&gamma)), tape.constant(on(&beta)));
        let (m, s) = (on(&mean_), on(&var_));
        let running = RunningStats {
            mean: &m,
            var: &s,
            momentum: 0.1,
        };
        [None, Some((g, b))]
            .into_iter()
            .flat_map(|affine| {
                let (_, new) = batch_norm_train(
                    &mut tape,
                    xv,
                    affine,
                    1e-5,
                    Some(running),
                    Activation::Identity,
                )
                .unwrap();
                let (m, s) = new.unwrap();
                [m, s]
            })
            .map(|t| t.to_host().unwrap().to_vec())
            .collect()
    };
    for device in gpu_devices() {
        for (e, c) in stats_on(device).iter().zip(stats_on(Device::Cpu)) {
            assert_close("running statistics", e, &c, ATOL, RTOL);
        }
    }
}

#[test]
fn mixed_edge() {
    // Seven candidates of a DARTS edge, all but the third batch-normalised, summed with row 1 of
    // a [3, 8] matrix of weights (from flat position 9); awkward sizes.
    let shape = [3, 5, 7, 3];
    let mut inputs: Vec<Tensor> = (0..7)
        .map(|k| randn(&shape, 60 + k).map(|v| (1.0 + k as f32 * 0.3) * v + k as f32 - 2.0))
        .collect();
    inputs.push(uniform(&[3, 8], 0.05, 1.0, 70));
    check("normalized_weighted_sum", inputs.clone(), |t, v| {
        let terms: Vec<MixedTerm<'_>> = v[..7]
            .iter()
            .enumerate()
            .map(|(k, &x)| match k {
                2 => MixedTerm::Plain(x),
                _ => MixedTerm::Normalized(x, None),
            })
            .collect();
        Ok(normalized_weighted_sum_at(t, &terms, v[7], 9, 1e-5)?.0)
    });
    // In eval mode, with each candidate's running mean and variance as two more inputs (which
    // get no gradient).
    for k in 0..7 {
        inputs.push(randn(&[5], 80 + k));
        inputs.push(uniform(&[5], 0.5, 2.0, 90 + k));
    }
    check("normalized_weighted_sum eval", inputs, |t, v| {
        let stats: Vec<(Tensor, Tensor)> = (0..7)
            .map(|k| (t.value(v[8 + 2 * k]).clone(), t.value(v[9 + 2 * k]).clone()))
            .collect();
        let terms: Vec<MixedTerm<'_>> = (v[..7].iter().zip(&stats).enumerate())
            .map(|(k, (&x, (mean, var)))| match k {
                2 => MixedTerm::Plain(x),
                _ => MixedTerm::Eval { x, mean, var },
            })
            .collect();
        Ok(normalized_weighted_sum_at(t, &terms, v[7], 9, 1e-5)?.0)
    });
}

#[test]
fn matrix_products() {
    let (a, b) = (randn(&[5, 7], 15), randn(&[7, 3], 16));
    check("matmul", vec![a.clone(), b], |t, v| matmul(t, v[0], v[1]));
    let (w, bias) = (randn(&[4, 7], 17), randn(&[4], 18));
    check("linear", vec![a.clone(), w.clone(), bias], |t, v| {
        linear(t, v[0], v[1], Some(v[2]))
    });
    check("linear without bias", vec![a, w], |t, v| {
        linear(t, v[0], v[1], None)
    });
    let table = randn(&[6, 5], 19);
    check("embedding", vec![table], |t, v| {
        embedding(t, v[0], &[3, 0, 3, 5, 1])
    });
}

#[test]
fn softmax_and_losses() {
    let x = randn(&[4, 3, 5], 20);
    check("softmax dim 2", vec![x.clone()], |t, v| softmax(t, v[0], 2));
    check("softmax dim 1", vec![x.clone()], |t, v| softmax(t, v[0], 1));
    check("log_softmax dim 0", vec![x.clone()], |t, v| {
        log_softmax(t, v[0], 0)
    });
    let logits = randn(&[5, 7], 21);
    check("cross_entropy", vec![logits.clone()], |t, v| {
        cross_entropy(t, v[0], &[1, 6, 0, 3, 3], 0.0)
    });
    check("cross_entropy smoothed", vec![logits], |t, v| {
        cross_entropy(t, v[0], &[1, 6, 0, 3, 3], 0.1)
    });
    check("sum", vec![x.clone()], |t, v| sum(t, v[0]));
    check("mean", vec![x], |t, v| mean(t, v[0]));
}

#[test]
fn shape_ops() {
    let x = randn(&[2, 5, 6, 7], 22);
    check("reshape", vec![x.clone()], |t, v| {
        reshape(t, v[0], &[10, 42])
    });
    check("factorized-reduce slice", vec![x.clone()], |t, v| {
        slice(t, v[0], &[0..2, 0..5, 1..6, 1..7])
    });
    check("channel slice", vec![x.clone()], |t, v| {
        slice(t, v[0], &[0..2, 1..4, 0..6, 0..7])
    });
    let y = randn(&[2, 3, 6, 7], 23);
    check("concat", vec![x.clone(), y, x.clone()], |t, v| {
        concat(t, &[v[0], v[1], v[2]], 1)
    });
    // The zero op has no gradient path; add x so that its gradient is checked too.
    check("zero stride 2", vec![x.clone()], |t, v| {
        let z = zero(t, v[0], 2)?;
        let s = slice(t, v[0], &[0..2, 0..5, 0..3, 0..4])?;
        add(t, z, s)
    });
}

#[test]
fn dropout_and_the_recurrent_node() {
    let x = randn(&[4, 3, 5], 24);
    check("dropout", vec![x.clone()], |t, v| dropout(t, v[0], 0.3, 7));
    check("variational dropout", vec![x.clone()], |t, v| {
        variational_dropout(t, v[0], 0.4, 8)
    });
    check("drop path", vec![x], |t, v| drop_path(t, v[0], 0.5, 9));
    let ch = randn_away_from_zero(&[3, 2, 10], 25, 0.05);
    let h = randn(&[3, 2, 5], 26);
    for act in NodeActivation::ALL {
        check(
            &format!("recurrent node {act:?}"),
            vec![ch.clone(), h.clone()],
            |t, v| recurrent_node(t, v[0], v[1], act),
        );
    }
}

/// Builds a fresh optimizer.
type MakeOptimizer = fn() -> Box<dyn Optimizer>;

/// Two steps of each optimizer (with gradient clipping) on both devices: the same weights and
/// state.
#[test]
fn optimizers() {
    let params = [randn(&[3, 5], 27), randn(&[7], 28)];
    let grads = [randn(&[3, 5], 29), randn(&[7], 30)];
    let optimizers: [(&str, MakeOptimizer); 3] = [
        ("sgd", || Box::new(Sgd::new(0.1, 0.9, 3e-4))),
        ("adam", || {
            Box::new(Adam::new(0.01, (0.5, 0.999), 1e-8, 1e-3))
        }),
        ("asgd", || Box::new(Asgd::new(0.1, 1e-4, 0.75, 1.0, 3e-4))),
    ];
    for (name, make) in optimizers {
        let on = |device: Device| -> Vec<Vec<f32>> {
            let mut opt = make();
            let mut p: Vec<Tensor> = params
                .iter()
                .map(|t| t.to_device(device).unwrap())
                .collect();
            let g: Vec<Tensor> = grads.iter().map(|t| t.to_device(device).unwrap()).collect();
            for _ in 0..2 {
                let (clipped, _) = clip_grad_norm(&g, 1.0).unwrap();
                opt.step(&mut p, &clipped).unwrap();
            }
            let state = opt.state().into_iter().map(|(_, t)| t);
            p.into_iter()
                .chain(state)
                .map(|t| t.to_host().unwrap().to_vec())
                .collect()
        };
        for device in gpu_devices() {
            for (e, c) in on(device).iter().zip(on(Device::Cpu)) {
                assert_close(name, e, &c, 1e-6, 1e-5);
            }
        }
    }
}

/// Ops refuse inputs on two different devices, naming them.
#[test]
fn mixed_devices_are_refused() {
    let mut tape = Tape::new();
    let a = tape.leaf(randn(&[3], 31));
    let b = tape.leaf(randn(&[3], 32).to_device(Device::Emu).unwrap());
    let message = add(&mut tape, a, b).unwrap_err().to_string();
    assert!(
        message.contains("cpu") && message.contains("emu"),
        "{message}"
    );
}
