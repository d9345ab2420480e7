//! The DARTS CNN search loop end to end on small generated IDX data: resume is bit-identical,
//! outputs are written, and bad input is refused without damage.

use std::path::{Path, PathBuf};

mod common;

use darts::train::search::{CHECKPOINT, METRICS, RunOptions, SearchOptions, search};
use darts::{Device, Rng};

/// Writes a tiny IDX data set (1×8×8 images in 3 classes, each class a different brightness
/// pattern plus noise) under the Fashion-MNIST file names.
fn write_idx(dir: &Path, count: usize) {
    let mut rng = Rng::new(9);
    let mut images = vec![0, 0, 8, 3];
    images.extend((count as u32).to_be_bytes());
    images.extend(8u32.to_be_bytes());
    images.extend(8u32.to_be_bytes());
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((count as u32).to_be_bytes());
    for i in 0..count {
        let class = i % 3;
        labels.push(class as u8);
        for p in 0..64 {
            let base = match class {
                0 => 40.0,
                1 => 200.0,
                _ => 120.0 + 100.0 * ((p % 8) as f32 / 8.0 - 0.5),
            };
            images.push((base + 30.0 * rng.normal()).clamp(0.0, 255.0) as u8);
        }
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("darts-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(data: &Path) -> SearchOptions {
    SearchOptions {
        dataset: "fashion-mnist".into(),
        data: data.to_path_buf(),
        batch_size: 8,
        learning_rate: 0.05,
        learning_rate_min: 0.001,
        momentum: 0.9,
        weight_decay: 3e-4,
        epochs: 2,
        init_channels: 2,
        layers: 3,
        grad_clip: 5.0,
        train_portion: 0.5,
        unrolled: false,
        arch_learning_rate: 3e-2,
        arch_weight_decay: 1e-3,
        seed: 5,
        cutout: None,
        train_images: Some(44),
    }
}

fn run(out: &Path, resume: bool, max_steps: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        overwrite: false,
        max_steps,
        report_freq: 1000,
        verbose: false,
        device: Device::Cpu,
    }
}

fn bits(tensors: impl IntoIterator<Item = darts::Tensor>) -> Vec<u32> {
    tensors
        .into_iter()
        .flat_map(|t| t.to_host().unwrap().to_vec())
        .map(f32::to_bits)
        .collect()
}

/// 2 epochs in one go equal 1 epoch + resume, and a stop in the middle of an epoch + resume,
/// bit for bit (weights, BN statistics and α), for first and second order.
#[test]
fn resumed_search_is_bit_identical_to_an_uninterrupted_one() {
    let data = scratch("resume-data");
    write_idx(&data, 60);
    for unrolled in [false, true] {
        let opts = SearchOptions {
            unrolled,
            ..options(&data)
        };
        let whole = search(&opts, &run(&scratch("whole"), false, None)).unwrap();
        assert!(whole.finished);
        // 22 training images in batches of 8: 3 steps per epoch.
        for stop_after in [3, 2] {
            let out = scratch(&format!("parts-{stop_after}"));
            let first = search(&opts, &run(&out, false, Some(stop_after))).unwrap();
            assert!(!first.finished && first.steps_run == stop_after);
            let rest = search(&opts, &run(&out, true, None)).unwrap();
            assert!(rest.finished && rest.steps_run == 6 - stop_after);
            assert_eq!(
                bits(rest.alphas.clone()),
                bits(whole.alphas.clone()),
                "alphas, stop after {stop_after}"
            );
            let weights =
                |s: &darts::nn::ParamStore| bits(s.named_tensors().into_iter().map(|(_, t)| t));
            assert_eq!(
                weights(&rest.store),
                weights(&whole.store),
                "weights, stop after {stop_after}"
            );
            assert_eq!(rest.genotype, whole.genotype);
            // The metrics log has each step exactly once.
            let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
            let steps: Vec<u64> = log
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["kind"] == "step")
                .map(|v| v["global_step"].as_u64().unwrap())
                .collect();
            assert_eq!(steps, (0..6).collect::<Vec<_>>());
        }
    }
}

