//! End to end: the small conv net learns the generated image set.

use darts::train::demo::{DemoConfig, train_demo};

#[test]
fn small_conv_net_loss_halves_within_40_steps() {
    let config = DemoConfig {
        steps: 40,
        batch_size: 32,
        learning_rate: 0.05,
        seed: 2,
    };
    let history = train_demo(config, |_, _| {}).unwrap();
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
    let config = DemoConfig {
        steps: 5,
        batch_size: 16,
        learning_rate: 0.05,
        seed: 7,
    };
    let a: Vec<u32> = train_demo(config, |_, _| {})
        .unwrap()
        .iter()
        .map(|s| s.loss.to_bits())
        .collect();
    let b: Vec<u32> = train_demo(config, |_, _| {})
        .unwrap()
        .iter()
        .map(|s| s.loss.to_bits())
        .collect();
    assert_eq!(a, b);
}
