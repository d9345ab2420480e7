//! Every kernel of `kernels/optim.cu`, run through the GPU ops of `darts::device::gpu::optim`,
//! against the CPU optimizers themselves (`darts::optim`): three steps of SGD, Adam and ASGD on
//! the same parameters and gradients, comparing weights and optimizer state after every step, and
//! gradient clipping by the global norm. On the emulator always, and on CUDA when this machine has
//! a driver and the build has PTX (otherwise that test says it skipped). State buffers start as
//! NaN where the CPU starts without state, so a kernel that reads state on a first step shows up.

mod common;

use common::gpu::{EXACT, Tolerance, check, cpu_reference_tests};
use darts::Rng;
use darts::device::gpu::multi::{Entry, Table};
use darts::device::gpu::optim::{self as ops, AdamParams, AsgdParams, SgdParams};
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId};
use darts::optim::adam::Adam;
use darts::optim::asgd::Asgd;
use darts::optim::clip::clip_grad_norm;
use darts::optim::optimizer::Optimizer;
use darts::optim::sgd::Sgd;
use darts::tensor::Tensor;

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::OptimSgdFwdF32,
    KernelId::OptimAdamFwdF32,
    KernelId::OptimAsgdFwdF32,
    KernelId::OptimGradNormPartialFwdF32,
    KernelId::OptimGradNormFinalFwdF32,
    KernelId::OptimScaleFwdF32,
];

/// Parameter shapes: a scalar, odd sizes, and one that spans several chunks of a multi-tensor
/// launch (and so several norm partial sums).
const SHAPES: [&[usize]; 4] = [&[1], &[33], &[5, 7], &[4099]];

/// Optimizer steps compared.
const STEPS: u64 = 3;

/// For Adam's weights: its bias corrections come from `pow` in f64, which may differ from the
/// host's in the last bit of a double, and so (rarely) move the step size by one f32 rounding.
const ADAM: Tolerance = Tolerance {
    atol: 1e-9,
    eps: f32::EPSILON,
};

/// For the global norm: squares summed in f64 in another order, then rounded once.
const NORM: Tolerance = Tolerance {
    atol: 0.0,
    eps: f32::EPSILON,
};

/// For clipped gradients: the coefficient inherits the norm's rounding step.
const CLIPPED: Tolerance = Tolerance {
    atol: 0.0,
    eps: 2.0 * f32::EPSILON,
};

/// One tensor per shape, normal times `scale`, from `seed`.
fn tensors(seed: u64, scale: f32) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    SHAPES
        .iter()
        .map(|shape| {
            let n = shape.iter().product();
            let data = (0..n).map(|_| scale * rng.normal()).collect();
            Tensor::from_vec(data, shape).unwrap()
        })
        .collect()
}

fn upload(e: &dyn Executor, tensors: &[Tensor]) -> Vec<DeviceBuffer<f32>> {
    tensors
        .iter()
        .map(|t| e.to_device(t.data()).unwrap())
        .collect()
}

/// Compares a list of device buffers with a list of tensors.
fn check_all(
    e: &dyn Executor,
    what: &str,
    got: &[DeviceBuffer<f32>],
    want: &[Tensor],
    tol: Tolerance,
) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        check(e, &format!("{what} of parameter {i}"), g, w.data(), tol);
    }
}

/// The optimizer state tensor `name` (e.g. `exp_avg.2`).
fn state(optimizer: &dyn Optimizer, name: &str) -> Tensor {
    let state = optimizer.state();
    let found = state.into_iter().find(|(n, _)| n == name);
    found.unwrap_or_else(|| panic!("no state {name}")).1
}

/// Gradients for step `step`: fresh random data each step.
fn gradients(step: u64) -> Vec<Tensor> {
    tensors(1000 + step, 2.0)
}

