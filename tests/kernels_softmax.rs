//! Every kernel of `kernels/softmax.cu`, run through the GPU ops of `darts::device::gpu::softmax`,
//! against the CPU reference (`darts::device::cpu::softmax`): on the emulator always, and on CUDA
//! when this machine has a driver and the build has PTX (otherwise that test says it skipped).
//! Both lane variants run on every shape. Inputs are random with huge values planted (whose
//! exponential overflows even f64 unless the max is subtracted first); every device allocation
//! starts as NaN, so an output element a kernel fails to write shows up.

mod common;

use common::gpu::{Tolerance, check, cpu_reference_tests, normal, plant_extremes};
use darts::Rng;
use darts::device::cpu::softmax::{self as reference, Lanes};
use darts::device::gpu::softmax::{self as ops, Normalize, Strategy};
use darts::device::gpu::{EmuExecutor, Executor, GpuError, KernelId};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::SoftmaxSoftmaxBlockFwdF32,
    KernelId::SoftmaxSoftmaxBlockBwdF32,
    KernelId::SoftmaxLogSoftmaxBlockFwdF32,
    KernelId::SoftmaxLogSoftmaxBlockBwdF32,
    KernelId::SoftmaxSoftmaxThreadFwdF32,
    KernelId::SoftmaxSoftmaxThreadBwdF32,
    KernelId::SoftmaxLogSoftmaxThreadFwdF32,
    KernelId::SoftmaxLogSoftmaxThreadBwdF32,
    KernelId::SoftmaxCrossEntropyRowsFwdF32,
    KernelId::SoftmaxCrossEntropyMeanFwdF32,
    KernelId::SoftmaxCrossEntropyBwdF32,
];

/// `(shape, dim)` of the lane tests: every dim of [3, 5, 7] (strided and contiguous lanes), the
/// DARTS α case (14 edges × 8 ops), 1-D tensors of 1 and 1000 elements, 64 × 10 logits, and a
/// row longer than a block.
const SHAPES: [(&[usize], usize); 8] = [
    (&[3, 5, 7], 0),
    (&[3, 5, 7], 1),
    (&[3, 5, 7], 2),
    (&[14, 8], 1),
    (&[1], 0),
    (&[1000], 0),
    (&[64, 10], 1),
    (&[2, 300, 3], 1),
];

/// `(rows, classes)` of the cross-entropy tests.
const LOGITS: [(usize, usize); 6] = [(1, 1), (1, 3), (7, 10), (33, 5), (64, 10), (5, 300)];

/// For lane results: f64 arithmetic in another order of additions (or another libm), rounded once
/// to f32, so at most a rounding step or two apart.
const LANE: Tolerance = Tolerance {
    atol: 1e-12,
    eps: 2.0 * f32::EPSILON,
};

/// For the mean loss: row losses in f64, added in another order.
const REDUCTION: Tolerance = Tolerance {
    atol: 1e-6,
    eps: 2.0 * f32::EPSILON,
};

/// Normal data times 4, with ±800 planted in longer inputs.
fn random(n: usize, seed: u64) -> Vec<f32> {
    plant_extremes(normal(n, 4.0, seed), 800.0)
}

/// A class index per row, the first and last class among them.
fn targets(rows: usize, classes: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut t: Vec<usize> = (0..rows).map(|_| rng.below(classes)).collect();
    t[0] = 0;
    t[rows - 1] = classes - 1;
    t
}

/// Softmax and log-softmax, forward and backward, with both variants, on every shape.
fn check_lanes(e: &dyn Executor) {
    for (case, &(shape, dim)) in SHAPES.iter().enumerate() {
        let lanes = Lanes::new(shape, dim);
        let n = shape.iter().product();
        let seed = 100 * case as u64;
        let (x, dy) = (random(n, seed), random(n, seed + 1));
        let (dx, ddy) = (e.to_device(&x).unwrap(), e.to_device(&dy).unwrap());
        let softmax = reference::softmax(&x, lanes);
        let log_softmax = reference::log_softmax(&x, lanes);
        let cases = [
            (
                Normalize::Softmax,
                &softmax,
                reference::softmax_backward(&softmax, &dy, lanes),
            ),
            (
                Normalize::LogSoftmax,
                &log_softmax,
                reference::log_softmax_backward(&log_softmax, &dy, lanes),
            ),
        ];
        for (which, y, want_dx) in cases {
            let dy_ref = e.to_device(y).unwrap();
            for strategy in [Strategy::BlockPerLane, Strategy::ThreadPerLane] {
                let what = format!("{which:?} {strategy:?} of {shape:?} along {dim}");
                let got = ops::lanes_forward(e, which, strategy, &dx, lanes).unwrap();
                check(e, &what, &got, y, LANE);
                let got = ops::lanes_backward(e, which, strategy, &dy_ref, &ddy, lanes).unwrap();
                check(e, &format!("{what}, backward"), &got, &want_dx, LANE);
            }
        }
        // The default variant, through the plain functions.
        let what = format!("softmax of {shape:?} along {dim}");
        check(
            e,
            &what,
            &ops::softmax(e, &dx, lanes).unwrap(),
            &softmax,
            LANE,
        );
        let got = ops::log_softmax(e, &dx, lanes).unwrap();
        check(e, &format!("log_{what}"), &got, &log_softmax, LANE);
        let (ds, dl) = (
            e.to_device(&softmax).unwrap(),
            e.to_device(&log_softmax).unwrap(),
        );
        let want = reference::softmax_backward(&softmax, &dy, lanes);
        let got = ops::softmax_backward(e, &ds, &ddy, lanes).unwrap();
        check(e, &format!("{what}, backward"), &got, &want, LANE);
        let want = reference::log_softmax_backward(&log_softmax, &dy, lanes);
        let got = ops::log_softmax_backward(e, &dl, &ddy, lanes).unwrap();
        check(e, &format!("log_{what}, backward"), &got, &want, LANE);
    }
}

