//! `darts`: the command-line interface of darts-rs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use darts::Device;
use darts::darts::genotype::load_genotype;
use darts::data::dataset::DatasetKind;
use darts::device::gpu::GemmPrecision;
use darts::train::bench::{SearchBench, bench_search};
use darts::train::demo::{DemoConfig, train_demo};
use darts::train::search::{RunOptions, SearchOptions, search};
use darts::viz::plot_genotype;

/// darts-rs: a from-scratch deep-learning engine and DARTS (Differentiable Architecture Search).
#[derive(Parser)]
#[command(name = "darts", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture search.
    #[command(subcommand)]
    Search(SearchCommand),
    /// Time search steps on generated data and print a table (and JSON with --json).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write Graphviz pictures (.dot, and .svg/.png when `dot` is installed) of a genotype's
    /// normal and reduction cells.
    Plot {
        /// A built-in genotype name (DARTS_V2, DARTS_V1, NASNet, AmoebaNet, DARTS) or a genotype JSON file.
        genotype: String,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Print the version, the devices this build can use and the CPU thread count.
    Info,
    /// Train a small conv net (conv-BN-ReLU twice, global pool, linear) on generated images and
    /// print the loss and accuracy per step: a quick end-to-end check of the engine.
    Demo {
        /// Number of training steps.
        #[arg(long, default_value_t = 60)]
        steps: usize,
        /// Images per step.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// SGD learning rate.
        #[arg(long, default_value_t = 0.05)]
        learning_rate: f32,
        /// Seed of the generated data and of the initial weights.
        #[arg(long, default_value_t = 2)]
        seed: u64,
        /// Device: cpu, emu (the CUDA kernels on the host emulator), cuda or cuda:N [default:
        /// cuda when available, else cpu].
        #[arg(long)]
        device: Option<String>,
    },
}

