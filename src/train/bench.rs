//! `darts bench`: timed search steps on generated data at the paper's shapes (or any other), so a
//! step's cost can be compared across commits, devices and the PyTorch reference
//! (`tools/reference/bench.py` writes the same JSON keys).

use std::time::Instant;

use serde::Serialize;

use crate::Result;
use crate::darts::architect::{Architect, ArchitectConfig, Batch};
use crate::darts::cnn::search::{SearchConfig, SearchNetwork, init_alphas};
use crate::darts::searcher::Searcher;
use crate::device::Device;
use crate::device::gpu::{Counters, GemmPrecision, KernelId};
use crate::nn::ParamStore;
use crate::optim::sgd::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::progress::peak_memory_bytes;

/// The shape and length of a search-step benchmark. Defaults: the paper's CIFAR-10 search.
#[derive(Debug, Clone, Copy)]
pub struct SearchBench {
    pub unrolled: bool,
    pub batch_size: usize,
    pub init_channels: usize,
    pub layers: usize,
    pub image_size: usize,
    pub in_channels: usize,
    pub classes: usize,
    /// Untimed steps first (allocator, caches).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Where the steps run.
    pub device: Device,
}

impl Default for SearchBench {
    fn default() -> Self {
        SearchBench {
            unrolled: false,
            batch_size: 64,
            init_channels: 16,
            layers: 8,
            image_size: 32,
            in_channels: 3,
            classes: 10,
            warmup: 1,
            steps: 5,
            device: Device::Cpu,
        }
    }
}

/// The result, in the JSON layout shared with the PyTorch reference.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub bench: &'static str,
    pub unrolled: bool,
    pub batch_size: usize,
    pub init_channels: usize,
    pub layers: usize,
    pub image_size: usize,
    pub threads: usize,
    /// Whether the GEMMs ran on TF32 tensor cores (`--tf32`); false on the CPU.
    pub tf32: bool,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub images_per_s: f64,
    pub peak_host_bytes: Option<u64>,
    /// Device memory held at the end (live buffers plus the reuse pool, whose size is the
    /// high-water mark); `None` off CUDA.
    pub peak_device_bytes: Option<u64>,
    /// Kernel launches per timed step; `None` on the CPU.
    pub launches_per_step: Option<f64>,
    /// The launches per timed step of each kernel that ran, most launched first; empty on the
    /// CPU.
    pub launches_by_kernel: Vec<(&'static str, f64)>,
    /// Copies from host to device per timed step; `None` on the CPU.
    pub uploads_per_step: Option<f64>,
    /// Copies from device to host per timed step (each waits for the device); `None` on the CPU.
    pub downloads_per_step: Option<f64>,
    /// One eval-mode forward of the validation batch, as a search's validation passes run them
    /// (after the warm-up, untimed by the steps and unprofiled): its milliseconds.
    pub eval_forward_ms: f64,
    /// Its kernel launches; `None` on the CPU.
    pub launches_per_eval_forward: Option<f64>,
    pub device: String,
    pub commit: String,
}