#[test]
fn search_writes_its_outputs_and_alpha_moves() {
    let data = scratch("outputs-data");
    write_idx(&data, 60);
    let out = scratch("outputs");
    let outcome = search(&options(&data), &run(&out, false, None)).unwrap();
    for file in [
        "genotype.json",
        "metrics.jsonl",
        "summary.json",
        "weights.safetensors",
        CHECKPOINT,
        "normal.dot",
        "reduction.dot",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let saved = darts::darts::genotype::Genotype::from_json(
        &std::fs::read_to_string(out.join("genotype.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved, outcome.genotype);
    let epochs = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"epoch\","))
        .count();
    assert_eq!(epochs, 2);
    // α moved away from its 1e-3·N(0,1) start.
    assert!(outcome.alphas[0].data().iter().any(|a| a.abs() > 1e-2));
}

/// A fresh search into a folder that holds another is refused, leaving the folder as it was;
/// `overwrite` replaces it, and asking to both resume and overwrite is an error.
#[test]
fn a_fresh_search_does_not_replace_an_existing_one() {
    let data = scratch("existing-data");
    write_idx(&data, 60);
    let out = scratch("existing");
    search(&options(&data), &run(&out, false, Some(1))).unwrap();
    let files = |out: &Path| [CHECKPOINT, METRICS].map(|f| std::fs::read(out.join(f)).unwrap());
    let before = files(&out);
    let err = search(&options(&data), &run(&out, false, None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already holds a search") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(files(&out), before);

    let both = RunOptions {
        overwrite: true,
        ..run(&out, true, None)
    };
    let err = search(&options(&data), &both).unwrap_err().to_string();
    assert!(err.contains("pick one"), "{err}");
    assert_eq!(files(&out), before);

    let replace = RunOptions {
        overwrite: true,
        ..run(&out, false, Some(2))
    };
    let outcome = search(&options(&data), &replace).unwrap();
    assert_eq!(outcome.steps_run, 2);
    assert_ne!(files(&out), before);
}

#[test]
fn bad_input_is_refused_and_damages_nothing() {
    let data = scratch("bad-data");
    write_idx(&data, 60);
    let out = scratch("bad");
    // Resuming with nothing to resume.
    let err = search(&options(&data), &run(&out, true, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains(CHECKPOINT), "{err}");
    // A checkpoint from other settings is refused, and left as it was.
    search(&options(&data), &run(&out, false, Some(2))).unwrap();
    let before = std::fs::read(out.join(CHECKPOINT)).unwrap();
    let other = SearchOptions {
        seed: 6,
        ..options(&data)
    };
    let err = search(&other, &run(&out, true, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
    assert_eq!(std::fs::read(out.join(CHECKPOINT)).unwrap(), before);
    // A truncated checkpoint is an error naming the file.
    std::fs::write(out.join(CHECKPOINT), &before[..before.len() / 3]).unwrap();
    let err = search(&options(&data), &run(&out, true, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains(CHECKPOINT), "{err}");
    // Missing and truncated data files.
    let empty = scratch("no-data");
    let err = search(&options(&empty), &run(&out, false, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-images"), "{err}");
    let bytes = std::fs::read(data.join("train-images-idx3-ubyte")).unwrap();
    std::fs::write(
        data.join("train-images-idx3-ubyte"),
        &bytes[..bytes.len() - 10],
    )
    .unwrap();
    let err = search(&options(&data), &run(&out, false, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    // Bad flags.
    let err = search(
        &SearchOptions {
            train_portion: 1.5,
            ..options(&data)
        },
        &run(&out, false, None),
    )
    .unwrap_err();
    assert!(err.to_string().contains("train-portion"), "{err}");
}

/// The same search steps on the emulator (the CUDA kernels on the host) and on the CPU: the same
/// α and weights up to float rounding, for first and second order; and a run stopped and resumed
/// on the emulator equals one that was not stopped, bit for bit.
#[test]
fn search_on_the_emulator_matches_the_cpu_and_resumes_exactly() {
    let data = scratch("emu-data");
    write_idx(&data, 60);
    for unrolled in [false, true] {
        let opts = SearchOptions {
            unrolled,
            layers: 2,
            ..options(&data)
        };
        let on = |device, out: &Path, resume, max_steps| RunOptions {
            device,
            ..run(out, resume, max_steps)
        };
        let cpu = search(&opts, &on(Device::Cpu, &scratch("cpu"), false, Some(2))).unwrap();
        let emu = search(&opts, &on(Device::Emu, &scratch("emu"), false, Some(2))).unwrap();
        assert_eq!(emu.alphas[0].device(), Device::Emu);
        let host = |ts: &[darts::Tensor]| -> Vec<f32> {
            ts.iter()
                .flat_map(|t| t.to_host().unwrap().to_vec())
                .collect()
        };
        common::assert_close("alphas", &host(&emu.alphas), &host(&cpu.alphas), 1e-5, 1e-3);
        let weights = |s: &darts::nn::ParamStore| -> Vec<darts::Tensor> {
            s.named_tensors().into_iter().map(|(_, t)| t).collect()
        };
        common::assert_close(
            "weights",
            &host(&weights(&emu.store)),
            &host(&weights(&cpu.store)),
            1e-4,
            1e-3,
        );

        let out = scratch("emu-parts");
        search(&opts, &on(Device::Emu, &out, false, Some(1))).unwrap();
        let resumed = search(&opts, &on(Device::Emu, &out, true, Some(2))).unwrap();
        assert_eq!(bits(resumed.alphas.clone()), bits(emu.alphas.clone()));
        assert_eq!(bits(weights(&resumed.store)), bits(weights(&emu.store)));
    }
}

/// A loss that is not finite stops a search step with an error naming the divergence, before
/// any update: on the validation batch, neither α nor the weights move; on the training batch
/// (after the architect's step), the weights do not.
#[test]
fn a_nan_loss_stops_the_step_before_any_update() {
    use darts::darts::architect::{Architect, ArchitectConfig, Batch};
    use darts::darts::cnn::search::{SearchConfig, SearchNetwork, init_alphas};
    use darts::darts::searcher::Searcher;
    use darts::nn::ParamStore;
    use darts::optim::sgd::Sgd;

    let config = SearchConfig {
        in_channels: 1,
        init_channels: 2,
        num_classes: 3,
        layers: 2,
        ..SearchConfig::default()
    };
    let mut rng = Rng::new(4);
    let mut store = ParamStore::new();
    let net = SearchNetwork::new(&mut store, config, &mut rng).unwrap();
    let alphas = init_alphas(&config, &mut rng).unwrap();
    let mut searcher = Searcher {
        store,
        alphas,
        sgd: Sgd::new(0.025, 0.9, 3e-4),
        architect: Architect::new(ArchitectConfig::default()),
    };
    let finite = darts::Tensor::normal(&[2, 1, 8, 8], 0.0, 1.0, &mut rng).unwrap();
    let mut poisoned = finite.to_vec();
    poisoned[17] = f32::NAN;
    let poisoned = darts::Tensor::from_vec(poisoned, &[2, 1, 8, 8]).unwrap();
    let labels = [0, 2];
    let batch = |images| Batch {
        images,
        labels: &labels,
    };
    let weights = |s: &Searcher| {
        let ids = s.store.trainable_ids();
        bits(ids.iter().map(|&id| s.store.get(id).clone()))
    };
    let (weights_before, alphas_before) = (weights(&searcher), bits(searcher.alphas.clone()));

    for (train, val, alphas_move) in [(&finite, &poisoned, false), (&poisoned, &finite, true)] {
        let alphas_at_start = bits(searcher.alphas.clone());
        let err = searcher
            .step(&net, batch(train), batch(val), 0.025, 5.0)
            .unwrap_err();
        assert!(err.to_string().contains("diverged"), "{err}");
        assert_eq!(weights(&searcher), weights_before);
        assert_eq!(
            bits(searcher.alphas.clone()) != alphas_at_start,
            alphas_move
        );
    }
    assert_ne!(bits(searcher.alphas.clone()), alphas_before);
}
