//! Training with the GEMMs on TF32 tensor cores (`--tf32`), here on the emulated ones: the small
//! conv net trains reproducibly and stays close to the float run. A test binary of its own,
//! because the choice belongs to the process-wide emulator that the other test binaries use in
//! float.

mod common;

use common::demo::{bits, config, run, weights};
use darts::Device;
use darts::device::gpu::GemmPrecision;

/// Three steps twice with TF32 GEMMs: the same bits; against the CPU's float run: the same
/// losses and weights to TF32's precision, but not to float's (so the tensor-core kernel ran).
#[test]
fn tf32_training_repeats_its_bits_and_stays_near_the_float_run() {
    Device::Emu.set_gemm_precision(GemmPrecision::Tf32).unwrap();
    assert!(Device::Emu.describe().unwrap().ends_with("TF32 GEMMs"));
    let a = run(config(3, 5, 11, Device::Emu));
    let b = run(config(3, 5, 11, Device::Emu));
    assert_eq!(bits(&weights(&a)), bits(&weights(&b)));

    let cpu = run(config(3, 5, 11, Device::Cpu));
    for (t, f) in a.history.iter().zip(&cpu.history) {
        common::assert_close("loss", &[t.loss], &[f.loss], 1e-3, 1e-2);
    }
    let mut largest = 0.0f32;
    for ((name, t), (_, f)) in weights(&a).iter().zip(weights(&cpu)) {
        common::assert_close(name, t, &f, 1e-3, 5e-2);
        largest = t
            .iter()
            .zip(&f)
            .fold(largest, |m, (t, f)| m.max((t - f).abs()));
    }
    // The float emulator run agrees with the CPU to 1e-5 (tests/train.rs).
    assert!(
        largest > 1e-5,
        "TF32 weights within {largest} of float ones"
    );
}

/// The CPU computes in float and says so when asked for TF32.
#[test]
fn the_cpu_refuses_tf32() {
    Device::Cpu.set_gemm_precision(GemmPrecision::F32).unwrap();
    let err = Device::Cpu
        .set_gemm_precision(GemmPrecision::Tf32)
        .unwrap_err();
    assert!(err.to_string().contains("TF32 GEMMs run on a GPU"), "{err}");
}
