//! Every kernel of `kernels/batchnorm.cu`, run through the GPU ops of
//! `darts::device::gpu::batchnorm`, against the CPU reference `darts::device::cpu::batchnorm` and
//! the per-channel arithmetic of `darts::ops::batchnorm`: on the emulator always, and on CUDA when
//! this machine has a driver and the build has PTX (otherwise that test says it skipped). Then the
//! whole GPU pipeline (statistics, normalisation, backward) against `ops::batchnorm`'s forward and
//! gradients, in training and eval mode. Channels include a large mean with a tiny spread (where a
//! careless one-pass variance cancels) and a constant channel; every device allocation starts as
//! NaN, so an output element a kernel fails to write shows up.

mod common;

use common::gpu::{Bits, EXACT, Tolerance, check, cpu_reference_tests, random};
use darts::device::cpu::batchnorm::{
    self as reference, ChannelLayout, Normalizer as CpuNormalizer,
};
use darts::device::gpu::batchnorm::{self as ops, GradSums, Normalizer};
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId};
use darts::ops::batchnorm::{self as bn, BatchStats};
use darts::{Tape, Tensor};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::BatchnormMomentsPartialFwdF32,
    KernelId::BatchnormMomentsFinalFwdF32,
    KernelId::BatchnormInvStdFwdF32,
    KernelId::BatchnormAffineFwdF32,
    KernelId::BatchnormScaleShiftFwdF32,
    KernelId::BatchnormGradPartialBwdF32,
    KernelId::BatchnormGradFinalBwdF32,
    KernelId::BatchnormNormalizeBwdF32,
    KernelId::BatchnormRunningStatsFwdF32,
];

const EPS: f32 = 1e-5;

/// (N, C, HW): the NCHW test shape 3x5x7x9, channels of 2442 elements (two partial sums each),
/// an `[N, C]` input, and the smallest channels training accepts (2 values).
const LAYOUTS: [(usize, usize, usize); 4] = [(3, 5, 63), (2, 3, 33 * 37), (7, 33, 1), (2, 3, 1)];

/// For the per-channel sums: in f64 in another order (and, for the variance, another formula)
/// than the CPU, then rounded once to f32.
const REDUCTION: Tolerance = Tolerance {
    atol: 1e-9,
    eps: f32::EPSILON,
};

/// For the whole pipeline against the ops: a statistic one ulp off moves every output a little.
const PIPELINE: Tolerance = Tolerance {
    atol: 1e-5,
    eps: 1e-5,
};

/// A `[N, C, HW]` input whose channels differ: channel `c % 4` is 0.7 + 1.5·z, 1000 + 0.01·z
/// (|mean| ≫ std), the constant 2.5 (zero variance), or −3 + 4·z, with z standard normal.
/// With `well_conditioned`, every channel is 0.7 + 1.5·z.
fn input(l: &ChannelLayout, seed: u64, well_conditioned: bool) -> Vec<f32> {
    random(l.n * l.c * l.hw, seed)
        .iter()
        .enumerate()
        .map(|(i, &z)| match (well_conditioned, i / l.hw % l.c % 4) {
            (true, _) | (_, 0) => 0.7 + 1.5 * z,
            (_, 1) => 1000.0 + 0.01 * z,
            (_, 2) => 2.5,
            _ => -3.0 + 4.0 * z,
        })
        .collect()
}

/// `v as f32` for every value.
fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&v| v as f32).collect()
}

/// `1 / √(var + eps)` as `ops::batchnorm` computes it.
fn cpu_inv_std(var: impl Iterator<Item = f64>) -> Vec<f32> {
    var.map(|v| (1.0 / (v + EPS as f64).sqrt()) as f32)
        .collect()
}

/// `(scale, shift) = (γ · inv_std, β − mean · scale)` as `ops::batchnorm` computes them.
fn cpu_coefficients(norm: &CpuNormalizer, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&norm.inv_std)
        .map(|(g, s)| g * s)
        .collect();
    let shift = beta
        .iter()
        .zip(norm.mean.iter().zip(&scale))
        .map(|(b, (m, a))| b - m * a)
        .collect();
    (scale, shift)
}

