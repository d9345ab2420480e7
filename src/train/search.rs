//! The DARTS CNN search loop (`train_search.py`): per step, an architect update of α on a
//! validation batch, then an SGD update of the weights on a training batch; per epoch, the
//! genotype, an evaluation of the validation half, a checkpoint and a metrics record.
//!
//! Runs can be trusted: every epoch (and a run stopped by `--max-steps`) ends in an atomically
//! written checkpoint holding the weights, α, both optimizers and the exact position of both data
//! loaders, so `--resume` continues bit for bit as if the run had never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::autograd::Tape;
use crate::darts::architect::{Architect, ArchitectConfig, Batch};
use crate::darts::cnn::search::{SearchConfig, SearchNetwork, init_alphas};
use crate::darts::genotype::{Genotype, alpha_table, derive_genotype};
use crate::darts::searcher::Searcher;
use crate::data::augment::Transform;
use crate::data::dataset::{DatasetKind, ImageDataset, Split, open};
use crate::data::loader::{BatchLoader, LoaderState, split_indices};
use crate::device::Device;
use crate::io::{TensorFile, load_tensors, save_tensors, write_atomically};
use crate::nn::ParamStore;
use crate::ops::softmax::{argmax_rows, cross_entropy};
use crate::optim::optimizer::Optimizer;
use crate::optim::schedule::cosine_lr;
use crate::optim::sgd::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::metrics::MetricsLog;
use crate::train::progress::{Progress, peak_memory_bytes};
use crate::viz::plot_genotype;
use crate::{Error, Result};

/// Everything that defines a search; saved in the checkpoint so a resume can check it continues
/// the same run. Defaults are the original's (`train_search.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchOptions {
    /// Data set name (`cifar10`, `fashion-mnist`, `mnist`).
    pub dataset: String,
    /// Folder holding the data set's files.
    pub data: PathBuf,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub learning_rate_min: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub epochs: usize,
    pub init_channels: usize,
    pub layers: usize,
    pub grad_clip: f32,
    pub train_portion: f64,
    pub unrolled: bool,
    pub arch_learning_rate: f32,
    pub arch_weight_decay: f32,
    pub seed: u64,
    /// Cutout length for the training transform (the search default is off).
    pub cutout: Option<usize>,
    /// Use only the first N training images (before the train/validation split).
    pub train_images: Option<usize>,
}

/// How this invocation runs, beyond what defines the search.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output folder: checkpoint, metrics, genotypes, pictures.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.safetensors`.
    pub resume: bool,
    /// Start afresh even where `out` already holds a search, replacing it. Without it (and
    /// without `resume`) such a folder is refused, so that no run is lost by mistake.
    pub overwrite: bool,
    /// Stop after this many weight steps in total (the run is checkpointed and can be resumed).
    pub max_steps: Option<usize>,
    /// Off a terminal, print a progress line every this many steps.
    pub report_freq: usize,
    /// Print per-epoch logs (genotype, α tables) and the summary.
    pub verbose: bool,
    /// Where the model and the batches live and the ops run. Not part of the search's identity:
    /// a run may be resumed on another device.
    pub device: Device,
}

/// What a finished (or stopped) search produced.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    /// The genotype derived from the final α.
    pub genotype: Genotype,
    /// The final α: `[normal, reduce]`.
    pub alphas: Vec<Tensor>,
    /// The final weights.
    pub store: ParamStore,
    /// Validation accuracy of the last completed epoch (eval mode), if one completed.
    pub valid_acc: Option<f32>,
    /// Weight steps taken in this invocation.
    pub steps_run: usize,
    /// Whether every epoch finished (false when stopped by `--max-steps`).
    pub finished: bool,
}

/// The checkpoint file inside the output folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// The file name of a search's metrics log (one JSON object per step and per epoch).
pub const METRICS: &str = "metrics.jsonl";
const CHECKPOINT_FORMAT: &str = "darts-cnn-search-v1";

/// Running sums of the current epoch's training metrics.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct EpochTotals {
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

/// Where the run stands: what a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Position {
    /// Epoch in progress (or the next one, at an epoch boundary).
    epoch: usize,
    /// Weight steps taken since the start of the run.
    global_step: usize,
    totals: EpochTotals,
    train_loader: LoaderState,
    val_loader: LoaderState,
    /// Search time so far, for the summary.
    seconds: f64,
}

