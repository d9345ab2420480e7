//! The small conv net of `darts::train::demo`, run for the training tests.

use darts::Device;
use darts::train::demo::{DemoConfig, DemoOutcome, train_demo};

/// A run of `steps` steps of `batch_size` images from `seed` on `device`, at learning rate 0.05.
pub fn config(steps: usize, batch_size: usize, seed: u64, device: Device) -> DemoConfig {
    DemoConfig {
        steps,
        batch_size,
        learning_rate: 0.05,
        seed,
        device,
    }
}

/// Trains, panicking on an error.
pub fn run(config: DemoConfig) -> DemoOutcome {
    train_demo(config, |_, _| {}).unwrap()
}

/// Every weight and BN statistic of a run, copied to the host, by name.
pub fn weights(outcome: &DemoOutcome) -> Vec<(String, Vec<f32>)> {
    outcome
        .store
        .named_tensors()
        .into_iter()
        .map(|(name, t)| (name, t.to_host().unwrap().to_vec()))
        .collect()
}

/// The bits of [`weights`], for exact comparisons.
pub fn bits(weights: &[(String, Vec<f32>)]) -> Vec<(String, Vec<u32>)> {
    weights
        .iter()
        .map(|(n, v)| (n.clone(), v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}