/// Each kernel on its own, against the CPU function it mirrors, fed the CPU's own inputs.
fn check_kernels(e: &dyn Executor, l: &ChannelLayout, seed: u64) {
    let what = |op: &str| format!("{op} {l:?}");
    let (c, m) = (l.c, l.per_channel() as f64);
    let x = input(l, seed, false);
    let dy = random(x.len(), seed + 1);
    let (gamma, beta) = (random(c, seed + 2), random(c, seed + 3));
    let (dx, ddy) = (e.to_device(&x).unwrap(), e.to_device(&dy).unwrap());
    let (dgamma, dbeta) = (e.to_device(&gamma).unwrap(), e.to_device(&beta).unwrap());

    // Batch statistics.
    let (mean, m2) = reference::channel_moments(&x, l);
    let stats = ops::batch_stats(e, &dx, l, EPS).unwrap();
    check(
        e,
        &what("batch mean"),
        &stats.mean,
        &to_f32(&mean),
        REDUCTION,
    );
    let var: Vec<f64> = m2.iter().map(|s| s / (m - 1.0)).collect();
    let want = to_f32(&var);
    check(
        e,
        &what("unbiased variance"),
        &stats.var_unbiased,
        &want,
        REDUCTION,
    );
    let want = cpu_inv_std(m2.iter().map(|s| s / m));
    check(e, &what("batch inv_std"), &stats.inv_std, &want, REDUCTION);

    // Eval-mode inv_std from a running variance.
    let running_var: Vec<f32> = random(c, seed + 4).iter().map(|v| v * v).collect();
    let got = ops::inv_std(e, &e.to_device(&running_var).unwrap(), EPS).unwrap();
    let want = cpu_inv_std(running_var.iter().map(|&v| v as f64));
    check(e, &what("inv_std"), &got, &want, EXACT);

    // From here on the CPU's normalisation, so that every kernel sees the CPU's inputs.
    let norm = CpuNormalizer {
        mean: to_f32(&mean),
        inv_std: cpu_inv_std(m2.iter().map(|s| s / m)),
    };
    let (dmean, dinv) = (
        e.to_device(&norm.mean).unwrap(),
        e.to_device(&norm.inv_std).unwrap(),
    );
    let gpu_norm = Normalizer {
        mean: &dmean,
        inv_std: &dinv,
    };
    let (scale, shift) = cpu_coefficients(&norm, &gamma, &beta);
    let (got_scale, got_shift) =
        ops::affine_coefficients(e, gpu_norm, Some((&dgamma, &dbeta))).unwrap();
    check(e, &what("scale"), &got_scale, &scale, EXACT);
    check(e, &what("shift"), &got_shift, &shift, EXACT);
    let (plain_scale, plain_shift) = cpu_coefficients(&norm, &vec![1.0; c], &vec![0.0; c]);
    let (got_plain_scale, got_plain_shift) = ops::affine_coefficients(e, gpu_norm, None).unwrap();
    check(
        e,
        &what("scale without affine"),
        &got_plain_scale,
        &plain_scale,
        EXACT,
    );
    check(
        e,
        &what("shift without affine"),
        &got_plain_shift,
        &plain_shift,
        EXACT,
    );

    // The normalisation, and the eval-mode input gradient (a zero shift).
    let want = reference::scale_shift(&x, l, &scale, &shift);
    let got = ops::scale_shift(e, &dx, l, &got_scale, &got_shift).unwrap();
    check(e, &what("scale_shift"), &got, &want, EXACT);
    let zeros = vec![0.0; c];
    let want = reference::scale_shift(&dy, l, &scale, &zeros);
    let got = ops::scale_shift(e, &ddy, l, &got_scale, &e.to_device(&zeros).unwrap()).unwrap();
    check(e, &what("scale_shift of dy"), &got, &want, EXACT);

    // The gradient sums and the training-mode input gradient.
    let (sum_dy, sum_dy_xhat) = reference::channel_grad_sums(&x, &dy, l, &norm);
    let sums = ops::channel_grad_sums(e, &dx, &ddy, l, gpu_norm).unwrap();
    check(
        e,
        &what("sum dy"),
        &sums.sum_dy,
        &to_f32(&sum_dy),
        REDUCTION,
    );
    check(
        e,
        &what("sum dy·x̂"),
        &sums.sum_dy_xhat,
        &to_f32(&sum_dy_xhat),
        REDUCTION,
    );
    let mean_of = |s: &[f64]| -> Vec<f32> { s.iter().map(|v| (v / m) as f32).collect() };
    let (mean_dy, mean_dy_xhat) = (mean_of(&sum_dy), mean_of(&sum_dy_xhat));
    check(e, &what("mean dy"), &sums.mean_dy, &mean_dy, REDUCTION);
    check(
        e,
        &what("mean dy·x̂"),
        &sums.mean_dy_xhat,
        &mean_dy_xhat,
        REDUCTION,
    );
    let cpu_sums = GradSums {
        sum_dy: e.to_device(&to_f32(&sum_dy)).unwrap(),
        sum_dy_xhat: e.to_device(&to_f32(&sum_dy_xhat)).unwrap(),
        mean_dy: e.to_device(&mean_dy).unwrap(),
        mean_dy_xhat: e.to_device(&mean_dy_xhat).unwrap(),
    };
    let want = reference::normalize_backward(&x, &dy, l, &norm, &scale, &mean_dy, &mean_dy_xhat);
    let got = ops::normalize_backward(e, &dx, &ddy, l, gpu_norm, &got_scale, &cpu_sums).unwrap();
    check(e, &what("normalize_backward"), &got, &want, EXACT);

    // The running statistics, against ops::batchnorm::update_running_stats.
    let running_mean = random(c, seed + 5);
    let batch = BatchStats {
        mean: Tensor::from_vec(norm.mean.clone(), &[c]).unwrap(),
        var_unbiased: Tensor::from_vec(to_f32(&var), &[c]).unwrap(),
    };
    let (want_mean, want_var) = bn::update_running_stats(
        &Tensor::from_vec(running_mean.clone(), &[c]).unwrap(),
        &Tensor::from_vec(running_var.clone(), &[c]).unwrap(),
        &batch,
        0.1,
    )
    .unwrap();
    let rm = e.to_device(&running_mean).unwrap();
    let rv = e.to_device(&running_var).unwrap();
    let (bm, bv) = (
        e.to_device(batch.mean.data()).unwrap(),
        e.to_device(batch.var_unbiased.data()).unwrap(),
    );
    let (new_mean, new_var) = ops::update_running_stats(e, &rm, &rv, &bm, &bv, 0.1).unwrap();
    check(e, &what("running mean"), &new_mean, want_mean.data(), EXACT);
    check(e, &what("running var"), &new_var, want_var.data(), EXACT);
    // The old statistics are inputs only.
    check(e, &what("old running mean"), &rm, &running_mean, Bits);
}

