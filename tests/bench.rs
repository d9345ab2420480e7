//! `darts bench search-cnn`'s report on a GPU executor (the emulator, which runs the same launch
//! code as CUDA): the launches per step add up kernel by kernel, and a step copies between host
//! and device only at the edges. In its own test binary because the emulator's counters are
//! process-wide.

use darts::Device;
use darts::device::gpu::GemmPrecision;
use darts::train::bench::{BenchReport, SearchBench, bench_search, launch_table};

/// A search step small enough for the emulator.
fn tiny(device: Device) -> SearchBench {
    SearchBench {
        batch_size: 2,
        init_channels: 2,
        layers: 2,
        image_size: 8,
        warmup: 1,
        steps: 1,
        device,
        ..SearchBench::default()
    }
}

#[test]
fn a_gpu_step_reports_its_launches_and_copies() {
    let report = bench_search(tiny(Device::Emu), |_, _| {}, false).unwrap();
    let launches = report.launches_per_step.unwrap();
    let by_kernel: f64 = report.launches_by_kernel.iter().map(|(_, n)| n).sum();
    assert!(launches > 0.0);
    assert_eq!(launches, by_kernel);
    let counts: Vec<f64> = report.launches_by_kernel.iter().map(|(_, n)| *n).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    // Every cell has batch norms; the weight step updates every parameter in one launch.
    let launches_of = |name| {
        let found = report.launches_by_kernel.iter().find(|(k, _)| *k == name);
        found.map_or(0.0, |(_, n)| *n)
    };
    assert!(launches_of("batchnorm_moments_partial_fwd_f32") > 0.0);
    assert_eq!(launches_of("optim_sgd_fwd_f32"), 1.0);
    assert!(launch_table(&report).contains("| batchnorm_moments_partial_fwd_f32 | "));
    // The only uploads are the labels of the two batches (the images stay on the device) and
    // the tables of the three multi-tensor launches (norm, clipping, SGD); the downloads are the
    // two losses and predictions and the gradient norm.
    assert!(report.uploads_per_step.unwrap() <= 5.0, "{report:?}");
    assert!(report.downloads_per_step.unwrap() <= 5.0, "{report:?}");
    // An eval-mode forward launches kernels too, far fewer than a step's two forwards and two
    // backwards.
    let eval = report.launches_per_eval_forward.unwrap();
    assert!(eval > 0.0 && eval < launches / 4.0, "{eval} of {launches}");
    assert!(report.eval_forward_ms > 0.0);
    assert_eq!(json_of(&report)["tf32"], false);

    // The report says which GEMMs ran, in the key tools/compare-table.py pairs runs by.
    Device::Emu.set_gemm_precision(GemmPrecision::Tf32).unwrap();
    let tf32 = bench_search(tiny(Device::Emu), |_, _| {}, false);
    Device::Emu.set_gemm_precision(GemmPrecision::F32).unwrap();
    let tf32 = tf32.unwrap();
    assert_eq!(json_of(&tf32)["tf32"], true);
    assert!(tf32.device.contains("TF32"), "{}", tf32.device);
}

fn json_of(report: &BenchReport) -> serde_json::Value {
    serde_json::to_value(report).unwrap()
}

#[test]
fn a_cpu_step_reports_no_launches() {
    let report = bench_search(tiny(Device::Cpu), |_, _| {}, false).unwrap();
    assert_eq!(report.launches_per_step, None);
    assert_eq!(json_of(&report)["tf32"], false);
    assert!(report.launches_by_kernel.is_empty());
    assert_eq!(report.uploads_per_step, None);
    assert_eq!(report.launches_per_eval_forward, None);
    assert!(report.eval_forward_ms > 0.0);
    assert_eq!(launch_table(&report), "");
}