#[derive(Subcommand)]
enum SearchCommand {
    /// DARTS CNN search (`train_search.py`): alternate architect steps on α and SGD steps on the
    /// weights; prints and plots the genotype found. Defaults are the original's CIFAR-10 search.
    Cnn(CnnSearchArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Full DARTS CNN search steps (architect step + weight step); defaults are the paper's
    /// shapes: batch 64, C 16, 8 cells, 32x32x3 images, 10 classes.
    SearchCnn(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Second-order architecture gradient.
    #[arg(long)]
    unrolled: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Channels of the first cells (C).
    #[arg(long, default_value_t = 16)]
    init_channels: usize,
    /// Number of cells.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Image height and width.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Image channels.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Untimed steps before timing.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Device: cpu, emu (the CUDA kernels on the host emulator: exact but slow, for tiny
    /// configurations), cuda or cuda:N [default: cuda when a GPU, its driver and this build's
    /// PTX are present, else cpu].
    #[arg(long)]
    device: Option<String>,
    /// Run the GEMMs (dense layers, convolutions) on TF32 tensor cores: faster on sm_80 and
    /// newer GPUs, with relative errors around 1e-3 instead of float rounding (cuda or emu only).
    #[arg(long)]
    tf32: bool,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print where the time goes: per phase of the step and per op (forward and backward), and
    /// on a GPU device (or emu) the kernel launches per step of each kernel. Also annotates the timed steps with NVTX ranges and brackets them with the CUDA
    /// profiler's start and stop: `nsys profile --capture-range=cudaProfilerApi darts bench
    /// search-cnn --device cuda --profile` records just them.
    #[arg(long)]
    profile: bool,
}

#[derive(clap::Args)]
struct CnnSearchArgs {
    /// Data set: cifar10 (binary version), fashion-mnist or mnist (IDX files).
    #[arg(long, default_value = "cifar10")]
    dataset: String,
    /// Folder with the data set's files [default: /usr/share/datasets/fashion-mnist for
    /// fashion-mnist, ./data otherwise].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Images per batch (for both the weight and the architecture step).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Initial weight learning rate (cosine-annealed per epoch).
    #[arg(long, default_value_t = 0.025)]
    learning_rate: f32,
    /// Final weight learning rate of the cosine schedule.
    #[arg(long, default_value_t = 0.001)]
    learning_rate_min: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// SGD weight decay.
    #[arg(long, default_value_t = 3e-4)]
    weight_decay: f32,
    /// Number of epochs.
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Channels of the first cells (C).
    #[arg(long, default_value_t = 16)]
    init_channels: usize,
    /// Number of cells.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Global gradient-norm clip for the weights.
    #[arg(long, default_value_t = 5.0)]
    grad_clip: f32,
    /// Fraction of the training images that train the weights; the rest train α.
    #[arg(long, default_value_t = 0.5)]
    train_portion: f64,
    /// Second-order architecture gradient (unrolled virtual step).
    #[arg(long)]
    unrolled: bool,
    /// Adam learning rate for α.
    #[arg(long, default_value_t = 3e-4)]
    arch_learning_rate: f32,
    /// Adam weight decay for α.
    #[arg(long, default_value_t = 1e-3)]
    arch_weight_decay: f32,
    /// Random seed (weights, α, data order and augmentation).
    #[arg(long, default_value_t = 2)]
    seed: u64,
    /// Apply Cutout to training images.
    #[arg(long)]
    cutout: bool,
    /// Cutout length.
    #[arg(long, default_value_t = 16)]
    cutout_length: usize,
    /// Use only the first N training images (before the split), for quick runs.
    #[arg(long)]
    train_images: Option<usize>,
    /// Device: cpu, emu (the CUDA kernels on the host emulator: exact but slow, for tiny
    /// configurations), cuda or cuda:N [default: cuda when a GPU, its driver and this build's
    /// PTX are present, else cpu].
    #[arg(long)]
    device: Option<String>,
    /// Run the GEMMs (dense layers, convolutions) on TF32 tensor cores: faster on sm_80 and
    /// newer GPUs, with relative errors around 1e-3 instead of float rounding (cuda or emu only).
    #[arg(long)]
    tf32: bool,
    /// Output folder: checkpoint, metrics.jsonl, genotype.json, pictures, summary.json.
    #[arg(long, default_value = "runs/search-cnn")]
    out: PathBuf,
    /// Stop after this many weight steps (checkpointed; continue with --resume).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Continue the run checkpointed in --out.
    #[arg(long)]
    resume: bool,
    /// Start afresh even where --out already holds a search, replacing it (without this, such a
    /// folder is refused).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Off a terminal, print progress every this many steps.
    #[arg(long, default_value_t = 50)]
    report_freq: usize,
}

fn main() -> ExitCode {
    darts::malloc::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `--device` asked for (checked to be usable here), or the default device, with its GEMMs on
/// TF32 tensor cores if `tf32` (which fails on the CPU and on GPUs without them).
fn pick_device(arg: Option<&str>, tf32: bool) -> darts::Result<Device> {
    let device = match arg {
        None => Device::default_device(),
        Some(name) => {
            let device = Device::parse(name)?;
            device.check_available()?;
            device
        }
    };
    if tf32 {
        device.set_gemm_precision(GemmPrecision::Tf32)?;
    }
    Ok(device)
}

fn run(cli: Cli) -> darts::Result<()> {
    match cli.command {
        Command::Info => {
            println!("darts {}", env!("CARGO_PKG_VERSION"));
            println!("devices: cpu, emu (default: {})", Device::default_device());
            match Device::Cuda(0).describe() {
                Ok(gpu) => {
                    println!("cuda: {gpu}");
                    let tf32 = Device::Cuda(0)
                        .set_gemm_precision(GemmPrecision::Tf32)
                        .and_then(|()| Device::Cuda(0).set_gemm_precision(GemmPrecision::F32));
                    match tf32 {
                        Ok(()) => println!("tf32: available (--tf32)"),
                        Err(e) => println!("tf32: unavailable ({e})"),
                    }
                }
                Err(e) => println!("cuda: unavailable ({e})"),
            }
            println!("cpu threads: {}", rayon::current_num_threads());
            Ok(())
        }
        Command::Search(SearchCommand::Cnn(args)) => {
            let device = pick_device(args.device.as_deref(), args.tf32)?;
            let kind: DatasetKind = args.dataset.parse()?;
            let data = args
                .data
                .or_else(|| kind.system_dir().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("data"));
            let options = SearchOptions {
                dataset: args.dataset,
                data,
                batch_size: args.batch_size,
                learning_rate: args.learning_rate,
                learning_rate_min: args.learning_rate_min,
                momentum: args.momentum,
                weight_decay: args.weight_decay,
                epochs: args.epochs,
                init_channels: args.init_channels,
                layers: args.layers,
                grad_clip: args.grad_clip,
                train_portion: args.train_portion,
                unrolled: args.unrolled,
                arch_learning_rate: args.arch_learning_rate,
                arch_weight_decay: args.arch_weight_decay,
                seed: args.seed,
                cutout: args.cutout.then_some(args.cutout_length),
                train_images: args.train_images,
            };
            let run = RunOptions {
                out: args.out,
                resume: args.resume,
                overwrite: args.overwrite,
                max_steps: args.max_steps,
                report_freq: args.report_freq,
                verbose: true,
                device,
            };
            let outcome = search(&options, &run)?;
            println!("{}", outcome.genotype);
            Ok(())
        }
        Command::Bench(BenchCommand::SearchCnn(args)) => {
            let device = pick_device(args.device.as_deref(), args.tf32)?;
            if args.steps == 0 || args.batch_size == 0 {
                return Err(darts::Error::invalid(
                    "bench",
                    "--steps and --batch-size must be at least 1",
                ));
            }
            let config = SearchBench {
                unrolled: args.unrolled,
                batch_size: args.batch_size,
                init_channels: args.init_channels,
                layers: args.layers,
                image_size: args.image_size,
                in_channels: args.in_channels,
                classes: args.classes,
                warmup: args.warmup,
                steps: args.steps,
                device,
            };
            eprintln!(
                "search-cnn ({} order): batch {}, C {}, {} cells, {}x{}x{}; {} warm-up + {} timed steps",
                if args.unrolled { "second" } else { "first" },
                args.batch_size,
                args.init_channels,
                args.layers,
                args.in_channels,
                args.image_size,
                args.image_size,
                args.warmup,
                args.steps
            );
            let report = bench_search(
                config,
                |i, ms| eprintln!("  step {i}: {ms:.1} ms"),
                args.profile,
            )?;
            if let (Some(launches), Some(up), Some(down)) = (
                report.launches_per_step,
                report.uploads_per_step,
                report.downloads_per_step,
            ) {
                eprintln!(
                    "  per step: {launches:.0} kernel launches, {up:.0} host-to-device and \
                     {down:.0} device-to-host copies"
                );
            }
            let eval_launches = report
                .launches_per_eval_forward
                .map_or(String::new(), |n| format!(", {n:.0} kernel launches"));
            eprintln!(
                "  eval-mode forward of the validation batch: {:.1} ms{eval_launches}",
                report.eval_forward_ms
            );
            println!(
                "| bench | order | batch | median ms | min ms | max ms | images/s | peak host MiB | device MiB | device | commit |"
            );
            println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
            let mib =
                |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.0}", b as f64 / 1048576.0));
            println!(
                "| search-cnn | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
                if report.unrolled { "second" } else { "first" },
                report.batch_size,
                report.median_ms,
                report.min_ms,
                report.max_ms,
                report.images_per_s,
                mib(report.peak_host_bytes),
                mib(report.peak_device_bytes),
                report.device,
                report.commit
            );
            if args.profile {
                println!(
                    "\nprofile of the {} timed steps ({}):\n{}",
                    args.steps,
                    darts::profile::nvtx_status(),
                    darts::profile::report()
                );
                println!("{}", darts::train::bench::launch_table(&report));
            }
            if let Some(path) = args.json {
                let text = serde_json::to_string_pretty(&report)
                    .map_err(|e| darts::Error::invalid("bench", e.to_string()))?;
                darts::io::write_atomically(&path, text.as_bytes())?;
            }
            Ok(())
        }
        Command::Plot { genotype, out } => {
            let genotype = load_genotype(&genotype)?;
            let plots = plot_genotype(&genotype, &out)?;
            for file in plots.dot_files.iter().chain(&plots.rendered) {
                println!("wrote {}", file.display());
            }
            if let Some(note) = plots.message() {
                eprintln!("{note}");
            }
            Ok(())
        }
        Command::Demo {
            steps,
            batch_size,
            learning_rate,
            seed,
            device,
        } => {
            let device = pick_device(device.as_deref(), false)?;
            if steps == 0 || batch_size == 0 {
                return Err(darts::Error::invalid(
                    "demo",
                    "--steps and --batch-size must be at least 1",
                ));
            }
            println!(
                "training a small conv net on generated 3x12x12 images ({device}, {steps} steps, batch {batch_size})"
            );
            let start = Instant::now();
            let config = DemoConfig {
                steps,
                batch_size,
                learning_rate,
                seed,
                device,
            };
            let history = train_demo(config, |step, stats| {
                if step % 10 == 0 || step + 1 == steps {
                    let rate = ((step + 1) * batch_size) as f64 / start.elapsed().as_secs_f64();
                    println!(
                        "step {:>4}  loss {:.4}  acc {:>5.1}%  {:.0} img/s",
                        step,
                        stats.loss,
                        100.0 * stats.accuracy,
                        rate
                    );
                }
            })?
            .history;
            let first = history.first().map_or(f32::NAN, |s| s.loss);
            let last = history.last().map_or(f32::NAN, |s| s.loss);
            println!(
                "loss {first:.4} -> {last:.4} in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
