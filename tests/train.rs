//! End to end: the small conv net learns the generated image set, reproducibly, on the CPU and on
//! the CUDA emulator (the GPU's kernels and launch code, run on the host).

mod common;

use common::demo::{bits, config, run, weights};
use darts::Device;

#[test]
fn small_conv_net_loss_halves_within_40_steps() {
    let history = run(config(40, 32, 2, Device::Cpu)).history;
    let first = history[0].loss;
    let last_five = history[35..].iter().map(|s| s.loss).sum::<f32>() / 5.0;
    assert!(first > 1.2, "initial loss {first} should be near ln 4");
    assert!(
        last_five < first / 2.0,
        "loss {first} -> {last_five} did not halve"
    );
}

#[test]
fn training_is_bit_reproducible() {
    let a = run(config(5, 16, 7, Device::Cpu));
    let b = run(config(5, 16, 7, Device::Cpu));
    assert_eq!(bits(&weights(&a)), bits(&weights(&b)));
}

/// A few steps twice on the emulator: the same weights, bit for bit (no float atomics, fixed
/// reduction orders).
#[test]
fn emulator_training_is_bit_reproducible() {
    let a = run(config(3, 5, 7, Device::Emu));
    let b = run(config(3, 5, 7, Device::Emu));
    assert!(a.store.named_tensors()[0].1.device() == Device::Emu);
    assert_eq!(bits(&weights(&a)), bits(&weights(&b)));
}

/// The same steps on the emulator and on the CPU reference: the same losses and weights, up to
/// float rounding (the GEMMs sum in other orders).
#[test]
fn emulator_training_matches_the_cpu() {
    let emu = run(config(3, 5, 11, Device::Emu));
    let cpu = run(config(3, 5, 11, Device::Cpu));
    for (e, c) in emu.history.iter().zip(&cpu.history) {
        common::assert_close("loss", &[e.loss], &[c.loss], 1e-5, 1e-4);
    }
    for ((name, e), (_, c)) in weights(&emu).iter().zip(weights(&cpu)) {
        common::assert_close(name, e, &c, 1e-5, 1e-3);
    }
}