fn check_sgd(e: &dyn Executor, hyper: SgdParams) {
    let mut cpu = Sgd::new(hyper.lr, hyper.momentum, hyper.weight_decay);
    let mut params = tensors(1, 1.0);
    let mut w = upload(e, &params);
    // Uninitialised (NaN under the test executor): the first step must not read them.
    let mut buffers: Vec<DeviceBuffer<f32>> =
        params.iter().map(|p| e.alloc(p.numel()).unwrap()).collect();
    for step in 0..STEPS {
        let grads = gradients(step);
        let g = upload(e, &grads);
        cpu.step(&mut params, &grads).unwrap();
        // Every parameter in one launch.
        let mut ws: Vec<_> = w.iter_mut().collect();
        let gs: Vec<_> = g.iter().collect();
        let mut bs: Vec<_> = buffers.iter_mut().collect();
        let b = (hyper.momentum != 0.0).then_some(&mut bs[..]);
        ops::sgd_step(e, &hyper, &mut ws, &gs, b, step == 0).unwrap();
        let what = format!("{hyper:?}, step {}", step + 1);
        check_all(e, &format!("weights after {what}"), &w, &params, EXACT);
        if hyper.momentum != 0.0 {
            let want: Vec<Tensor> = (0..params.len())
                .map(|i| cpu.momentum_buffer(i).unwrap().clone())
                .collect();
            check_all(e, &format!("momentum after {what}"), &buffers, &want, EXACT);
        }
    }
}

fn check_adam(e: &dyn Executor, hyper: AdamParams) {
    let mut cpu = Adam::new(hyper.lr, hyper.betas, hyper.eps, hyper.weight_decay);
    let mut params = tensors(2, 1.0);
    let mut w = upload(e, &params);
    let zeros: Vec<Tensor> = params
        .iter()
        .map(|p| Tensor::zeros(p.shape()).unwrap())
        .collect();
    let (mut m, mut v) = (upload(e, &zeros), upload(e, &zeros));
    for step in 1..=STEPS {
        let grads = gradients(step);
        let g = upload(e, &grads);
        cpu.step(&mut params, &grads).unwrap();
        for (i, (w, g)) in w.iter_mut().zip(&g).enumerate() {
            ops::adam_step(e, &hyper, step, w, g, &mut m[i], &mut v[i]).unwrap();
        }
        let what = format!("{hyper:?}, step {step}");
        check_all(e, &format!("weights after {what}"), &w, &params, ADAM);
        for i in 0..params.len() {
            let want = state(&cpu, &format!("exp_avg.{i}"));
            check(
                e,
                &format!("m[{i}] after {what}"),
                &m[i],
                want.data(),
                EXACT,
            );
            let want = state(&cpu, &format!("exp_avg_sq.{i}"));
            check(
                e,
                &format!("v[{i}] after {what}"),
                &v[i],
                want.data(),
                EXACT,
            );
        }
    }
}

/// ASGD with `t0 = 0`, so that the averaging weight is 1 for two steps (the average restarts at
/// the weights) and 1/2 on the third.
fn check_asgd(e: &dyn Executor, lr: f32, lambd: f32, weight_decay: f32) {
    let mut cpu = Asgd::new(lr, lambd, 0.75, 0.0, weight_decay);
    let mut params = tensors(3, 1.0);
    let mut w = upload(e, &params);
    // Uninitialised: the first step (μ = 1) overwrites the average without reading it.
    let mut ax: Vec<DeviceBuffer<f32>> =
        params.iter().map(|p| e.alloc(p.numel()).unwrap()).collect();
    let mut mus = Vec::new();
    for step in 1..=STEPS {
        let (eta, mu) = if step == 1 {
            (lr, 1.0)
        } else {
            (
                state(&cpu, "eta").item().unwrap(),
                state(&cpu, "mu").item().unwrap(),
            )
        };
        mus.push(mu);
        let hyper = AsgdParams {
            eta,
            mu,
            lambd,
            weight_decay,
        };
        let grads = gradients(step);
        let g = upload(e, &grads);
        cpu.step(&mut params, &grads).unwrap();
        for ((w, g), ax) in w.iter_mut().zip(&g).zip(ax.iter_mut()) {
            ops::asgd_step(e, &hyper, w, g, ax).unwrap();
        }
        let what = format!("{hyper:?}, step {step}");
        check_all(e, &format!("weights after {what}"), &w, &params, EXACT);
        check_all(
            e,
            &format!("averages after {what}"),
            &ax,
            cpu.averaged(),
            EXACT,
        );
    }
    assert_eq!(mus, [1.0, 1.0, 0.5], "the averaging weights of the steps");
}

