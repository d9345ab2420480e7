//! Every kernel of `kernels/dropout.cu`, run through the GPU ops of `darts::device::gpu::dropout`,
//! against the CPU reference `darts::device::cpu::dropout`: on the emulator always, and on CUDA
//! when this machine has a driver and the build has PTX (otherwise that test says it skipped).
//! Masks must be bit-identical to the CPU's for every seed (including seeds with the high key word
//! set) and every drop probability, including one equal to a drawn uniform, where `>=` and `>`
//! differ. Mask indices stay below 2³¹ (the kernels' `int` lengths), so the counter's high word is
//! always 0 here. Every device allocation starts as NaN, so an output element a kernel fails to
//! write shows up.

mod common;

use common::gpu::{Bits, check, cpu_reference_tests, random};
use darts::device::cpu::dropout as reference;
use darts::device::gpu::dropout as ops;
use darts::device::gpu::{
    DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId, LaunchConfig, kernels,
};
use darts::rng::uniform_at;

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::DropoutMaskFwdF32,
    KernelId::DropoutApplyMaskFwdF32,
];

/// Mask lengths: one element, part of one Philox draw, and ends that cut a draw.
const SIZES: [usize; 4] = [1, 3, 257, 4099];

/// Seeds: zero, small, all of the low key word, only the high key word, both words, all ones.
const SEEDS: [u64; 6] = [0, 1, 0xFFFF_FFFF, 1 << 32, 0xDEAD_BEEF_CAFE_F00D, u64::MAX];

/// (x elements, mask elements, inner): plain dropout, variational dropout of [T=3, B=5, F=7]
/// (a [B, F] mask for every step), drop path on [N=3, 70] (one multiplier per sample), a mask of
/// one element, and an x that is not a whole number of mask periods.
const APPLY_CASES: [(usize, usize, usize); 5] = [
    (4099, 4099, 1),
    (105, 35, 1),
    (210, 3, 70),
    (257, 1, 1),
    (10, 3, 2),
];

/// Runs every dropout GPU op on every case on `e` and compares with the CPU.
fn check_against_cpu(e: &dyn Executor) {
    for &n in &SIZES {
        for &seed in &SEEDS {
            // p = the uniform drawn for the middle element, which is kept (u >= p).
            let tie = uniform_at(seed, n as u64 / 2);
            for p in [0.0, 0.25, 0.9, tie] {
                let got = ops::mask(e, n, p, seed).unwrap();
                let want = reference::mask(n, p, seed);
                check(
                    e,
                    &format!("mask(n {n}, p {p}, seed {seed:#x})"),
                    &got,
                    &want,
                    Bits,
                );
            }
        }
    }

    for (case, &(n, m, inner)) in APPLY_CASES.iter().enumerate() {
        let x = random(n, case as u64);
        let mask = reference::mask(m, 0.3, 40 + case as u64);
        let got = ops::apply_mask(
            e,
            &e.to_device(&x).unwrap(),
            &e.to_device(&mask).unwrap(),
            inner,
        )
        .unwrap();
        let want = reference::apply_mask(&x, &mask, inner);
        check(
            e,
            &format!("apply_mask(n {n}, m {m}, inner {inner})"),
            &got,
            &want,
            Bits,
        );
    }
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The mask kernel on grids far smaller than the mask, so that each thread draws several blocks
/// of four: the same bits as the CPU.
#[test]
fn masks_do_not_depend_on_the_grid() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let (n, p, seed) = (1001, 0.5, 0x1234_5678_9ABC_DEF0);
    let want = reference::mask(n, p, seed);
    for config in [LaunchConfig::linear(1, 32), LaunchConfig::linear(3, 64)] {
        let mut got = e.alloc::<f32>(n).unwrap();
        // SAFETY: the kernel writes got[0..n), and got holds n elements.
        unsafe { kernels::dropout_mask_fwd_f32(e, config, &mut got, n as i32, p, seed) }.unwrap();
        check(e, &format!("mask on grid {config:?}"), &got, &want, Bits);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let x = e.to_device(&[1.0f32; 6]).unwrap();
    let is_argument = |r: Result<DeviceBuffer<f32>, GpuError>, op: &str| matches!(r, Err(GpuError::Argument { op: o, .. }) if o == op);
    assert!(is_argument(ops::mask(e, 0, 0.5, 1), "mask"));
    assert!(is_argument(ops::mask(e, 1 << 31, 0.5, 1), "mask"));
    assert!(is_argument(ops::apply_mask(e, &x, &x, 0), "apply_mask"));
}