/// The loaded data: the training and validation halves as batch loaders, and the image shape.
struct SearchData {
    train: BatchLoader,
    val: BatchLoader,
    /// The validation half in order, without augmentation, for the per-epoch evaluation.
    val_eval: BatchLoader,
    channels: usize,
    classes: usize,
}

fn load_data(options: &SearchOptions) -> Result<SearchData> {
    let kind: DatasetKind = options.dataset.parse()?;
    let dataset: Arc<dyn ImageDataset> = open(kind, &options.data, Split::Train)?;
    let available = dataset.len();
    let count = options.train_images.map_or(available, |n| n.min(available));
    let (train_idx, val_idx) = split_indices(count, options.train_portion)?;
    if train_idx.is_empty() || val_idx.is_empty() {
        return Err(Error::invalid(
            "search",
            format!(
                "--train-portion {} of {count} images leaves an empty training or validation half",
                options.train_portion
            ),
        ));
    }
    let mut train_transform = Transform::train(kind);
    if let Some(length) = options.cutout {
        train_transform = train_transform.with_cutout(length);
    }
    let mut seeds = Rng::new(options.seed ^ 0x5EA5_C4DA_7A00);
    let b = options.batch_size;
    // As in the original, both halves use the training transform; alpha sees augmented images.
    let train = BatchLoader::new(
        dataset.clone(),
        train_idx,
        b,
        train_transform.clone(),
        seeds.next_seed(),
    )?;
    let val = BatchLoader::new(
        dataset.clone(),
        val_idx.clone(),
        b,
        train_transform,
        seeds.next_seed(),
    )?;
    let val_eval =
        BatchLoader::new(dataset.clone(), val_idx, b, Transform::eval(kind), 0)?.in_order();
    Ok(SearchData {
        train,
        val,
        val_eval,
        channels: dataset.channels(),
        classes: dataset.classes(),
    })
}

/// Accuracy and mean loss of the network over a loader's epoch in eval mode (running BN
/// statistics, as the original's `infer`).
fn evaluate(
    net: &SearchNetwork,
    store: &mut ParamStore,
    alphas: &[Tensor],
    loader: &mut BatchLoader,
) -> Result<(f32, f32)> {
    let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
    let device = alphas[0].device();
    for batch in loader.epoch() {
        let logits = net.infer(store, alphas, batch.images.to_device(device)?)?;
        let mut tape = Tape::new();
        let logits_var = tape.constant(logits.clone());
        let loss = cross_entropy(&mut tape, logits_var, &batch.labels, 0.0)?;
        let n = batch.labels.len();
        loss_sum += tape.value(loss).item()? as f64 * n as f64;
        let predictions = argmax_rows(&logits)?;
        correct += predictions
            .iter()
            .zip(&batch.labels)
            .filter(|(p, l)| p == l)
            .count();
        seen += n;
    }
    Ok((
        (loss_sum / seen as f64) as f32,
        correct as f32 / seen as f32,
    ))
}

/// The state a step changes, gathered so checkpoints save and restore it in one place.
struct SearchState {
    model: Searcher,
    position: Position,
}

impl SearchState {
    fn save(&self, path: &Path, options: &SearchOptions) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self
            .model
            .store
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("model.{n}"), t))
            .collect();
        tensors.push(("alphas.normal".into(), self.model.alphas[0].clone()));
        tensors.push(("alphas.reduce".into(), self.model.alphas[1].clone()));
        tensors.extend(
            self.model
                .sgd
                .state()
                .into_iter()
                .map(|(n, t)| (format!("sgd.{n}"), t)),
        );
        tensors.extend(
            self.model
                .architect
                .optimizer()
                .state()
                .into_iter()
                .map(|(n, t)| (format!("adam.{n}"), t)),
        );
        let mut metadata = BTreeMap::new();
        metadata.insert("format".into(), CHECKPOINT_FORMAT.into());
        metadata.insert("options".into(), to_json(options)?);
        metadata.insert("position".into(), to_json(&self.position)?);
        save_tensors(path, &tensors, &metadata)
    }

    /// Loads a checkpoint into this state, onto the device the state's model lives on.
    fn restore(&mut self, path: &Path, options: &SearchOptions) -> Result<()> {
        let mut file = load_tensors(path)?;
        let bad = |message: String| Error::Format {
            path: path.display().to_string(),
            message,
        };
        if file.meta(path, "format")? != CHECKPOINT_FORMAT {
            return Err(bad(format!("not a {CHECKPOINT_FORMAT} checkpoint")));
        }
        let saved: SearchOptions = from_json(path, file.meta(path, "options")?)?;
        if &saved != options {
            return Err(bad(format!(
                "the checkpoint belongs to a search with other settings; saved: {}",
                to_json(&saved)?
            )));
        }
        let position: Position = from_json(path, file.meta(path, "position")?)?;
        let device = self.model.alphas[0].device();
        let alphas = vec![
            file.take(path, "alphas.normal")?.to_device(device)?,
            file.take(path, "alphas.reduce")?.to_device(device)?,
        ];
        let sgd_state = take_prefixed(&mut file, "sgd.", device)?;
        let adam_state = take_prefixed(&mut file, "adam.", device)?;
        let model: BTreeMap<String, Tensor> = take_prefixed(&mut file, "model.", device)?
            .into_iter()
            .collect();
        if let Some(extra) = file.tensors.keys().next() {
            return Err(bad(format!("unexpected tensor `{extra}`")));
        }
        self.model.store.load_named(path, model)?;
        self.model.sgd.load_state(sgd_state)?;
        self.model
            .architect
            .optimizer_mut()
            .load_state(adam_state)?;
        if alphas
            .iter()
            .zip(&self.model.alphas)
            .any(|(a, b)| a.shape() != b.shape())
        {
            return Err(bad("alphas have the wrong shape".into()));
        }
        self.model.alphas = alphas;
        self.position = position;
        Ok(())
    }
}

