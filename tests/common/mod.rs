//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod demo;
pub mod gpu;

use darts::device::gpu::KernelId;
use darts::gradcheck::{GradCheck, check_gradients};
use darts::{Device, Result, Rng, Tape, Tensor, Var};

/// Standard-normal data of `shape` from `seed`.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::normal(shape, 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// Uniform data in [lo, hi) of `shape` from `seed`.
pub fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    Tensor::uniform(shape, lo, hi, &mut Rng::new(seed)).unwrap()
}

/// Normal data kept at least `margin` away from zero (for ops with a kink at 0, like ReLU).
pub fn randn_away_from_zero(shape: &[usize], seed: u64, margin: f32) -> Tensor {
    randn(shape, seed).map(|v| {
        if v.abs() < margin {
            v.signum() * margin + v
        } else {
            v
        }
    })
}

/// Runs a gradient check with the default settings and panics with the mismatches on failure.
pub fn assert_gradients(
    what: &str,
    inputs: &[Tensor],
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) {
    check_gradients(inputs, GradCheck::default(), f)
        .unwrap()
        .assert_ok(what);
}

/// Asserts two slices agree within `atol + rtol·|expected|`, naming the first mismatches.
pub fn assert_close(what: &str, got: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths differ");
    let bad: Vec<(usize, f32, f32)> = got
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (g, e))| {
            let difference = (*g - *e).abs();
            difference > atol + rtol * e.abs() || difference.is_nan()
        })
        .map(|(i, (g, e))| (i, *g, *e))
        .take(5)
        .collect();
    assert!(bad.is_empty(), "{what}: (index, got, expected) {bad:?}");
}

/// The bits of a tensor's values, on any device.
pub fn bits(t: &Tensor) -> Vec<u32> {
    let host = t.to_device(Device::Cpu).unwrap();
    host.data().iter().map(|v| v.to_bits()).collect()
}

/// Launches of `kernel` on `device` so far (0 on the CPU).
pub fn launches(device: Device, kernel: KernelId) -> u64 {
    match device.executor().unwrap() {
        Some(exec) => exec.counters().launches_per_kernel()[kernel as usize],
        None => 0,
    }
}