/// The label-smoothed cross-entropy, forward and backward, with ε = 0 and 0.1.
fn check_cross_entropy(e: &dyn Executor) {
    for (case, &(rows, classes)) in LOGITS.iter().enumerate() {
        let seed = 1000 + 10 * case as u64;
        let logits = random(rows * classes, seed);
        let t = targets(rows, classes, seed + 1);
        let dlogits = e.to_device(&logits).unwrap();
        let device_targets: Vec<i32> = t.iter().map(|&c| c as i32).collect();
        let dt = e.to_device(&device_targets).unwrap();
        let dloss = 0.7f32;
        let ddloss = e.to_device(&[dloss]).unwrap();
        let lse = reference::row_log_sum_exp(&logits, classes);
        for smoothing in [0.0, 0.1] {
            let what = format!("cross_entropy of {rows}×{classes}, ε = {smoothing}");
            let want = reference::cross_entropy(&logits, classes, &lse, &t, smoothing) as f32;
            let got = ops::cross_entropy(e, &dlogits, &dt, classes, smoothing).unwrap();
            check(e, &what, &got, &[want], REDUCTION);
            let scale = dloss as f64 / rows as f64;
            let want =
                reference::cross_entropy_backward(&logits, classes, &lse, &t, smoothing, scale);
            let got =
                ops::cross_entropy_backward(e, &dlogits, &dt, classes, smoothing, &ddloss).unwrap();
            check(e, &format!("{what}, backward"), &got, &want, LANE);
        }
    }
}

fn check_against_cpu(e: &dyn Executor) {
    check_lanes(e);
    check_cross_entropy(e);
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The default variant: a thread per lane only for short strided lanes.
#[test]
fn the_default_variant_follows_the_layout() {
    let pick = |shape: &[usize], dim| Strategy::for_lanes(Lanes::new(shape, dim));
    assert_eq!(pick(&[64, 10], 1), Strategy::BlockPerLane);
    assert_eq!(pick(&[3, 5, 7], 0), Strategy::ThreadPerLane);
    assert_eq!(pick(&[2, 5000, 3], 1), Strategy::BlockPerLane);
}

/// The loss and its gradient twice on the same data, with many rows: the same bits.
#[test]
fn cross_entropy_is_deterministic() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let (rows, classes) = (257, 7);
    let logits = e.to_device(&random(rows * classes, 3)).unwrap();
    let t: Vec<i32> = targets(rows, classes, 4)
        .into_iter()
        .map(|c| c as i32)
        .collect();
    let t = e.to_device(&t).unwrap();
    let run = || {
        let loss = ops::cross_entropy(e, &logits, &t, classes, 0.1).unwrap();
        let dx = ops::cross_entropy_backward(e, &logits, &t, classes, 0.1, &loss).unwrap();
        let mut out = e.to_host(&loss).unwrap();
        out.extend(e.to_host(&dx).unwrap());
        out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let first = run();
    assert_eq!(first, run());
    assert!(f32::from_bits(first[0]).is_finite());
}

/// A target outside the classes cannot be reported from the device: its row makes the loss (and
/// its gradient row) NaN rather than reading out of bounds.
#[test]
fn a_bad_target_gives_nan() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let logits = e.to_device(&random(3 * 4, 5)).unwrap();
    let t = e.to_device(&[0, 4, 1]).unwrap();
    let loss = ops::cross_entropy(e, &logits, &t, 4, 0.0).unwrap();
    assert!(e.to_host(&loss).unwrap()[0].is_nan());
    let one = e.to_device(&[1.0f32]).unwrap();
    let dx = e
        .to_host(&ops::cross_entropy_backward(e, &logits, &t, 4, 0.0, &one).unwrap())
        .unwrap();
    assert!(dx[..4].iter().chain(&dx[8..]).all(|v| v.is_finite()));
    assert!(dx[4..8].iter().all(|v| v.is_nan()));
}

#[test]
fn wrong_lengths_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let six = e.to_device(&[1.0f32; 6]).unwrap();
    let five = e.to_device(&[1.0f32; 5]).unwrap();
    let lanes = Lanes {
        outer: 2,
        size: 3,
        inner: 1,
    };
    assert!(matches!(
        ops::softmax(e, &five, lanes),
        Err(GpuError::Argument { op: "softmax", .. })
    ));
    let empty = Lanes {
        outer: 0,
        size: 3,
        inner: 1,
    };
    assert!(ops::log_softmax(e, &six, empty).is_err());
    assert!(ops::softmax_backward(e, &six, &five, lanes).is_err());
    let targets = e.to_device(&[0i32, 1]).unwrap();
    assert!(ops::cross_entropy(e, &six, &targets, 4, 0.0).is_err());
    assert!(ops::cross_entropy(e, &six, &targets, 3, 1.0).is_err());
    assert!(ops::cross_entropy(e, &six, &targets, 3, -0.1).is_err());
    assert!(ops::cross_entropy_backward(e, &six, &targets, 3, 0.0, &five).is_err());
}
