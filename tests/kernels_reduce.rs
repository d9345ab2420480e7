//! Every kernel of `kernels/reduce.cu`, run through the GPU ops of `darts::device::gpu::reduce`,
//! against the CPU reference (`cpu::sum_f64` as the sum/mean op scales it, and
//! `cpu::reduce::column_sums`): on the emulator always, and on CUDA when this machine has a driver
//! and the build has PTX (otherwise that test says it skipped). Every device allocation starts as
//! NaN, so an output element a kernel fails to write shows up.

mod common;

use common::gpu::{EXACT, Tolerance, check, cpu_reference_tests, normal};
use darts::device::cpu::{self, reduce as reference};
use darts::device::gpu::reduce as ops;
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::ReduceSumPartialFwdF32,
    KernelId::ReduceSumFinalFwdF32,
    KernelId::ReduceSumBwdF32,
    KernelId::ReduceColumnSumsFwdF32,
];

/// Element counts of the whole-tensor sums: 1, around a warp, and across several partial sums
/// (2048 elements each).
const SIZES: [usize; 4] = [1, 33, 1000, 4099];

/// `(rows, cols)` of the column sums: one element, odd sizes, the 64 × 10 bias gradient of a
/// classifier, more columns than a block has threads.
const MATRICES: [(usize, usize); 5] = [(1, 1), (7, 33), (64, 10), (3, 300), (257, 5)];

/// For the whole-tensor sums: f64 in another order than the CPU, then rounded once to f32, so at
/// most one rounding step apart (the atol covers sums that cancel to almost nothing).
const REDUCTION: Tolerance = Tolerance {
    atol: 1e-9,
    eps: f32::EPSILON,
};

/// Normal data times 4 plus 0.25 (so that long sums do not cancel to nothing).
fn random(n: usize, seed: u64) -> Vec<f32> {
    normal(n, 4.0, seed).iter().map(|v| v + 0.25).collect()
}

/// Data whose sum cancels to almost nothing: `n / 2` random values, their negations in another
/// order, and 0.25 when `n` is odd. A sum that loses precision anywhere (a float accumulator)
/// misses the small true sum by far more than the tolerance.
fn cancelling(n: usize, seed: u64) -> Vec<f32> {
    let half = random(n / 2, seed);
    let mut x: Vec<f32> = half.iter().rev().map(|v| -v).collect();
    x.splice(0..0, half);
    if n % 2 == 1 {
        x.insert(n / 3, 0.25);
    }
    x
}

/// Runs every reduce GPU op on every shape on `e` and compares with the CPU.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &n) in SIZES.iter().enumerate() {
        let seed = 10 * case as u64;
        let scale = 1.0 / n as f64;
        for x in [random(n, seed), cancelling(n, seed + 1)] {
            let dx = e.to_device(&x).unwrap();
            let total = cpu::sum_f64(&x);
            let what = format!("sum of {n} (exact {total:e})");
            let want = [total as f32];
            check(e, &what, &ops::sum(e, &dx).unwrap(), &want, REDUCTION);
            let want = [(total * scale) as f32];
            let what = format!("mean of {n} (exact sum {total:e})");
            check(e, &what, &ops::mean(e, &dx).unwrap(), &want, REDUCTION);
        }

        // The backward of both: the output gradient, spread over every element.
        let g = -0.37f32;
        let dg = e.to_device(&[g]).unwrap();
        let got = ops::sum_backward(e, &dg, n).unwrap();
        check(e, "sum_backward", &got, &vec![g; n], EXACT);
        let got = ops::mean_backward(e, &dg, n).unwrap();
        let want = vec![(g as f64 * scale) as f32; n];
        check(e, "mean_backward", &got, &want, EXACT);
    }
    for (case, &(rows, cols)) in MATRICES.iter().enumerate() {
        let x = random(rows * cols, 100 + case as u64);
        let got = ops::column_sums(e, &e.to_device(&x).unwrap(), rows, cols).unwrap();
        let want = reference::column_sums(&x, rows, cols);
        check(e, &format!("column_sums {rows}×{cols}"), &got, &want, EXACT);
    }
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The sum and mean twice on the same data, with many partial sums: the same bits, and within a
/// rounding step of the CPU.
#[test]
fn sums_are_deterministic() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let x = random(50_003, 7);
    let dx = e.to_device(&x).unwrap();
    let bits = |buffer: DeviceBuffer<f32>| e.to_host(&buffer).unwrap()[0].to_bits();
    let first = bits(ops::sum(e, &dx).unwrap());
    assert_eq!(first, bits(ops::sum(e, &dx).unwrap()));
    assert_eq!(
        bits(ops::mean(e, &dx).unwrap()),
        bits(ops::mean(e, &dx).unwrap())
    );
    let want = cpu::sum_f64(&x) as f32;
    let got = f32::from_bits(first);
    assert!(
        (got - want).abs() <= want.abs() * f32::EPSILON,
        "{got} vs {want}"
    );
}

#[test]
fn wrong_lengths_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let six = e.to_device(&[1.0f32; 6]).unwrap();
    let two = e.to_device(&[1.0f32; 2]).unwrap();
    assert!(matches!(
        ops::column_sums(e, &six, 4, 2),
        Err(GpuError::Argument {
            op: "column_sums",
            ..
        })
    ));
    assert!(ops::column_sums(e, &six, 0, 6).is_err());
    assert!(ops::sum_backward(e, &two, 5).is_err());
    assert!(ops::mean_backward(e, &two, 5).is_err());
    let one = e.to_device(&[1.0f32]).unwrap();
    assert!(ops::sum_backward(e, &one, 0).is_err());
}
