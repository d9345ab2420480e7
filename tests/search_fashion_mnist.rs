//! Smoke test on real images: a small search on a few hundred Fashion-MNIST images beats chance.
//! The data comes from Debian's `dataset-fashion-mnist` (tools/install-data.sh); CI installs it,
//! so there the test refuses to skip.

use std::path::Path;

use darts::train::search::{RunOptions, SearchOptions, search};

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

#[test]
fn small_search_on_fashion_mnist_beats_chance() {
    if !Path::new(FASHION_MNIST)
        .join("train-images-idx3-ubyte.gz")
        .exists()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Fashion-MNIST (tools/install-data.sh)"
        );
        eprintln!(
            "skipped: Fashion-MNIST is not installed at {FASHION_MNIST} (run tools/install-data.sh)"
        );
        return;
    }
    let out = std::env::temp_dir().join(format!("darts-fashion-{}", std::process::id()));
    let options = SearchOptions {
        dataset: "fashion-mnist".into(),
        data: FASHION_MNIST.into(),
        batch_size: 32,
        learning_rate: 0.05,
        learning_rate_min: 0.001,
        momentum: 0.9,
        weight_decay: 3e-4,
        epochs: 4,
        init_channels: 4,
        layers: 3,
        grad_clip: 5.0,
        train_portion: 0.5,
        unrolled: false,
        arch_learning_rate: 3e-4,
        arch_weight_decay: 1e-3,
        seed: 2,
        cutout: None,
        train_images: Some(512),
    };
    let run = RunOptions {
        out: out.clone(),
        resume: false,
        overwrite: false,
        max_steps: None,
        report_freq: 1000,
        verbose: false,
        device: darts::Device::Cpu,
    };
    let outcome = search(&options, &run).unwrap();
    let acc = outcome.valid_acc.unwrap();
    eprintln!(
        "validation accuracy after 4 epochs on 256 images: {:.1}%",
        100.0 * acc
    );
    assert!(
        acc > 0.3,
        "validation accuracy {acc} does not beat chance (0.1) clearly"
    );
    std::fs::remove_dir_all(out).unwrap();
}