/// Takes the tensors named `prefix…` out of `file`, without the prefix, moved to `device`.
fn take_prefixed(
    file: &mut TensorFile,
    prefix: &str,
    device: Device,
) -> Result<Vec<(String, Tensor)>> {
    let names: Vec<String> = file
        .tensors
        .keys()
        .filter(|n| n.starts_with(prefix))
        .cloned()
        .collect();
    names
        .into_iter()
        .map(|n| {
            let t = file.tensors.remove(&n).expect("listed");
            Ok((n[prefix.len()..].to_string(), t.to_device(device)?))
        })
        .collect()
}

fn to_json(value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::invalid("json", e.to_string()))
}

fn from_json<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The genotype the current `[α_normal, α_reduce]` decode to.
fn genotype_of(alphas: &[Tensor], config: &SearchConfig) -> Result<Genotype> {
    derive_genotype(
        alphas[0].to_host()?.data(),
        alphas[1].to_host()?.data(),
        config.steps,
        config.multiplier,
    )
}

fn check_options(options: &SearchOptions) -> Result<()> {
    let invalid = |m: &str| Err(Error::invalid("search", m.to_string()));
    if options.batch_size == 0
        || options.epochs == 0
        || options.layers == 0
        || options.init_channels == 0
    {
        return invalid("--batch-size, --epochs, --layers and --init-channels must be at least 1");
    }
    if !(options.train_portion > 0.0 && options.train_portion < 1.0) {
        return invalid("--train-portion must be strictly between 0 and 1");
    }
    if !(options.learning_rate > 0.0 && options.learning_rate_min >= 0.0 && options.grad_clip > 0.0)
    {
        return invalid(
            "--learning-rate and --grad-clip must be positive, --learning-rate-min non-negative",
        );
    }
    Ok(())
}

/// Fails when `out` holds the checkpoint or the metrics log of an earlier search, which a fresh
/// run would overwrite.
fn refuse_existing_search(out: &Path) -> Result<()> {
    match [CHECKPOINT, METRICS].iter().find(|f| out.join(f).exists()) {
        Some(file) => Err(Error::invalid(
            "search",
            format!(
                "{} already holds a search ({file}); continue it with --resume, replace it with \
                 --overwrite, or choose another --out",
                out.display()
            ),
        )),
        None => Ok(()),
    }
}