/// The tensor shape of a layout: `[N, C, HW, 1]`, or `[N, C]` when HW = 1.
fn shape(l: &ChannelLayout) -> Vec<usize> {
    if l.hw == 1 {
        vec![l.n, l.c]
    } else {
        vec![l.n, l.c, l.hw, 1]
    }
}

/// The GPU pipeline of a training-mode batch norm (forward and backward) against
/// `ops::batchnorm::batch_norm_train` and its gradients, with or without affine parameters.
fn check_train_pipeline(e: &dyn Executor, l: &ChannelLayout, seed: u64, affine: bool) {
    let what = |op: &str| format!("train pipeline {op} {l:?} affine {affine}");
    let x = input(l, seed, true);
    let dy = random(x.len(), seed + 1);
    let (gamma, beta) = (random(l.c, seed + 2), random(l.c, seed + 3));

    let mut tape = Tape::new();
    let xv = tape.leaf(Tensor::from_vec(x.clone(), &shape(l)).unwrap());
    let params = affine.then(|| {
        (
            tape.leaf(Tensor::from_vec(gamma.clone(), &[l.c]).unwrap()),
            tape.leaf(Tensor::from_vec(beta.clone(), &[l.c]).unwrap()),
        )
    });
    let (y, stats) = bn::batch_norm_train(&mut tape, xv, params, EPS).unwrap();
    let want_y = tape.value(y).to_vec();
    let wrt: Vec<_> = std::iter::once(xv)
        .chain(params.into_iter().flat_map(|(g, b)| [g, b]))
        .collect();
    let seed_grad = Tensor::from_vec(dy.clone(), &shape(l)).unwrap();
    let grads = tape.backward_from(y, seed_grad, &wrt).unwrap();

    let (dx, ddy) = (e.to_device(&x).unwrap(), e.to_device(&dy).unwrap());
    let (dgamma, dbeta) = (e.to_device(&gamma).unwrap(), e.to_device(&beta).unwrap());
    let gpu_stats = ops::batch_stats(e, &dx, l, EPS).unwrap();
    let norm = gpu_stats.normalizer();
    let (scale, shift) =
        ops::affine_coefficients(e, norm, affine.then_some((&dgamma, &dbeta))).unwrap();
    let got_y = ops::scale_shift(e, &dx, l, &scale, &shift).unwrap();
    check(e, &what("y"), &got_y, &want_y, PIPELINE);
    check(
        e,
        &what("mean"),
        &gpu_stats.mean,
        stats.mean.data(),
        REDUCTION,
    );
    let want = stats.var_unbiased.data();
    check(e, &what("var"), &gpu_stats.var_unbiased, want, REDUCTION);

    let sums = ops::channel_grad_sums(e, &dx, &ddy, l, norm).unwrap();
    let got_dx = ops::normalize_backward(e, &dx, &ddy, l, norm, &scale, &sums).unwrap();
    check(e, &what("dx"), &got_dx, grads[0].data(), PIPELINE);
    if affine {
        check(
            e,
            &what("dgamma"),
            &sums.sum_dy_xhat,
            grads[1].data(),
            PIPELINE,
        );
        check(e, &what("dbeta"), &sums.sum_dy, grads[2].data(), PIPELINE);
    }
}