/// Runs `warmup + steps` full search steps (architect step, then weight step) on random images
/// and reports the timed ones. `on_step` sees each timed step's milliseconds. With `profile`,
/// the timed steps are also profiled per phase and op ([`crate::profile::report`]), annotated
/// with NVTX, and bracketed by the CUDA profiler's start and stop (so that `nsys profile
/// --capture-range=cudaProfilerApi` records just them).
pub fn bench_search(
    config: SearchBench,
    mut on_step: impl FnMut(usize, f64),
    profile: bool,
) -> Result<BenchReport> {
    let net_config = SearchConfig {
        in_channels: config.in_channels,
        init_channels: config.init_channels,
        num_classes: config.classes,
        layers: config.layers,
        ..SearchConfig::default()
    };
    let mut rng = Rng::new(2);
    let mut store = ParamStore::new();
    let net = SearchNetwork::new(&mut store, net_config, &mut rng)?;
    let alphas = init_alphas(&net_config, &mut rng)?;
    store.to_device(config.device)?;
    let alphas = alphas
        .iter()
        .map(|a| a.to_device(config.device))
        .collect::<Result<Vec<_>>>()?;
    let mut searcher = Searcher {
        store,
        alphas,
        sgd: Sgd::new(0.025, 0.9, 3e-4),
        architect: Architect::new(ArchitectConfig {
            unrolled: config.unrolled,
            ..ArchitectConfig::default()
        }),
    };
    let shape = [
        config.batch_size,
        config.in_channels,
        config.image_size,
        config.image_size,
    ];
    let mut batch = || -> Result<(Tensor, Vec<usize>)> {
        let images = Tensor::normal(&shape, 0.0, 1.0, &mut rng)?.to_device(config.device)?;
        let labels = (0..config.batch_size)
            .map(|_| rng.below(config.classes))
            .collect();
        Ok((images, labels))
    };
    let (train_x, train_y) = batch()?;
    let (val_x, val_y) = batch()?;
    let train = Batch {
        images: &train_x,
        labels: &train_y,
    };
    let val = Batch {
        images: &val_x,
        labels: &val_y,
    };
    let exec = config.device.executor()?;
    let mut times = Vec::with_capacity(config.steps);
    let snapshot = || exec.map(|e| Snapshot::of(e.counters()));
    let mut before = None;
    let mut eval = (0.0, None);
    for i in 0..config.warmup + config.steps {
        if i == config.warmup {
            let eval_before = snapshot();
            let start = Instant::now();
            net.infer(&mut searcher.store, &searcher.alphas, val_x.clone())?;
            config.device.synchronize()?;
            let launches = match (eval_before, snapshot()) {
                (Some(before), Some(after)) => {
                    let total = |s: &Snapshot| s.launches.iter().sum::<u64>();
                    Some((total(&after) - total(&before)) as f64)
                }
                _ => None,
            };
            eval = (start.elapsed().as_secs_f64() * 1e3, launches);
            before = snapshot();
        }
        if profile && i == config.warmup {
            crate::profile::enable();
            if let Some(exec) = exec {
                exec.profiler_capture(true)?;
            }
        }
        let start = Instant::now();
        searcher.step(&net, train, val, 0.025, 5.0)?;
        config.device.synchronize()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if i >= config.warmup {
            on_step(times.len(), ms);
            times.push(ms);
        }
    }
    if let (true, Some(exec)) = (profile, exec) {
        exec.profiler_capture(false)?;
    }
    let per_step = |n: u64| n as f64 / config.steps as f64;
    let (launches_by_kernel, uploads, downloads) = match (before, snapshot()) {
        (Some(before), Some(after)) => {
            let mut launches: Vec<(&'static str, f64)> = KernelId::ALL
                .iter()
                .zip(after.launches.iter().zip(&before.launches))
                .filter(|(_, (after, before))| after > before)
                .map(|(kernel, (after, before))| (kernel.name(), per_step(after - before)))
                .collect();
            launches.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
            let uploads = per_step(after.uploads - before.uploads);
            let downloads = per_step(after.downloads - before.downloads);
            (launches, Some(uploads), Some(downloads))
        }
        _ => (Vec::new(), None, None),
    };
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    Ok(BenchReport {
        implementation: "darts-rs",
        bench: "search-cnn",
        unrolled: config.unrolled,
        batch_size: config.batch_size,
        init_channels: config.init_channels,
        layers: config.layers,
        image_size: config.image_size,
        threads: rayon::current_num_threads(),
        tf32: exec.is_some_and(|e| e.gemm_precision() == GemmPrecision::Tf32),
        median_ms: median,
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        images_per_s: config.batch_size as f64 / (median / 1e3),
        peak_host_bytes: peak_memory_bytes(),
        peak_device_bytes: exec.and_then(|e| e.reserved_bytes()),
        launches_per_step: exec.map(|_| launches_by_kernel.iter().map(|(_, n)| n).sum()),
        launches_by_kernel,
        uploads_per_step: uploads,
        downloads_per_step: downloads,
        eval_forward_ms: eval.0,
        launches_per_eval_forward: eval.1,
        device: config.device.describe()?,
        commit: current_commit(),
    })
}

/// An executor's [`Counters`] at one moment.
struct Snapshot {
    launches: Vec<u64>,
    uploads: u64,
    downloads: u64,
}

impl Snapshot {
    fn of(counters: &Counters) -> Snapshot {
        Snapshot {
            launches: counters.launches_per_kernel(),
            uploads: counters.uploads(),
            downloads: counters.downloads(),
        }
    }
}

/// The launches per step of each kernel, most launched first, as a Markdown table (empty on
/// the CPU): which kernels fusing would pay for.
pub fn launch_table(report: &BenchReport) -> String {
    if report.launches_by_kernel.is_empty() {
        return String::new();
    }
    let mut out = String::from("| kernel | launches per step |\n| --- | --- |\n");
    for (kernel, launches) in &report.launches_by_kernel {
        out += &format!("| {kernel} | {launches:.0} |\n");
    }
    out
}

/// The commit of the checkout this binary was built from: `DARTS_COMMIT` when set (for a binary
/// carried away from its checkout, as `tools/gpu-check.sh` does), else `git describe --always
/// --dirty` in its source folder (not in the working directory), or "unknown" when that folder is
/// not a git checkout any more.
fn current_commit() -> String {
    if let Ok(commit) = std::env::var("DARTS_COMMIT") {
        return commit;
    }
    std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR")])
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string())
}