fn check_clip(e: &dyn Executor) {
    // The gradients' norm is about 2·√4175 ≈ 130: the first clips, the second does not.
    for max_norm in [1.0, 1e4] {
        let grads = gradients(7);
        let (clipped, total) = clip_grad_norm(&grads, max_norm).unwrap();
        let g = upload(e, &grads);
        let gs: Vec<_> = g.iter().collect();
        let norm = ops::grad_norm(e, &gs).unwrap();
        check(e, &format!("norm, max {max_norm}"), &norm, &[total], NORM);
        // The coefficient as `clip_grad_norm` computes it, from the device's norm.
        let coef = max_norm / (e.to_host(&norm).unwrap()[0] + 1e-6);
        if coef < 1.0 {
            let got = ops::scale_all(e, &gs, coef).unwrap();
            check_all(
                e,
                &format!("clipped to {max_norm}"),
                &got,
                &clipped,
                CLIPPED,
            );
        } else {
            check_all(e, &format!("unclipped at {max_norm}"), &g, &clipped, EXACT);
        }
    }
}

fn check_against_cpu(e: &dyn Executor) {
    // DARTS's weight optimizer, plain SGD with weight decay, and momentum without weight decay.
    for (lr, momentum, weight_decay) in [(0.025, 0.9, 3e-4), (0.05, 0.0, 0.01), (0.1, 0.9, 0.0)] {
        let hyper = SgdParams {
            lr,
            momentum,
            weight_decay,
        };
        check_sgd(e, hyper);
    }
    // DARTS's architecture optimizer, and Adam's defaults.
    for (lr, betas, weight_decay) in [(3e-4, (0.5, 0.999), 1e-3), (1e-3, (0.9, 0.999), 0.0)] {
        let hyper = AdamParams {
            lr,
            betas,
            eps: 1e-8,
            weight_decay,
        };
        check_adam(e, hyper);
    }
    check_asgd(e, 0.01, 1e-4, 1.2e-6);
    check_asgd(e, 20.0, 0.0, 0.0);
    check_clip(e);
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The global norm twice on the same data, with many partial sums: the same bits.
#[test]
fn the_global_norm_is_deterministic() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let mut rng = Rng::new(9);
    let grads: Vec<DeviceBuffer<f32>> = [50_003, 33, 4099]
        .iter()
        .map(|&n| {
            let data: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            e.to_device(&data).unwrap()
        })
        .collect();
    let bits = || {
        e.to_host(&ops::grad_norm(e, &grads.iter().collect::<Vec<_>>()).unwrap())
            .unwrap()[0]
            .to_bits()
    };
    let first = bits();
    assert_eq!(first, bits());
    assert!(f32::from_bits(first).is_finite());
}

#[test]
fn bad_arguments_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let mut w = e.to_device(&[1.0f32; 5]).unwrap();
    let mut w2 = e.to_device(&[1.0f32; 5]).unwrap();
    let g5 = e.to_device(&[1.0f32; 5]).unwrap();
    let g6 = e.to_device(&[1.0f32; 6]).unwrap();
    let mut m = e.to_device(&[0.0f32; 5]).unwrap();
    let mut v = e.to_device(&[0.0f32; 5]).unwrap();
    let sgd = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    assert!(matches!(
        ops::sgd_step(e, &sgd, &mut [&mut w], &[&g5], None, true),
        Err(GpuError::Argument { op: "sgd_step", .. })
    ));
    assert!(ops::sgd_step(e, &sgd, &mut [&mut w], &[&g6], Some(&mut [&mut m]), true).is_err());
    // One gradient for two parameters, and one momentum buffer for two.
    assert!(ops::sgd_step(e, &sgd, &mut [&mut w, &mut w2], &[&g5], None, true).is_err());
    let (ws, gs) = (&mut [&mut w, &mut w2], &[&g5, &g5]);
    assert!(ops::sgd_step(e, &sgd, ws, gs, Some(&mut [&mut m]), true).is_err());
    assert!(ops::sgd_step(e, &sgd, &mut [], &[], Some(&mut []), true).is_err());
    let adam = AdamParams {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    assert!(ops::adam_step(e, &adam, 0, &mut w, &g5, &mut m, &mut v).is_err());
    assert!(ops::adam_step(e, &adam, 1, &mut w, &g6, &mut m, &mut v).is_err());
    let asgd = AsgdParams {
        eta: 0.01,
        mu: 1.0,
        lambd: 0.0,
        weight_decay: 0.0,
    };
    assert!(ops::asgd_step(e, &asgd, &mut w, &g6, &mut m).is_err());
    assert!(ops::grad_norm(e, &[]).is_err());
    assert!(ops::scale_all(e, &[], 0.5).is_err());
    // A table entry longer than its buffer.
    let entry = Entry::new([Some(&g5), None, None], 6);
    assert!(Table::new::<f32>(e, "test", &[entry]).is_err());
}