/// The GPU pipeline of an eval-mode batch norm against `ops::batchnorm::batch_norm_eval`.
fn check_eval_pipeline(e: &dyn Executor, l: &ChannelLayout, seed: u64) {
    let what = |op: &str| format!("eval pipeline {op} {l:?}");
    let x = input(l, seed, false);
    let dy = random(x.len(), seed + 1);
    let (gamma, beta) = (random(l.c, seed + 2), random(l.c, seed + 3));
    let running_mean = random(l.c, seed + 4);
    let running_var: Vec<f32> = random(l.c, seed + 5).iter().map(|v| 0.5 + v * v).collect();

    let mut tape = Tape::new();
    let xv = tape.leaf(Tensor::from_vec(x.clone(), &shape(l)).unwrap());
    let gv = tape.leaf(Tensor::from_vec(gamma.clone(), &[l.c]).unwrap());
    let bv = tape.leaf(Tensor::from_vec(beta.clone(), &[l.c]).unwrap());
    let rm = Tensor::from_vec(running_mean.clone(), &[l.c]).unwrap();
    let rv = Tensor::from_vec(running_var.clone(), &[l.c]).unwrap();
    let y = bn::batch_norm_eval(&mut tape, xv, Some((gv, bv)), &rm, &rv, EPS).unwrap();
    let want_y = tape.value(y).to_vec();
    let seed_grad = Tensor::from_vec(dy.clone(), &shape(l)).unwrap();
    let grads = tape.backward_from(y, seed_grad, &[xv, gv, bv]).unwrap();

    let (dx, ddy) = (e.to_device(&x).unwrap(), e.to_device(&dy).unwrap());
    let (dgamma, dbeta) = (e.to_device(&gamma).unwrap(), e.to_device(&beta).unwrap());
    let dmean = e.to_device(&running_mean).unwrap();
    let dinv = ops::inv_std(e, &e.to_device(&running_var).unwrap(), EPS).unwrap();
    let norm = Normalizer {
        mean: &dmean,
        inv_std: &dinv,
    };
    let (scale, shift) = ops::affine_coefficients(e, norm, Some((&dgamma, &dbeta))).unwrap();
    let got_y = ops::scale_shift(e, &dx, l, &scale, &shift).unwrap();
    check(e, &what("y"), &got_y, &want_y, EXACT);
    let zeros = e.to_device(&vec![0.0f32; l.c]).unwrap();
    let got_dx = ops::scale_shift(e, &ddy, l, &scale, &zeros).unwrap();
    check(e, &what("dx"), &got_dx, grads[0].data(), EXACT);
    let sums = ops::channel_grad_sums(e, &dx, &ddy, l, norm).unwrap();
    check(
        e,
        &what("dgamma"),
        &sums.sum_dy_xhat,
        grads[1].data(),
        REDUCTION,
    );
    check(e, &what("dbeta"), &sums.sum_dy, grads[2].data(), REDUCTION);
}