/// Runs (or resumes) a search and writes its outputs into `run.out`.
pub fn search(options: &SearchOptions, run: &RunOptions) -> Result<SearchOutcome> {
    check_options(options)?;
    if run.resume && run.overwrite {
        return Err(Error::invalid(
            "search",
            "--resume continues the search in --out and --overwrite replaces it: pick one",
        ));
    }
    let mut data = load_data(options)?;
    if !run.resume && !run.overwrite {
        refuse_existing_search(&run.out)?;
    }
    std::fs::create_dir_all(&run.out).map_err(|e| Error::Io {
        path: run.out.display().to_string(),
        message: format!("cannot create the output folder: {e}"),
    })?;
    let config = SearchConfig {
        in_channels: data.channels,
        init_channels: options.init_channels,
        num_classes: data.classes,
        layers: options.layers,
        ..SearchConfig::default()
    };
    let mut rng = Rng::new(options.seed);
    let mut store = ParamStore::new();
    let net = SearchNetwork::new(&mut store, config, &mut rng)?;
    let alphas = init_alphas(&config, &mut rng)?;
    // Initialised on the host from the seed (so every device starts from the same bits), then
    // moved once.
    store.to_device(run.device)?;
    let alphas = alphas
        .iter()
        .map(|a| a.to_device(run.device))
        .collect::<Result<Vec<_>>>()?;
    let architect = Architect::new(ArchitectConfig {
        arch_learning_rate: options.arch_learning_rate,
        arch_weight_decay: options.arch_weight_decay,
        unrolled: options.unrolled,
        momentum: options.momentum,
        weight_decay: options.weight_decay,
    });
    let mut state = SearchState {
        model: Searcher {
            store,
            alphas,
            sgd: Sgd::new(
                options.learning_rate,
                options.momentum,
                options.weight_decay,
            ),
            architect,
        },
        position: Position {
            epoch: 0,
            global_step: 0,
            totals: EpochTotals::default(),
            train_loader: data.train.state(),
            val_loader: data.val.state(),
            seconds: 0.0,
        },
    };
    let checkpoint = run.out.join(CHECKPOINT);
    let metrics_path = run.out.join(METRICS);
    let mut metrics = if run.resume {
        state.restore(&checkpoint, options)?;
        data.train.resume(state.position.train_loader)?;
        data.val.resume(state.position.val_loader)?;
        let resumed_at = state.position.global_step;
        eprintln!(
            "resuming {} at epoch {} step {resumed_at}",
            checkpoint.display(),
            state.position.epoch
        );
        MetricsLog::resume(&metrics_path, |record| match record["kind"].as_str() {
            Some("step") => record["global_step"]
                .as_u64()
                .is_some_and(|s| (s as usize) < resumed_at),
            Some("epoch") => record["epoch"]
                .as_u64()
                .is_some_and(|e| (e as usize) < state.position.epoch),
            _ => false,
        })?
    } else {
        MetricsLog::create(&metrics_path)?
    };
    if run.verbose {
        eprintln!(
            "search network: {} weights ({:.6} M), {} cells, C = {}, {} classes, {} order, on {}",
            state.model.store.num_parameters(),
            state.model.store.num_parameters() as f64 / 1e6,
            config.layers,
            config.init_channels,
            config.num_classes,
            if options.unrolled { "second" } else { "first" },
            run.device.describe()?
        );
    }
    let started = Instant::now();
    let seconds_before = state.position.seconds;
    let mut steps_run = 0;
    let mut valid_acc = None;
    let mut stopped = false;
    let steps_per_epoch = data.train.batches_per_epoch();

    while state.position.epoch < options.epochs && !stopped {
        let epoch = state.position.epoch;
        let lr = cosine_lr(
            options.learning_rate,
            options.learning_rate_min,
            epoch,
            options.epochs,
        );
        state.model.sgd.set_lr(lr);
        if run.verbose && state.position.totals.seen == 0 {
            let genotype = genotype_of(&state.model.alphas, &config)?;
            eprintln!("epoch {epoch}  lr {lr:.6e}\ngenotype = {genotype}");
            eprintln!(
                "{}",
                alpha_table(
                    state.model.alphas[0].to_host()?.data(),
                    "softmax(alpha_normal)"
                )?
            );
            eprintln!(
                "{}",
                alpha_table(
                    state.model.alphas[1].to_host()?.data(),
                    "softmax(alpha_reduce)"
                )?
            );
        }
        let progress = Progress::new(steps_per_epoch, run.report_freq);
        let epoch_started = Instant::now();
        let mut epoch_images = 0usize;
        let mut batches = data.train.epoch();
        loop {
            if run
                .max_steps
                .is_some_and(|m| state.position.global_step >= m)
            {
                stopped = true;
                break;
            }
            let Some(train) = batches.next() else { break };
            let val = data.val.next_batch();
            let (train_images, val_images) = (
                train.images.to_device(run.device)?,
                val.images.to_device(run.device)?,
            );
            let train_batch = Batch {
                images: &train_images,
                labels: &train.labels,
            };
            let val_batch = Batch {
                images: &val_images,
                labels: &val.labels,
            };
            let step = state
                .model
                .step(&net, train_batch, val_batch, lr, options.grad_clip)?;
            let n = train.labels.len();
            let totals = &mut state.position.totals;
            totals.loss_sum += step.train_loss as f64 * n as f64;
            totals.correct += step.train_correct;
            totals.seen += n;
            epoch_images += n;
            state.position.global_step += 1;
            steps_run += 1;
            let images_per_s = epoch_images as f64 / epoch_started.elapsed().as_secs_f64();
            let step_in_epoch = totals.seen.div_ceil(options.batch_size);
            metrics.write(&json!({
                "kind": "step", "epoch": epoch, "step": step_in_epoch - 1,
                "global_step": state.position.global_step - 1, "lr": lr,
                "train_loss": step.train_loss, "train_acc": step.train_correct as f32 / n as f32,
                "val_loss": step.val_loss, "images_per_s": images_per_s,
            }))?;
            progress.update(
                step_in_epoch,
                &format!(
                    "loss {:.4}  acc {:5.1}%  {:.0} img/s",
                    totals.loss_sum / totals.seen as f64,
                    100.0 * totals.correct as f64 / totals.seen as f64,
                    images_per_s
                ),
            );
        }
        let epoch_done = state.position.totals.seen == data.train.len();
        if !epoch_done {
            progress.finish();
        }
        if epoch_done {
            let (valid_loss, acc) = evaluate(
                &net,
                &mut state.model.store,
                &state.model.alphas,
                &mut data.val_eval,
            )?;
            valid_acc = Some(acc);
            let totals = state.position.totals;
            let genotype = genotype_of(&state.model.alphas, &config)?;
            metrics.write(&json!({
                "kind": "epoch", "epoch": epoch, "lr": lr,
                "train_loss": totals.loss_sum / totals.seen.max(1) as f64,
                "train_acc": totals.correct as f64 / totals.seen.max(1) as f64,
                "valid_loss": valid_loss, "valid_acc": acc,
                "seconds": epoch_started.elapsed().as_secs_f64(), "genotype": genotype,
            }))?;
            if run.verbose {
                eprintln!(
                    "epoch {epoch}  train_acc {:.2}%  valid_acc {:.2}%",
                    100.0 * totals.correct as f64 / totals.seen.max(1) as f64,
                    100.0 * acc
                );
            }
            state.position.epoch += 1;
            state.position.totals = EpochTotals::default();
        }
        state.position.train_loader = data.train.state();
        state.position.val_loader = data.val.state();
        state.position.seconds = seconds_before + started.elapsed().as_secs_f64();
        state.save(&checkpoint, options)?;
    }

    // The original never decodes the alphas after the last epoch; we do, and keep them.
    let genotype = genotype_of(&state.model.alphas, &config)?;
    write_atomically(
        &run.out.join("genotype.json"),
        genotype.to_json().as_bytes(),
    )?;
    state
        .model
        .store
        .save(&run.out.join("weights.safetensors"))?;
    let plots = plot_genotype(&genotype, &run.out)?;
    let seconds = state.position.seconds;
    let summary = json!({
        "genotype": genotype,
        "finished": !stopped,
        "epochs_completed": state.position.epoch,
        "global_steps": state.position.global_step,
        "search_seconds": seconds,
        "images_per_s_this_run": (steps_run * options.batch_size) as f64 / started.elapsed().as_secs_f64(),
        "valid_acc": valid_acc,
        "peak_memory_bytes": peak_memory_bytes(),
        "weights": state.model.store.num_parameters(),
    });
    write_atomically(
        &run.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    if run.verbose {
        eprintln!("genotype = {genotype}");
        if let Some(note) = plots.message() {
            eprintln!("{note}");
        }
        for file in plots.dot_files.iter().chain(&plots.rendered) {
            eprintln!("wrote {}", file.display());
        }
        eprintln!(
            "{} after {} epochs, {} steps in {:.1} s; valid_acc {}; peak memory {}",
            if stopped {
                "stopped (resume with --resume)"
            } else {
                "search finished"
            },
            state.position.epoch,
            state.position.global_step,
            seconds,
            valid_acc.map_or("n/a".into(), |a| format!("{:.2}%", 100.0 * a)),
            peak_memory_bytes()
                .map_or("n/a".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0)),
        );
    }
    Ok(SearchOutcome {
        genotype,
        alphas: state.model.alphas,
        store: state.model.store,
        valid_acc,
        steps_run,
        finished: !stopped,
    })
}