/// Everything above on every layout of [`LAYOUTS`], on `exec`.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &(n, c, hw)) in LAYOUTS.iter().enumerate() {
        let l = ChannelLayout { n, c, hw };
        let seed = 100 * case as u64;
        check_kernels(e, &l, seed);
        check_train_pipeline(e, &l, seed + 10, case % 2 == 0);
        check_eval_pipeline(e, &l, seed + 20);
    }
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The statistics and the gradient sums twice on the same data, with four partial sums per
/// channel: the same bits.
#[test]
fn reductions_are_deterministic() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let l = ChannelLayout {
        n: 4,
        c: 3,
        hw: 1601,
    };
    let x = e.to_device(&input(&l, 1, false)).unwrap();
    let dy = e.to_device(&random(l.n * l.c * l.hw, 2)).unwrap();
    let bits = |b: &DeviceBuffer<f32>| -> Vec<u32> {
        e.to_host(b).unwrap().iter().map(|v| v.to_bits()).collect()
    };
    let runs: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            let stats = ops::batch_stats(e, &x, &l, EPS).unwrap();
            let sums = ops::channel_grad_sums(e, &x, &dy, &l, stats.normalizer()).unwrap();
            [
                &stats.mean,
                &stats.var_unbiased,
                &stats.inv_std,
                &sums.sum_dy,
                &sums.sum_dy_xhat,
                &sums.mean_dy,
                &sums.mean_dy_xhat,
            ]
            .iter()
            .flat_map(|b| bits(b))
            .collect()
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].iter().all(|&b| f32::from_bits(b).is_finite()),
        "{:?}",
        runs[0]
    );
}

#[test]
fn bad_arguments_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let l = ChannelLayout { n: 2, c: 3, hw: 2 };
    let x = e.to_device(&[1.0f32; 12]).unwrap();
    let three = e.to_device(&[1.0f32; 3]).unwrap();
    let two = e.to_device(&[1.0f32; 2]).unwrap();
    let other = e.to_device(&[1.0f32; 3]).unwrap();
    let wrong = ChannelLayout { n: 3, ..l };
    assert!(matches!(
        ops::batch_stats(e, &x, &wrong, EPS),
        Err(GpuError::Argument {
            op: "batch_stats",
            ..
        })
    ));
    assert!(ops::batch_stats(e, &x, &ChannelLayout { n: 0, ..l }, EPS).is_err());
    assert!(ops::batch_stats(e, &x, &l, f32::NAN).is_err());
    assert!(ops::batch_stats(e, &x, &l, -1.0).is_err());
    let single = ChannelLayout { n: 1, c: 12, hw: 1 };
    assert!(ops::batch_stats(e, &x, &single, EPS).is_err());
    assert!(ops::inv_std(e, &three, f32::INFINITY).is_err());

    let stats = ops::batch_stats(e, &x, &l, EPS).unwrap();
    let norm = stats.normalizer();
    assert!(ops::affine_coefficients(e, norm, Some((&three, &two))).is_err());
    assert!(ops::scale_shift(e, &x, &l, &three, &two).is_err());
    assert!(ops::scale_shift(e, &x, &wrong, &three, &three).is_err());
    assert!(ops::channel_grad_sums(e, &x, &three, &l, norm).is_err());
    let sums = ops::channel_grad_sums(e, &x, &x, &l, norm).unwrap();
    assert!(ops::normalize_backward(e, &x, &x, &l, norm, &two, &sums).is_err());
    assert!(ops::update_running_stats(e, &two, &other, &three, &three, 0.1).is_err());
    let mean = e.to_device(&[0.0f32; 3]).unwrap();
    assert!(ops::update_running_stats(e, &mean, &other, &three, &three, 1.5).is_err());
    assert!(ops::update_running_stats(e, &mean, &other, &three, &three, 0.5).is_ok());
}
