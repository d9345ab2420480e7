//! Every kernel of `kernels/rnn.cu`, run through the GPU ops of `darts::device::gpu::rnn`,
//! against the CPU reference `darts::device::cpu::rnn`, for every activation: on the emulator
//! always, and on CUDA when this machine has a driver and the build has PTX (otherwise that test
//! says it skipped). Inputs are random, of shapes that are not multiples of the block size; every
//! device allocation starts as NaN, so an output element a kernel fails to write shows up.

mod common;

use common::gpu::{Tolerance, check, cpu_reference_tests, normal, plant_extremes};
use darts::device::cpu::rnn::{self as reference, NodeActivation};
use darts::device::gpu::rnn as ops;
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[KernelId::RnnNodeFwdF32, KernelId::RnnNodeBwdF32];

/// `(rows, hidden)`: single elements, a row narrower and one wider than a warp, a row wider than
/// a block, and many short rows; totals of 1 to 1,285 elements, none a multiple of 256.
const SHAPES: [(usize, usize); 5] = [(1, 1), (3, 5), (7, 33), (5, 257), (33, 31)];

/// Allowed difference `atol + |expected| · eps`. `sigmoidf`, `tanhf` and `expf` on CUDA differ
/// from the host libm by an ulp or two; in the node that error is scaled by `|f(b) − h|` and
/// `|dy|` (below about 60 together on this data), and `1 − c` or `1 − tanh²` lose it relative
/// to themselves where they are close to 0, hence an absolute term well above an ulp.
const TOLERANCE: Tolerance = Tolerance {
    atol: 2e-5,
    eps: 8.0 * f32::EPSILON,
};

/// Normal data times 2.
fn random(n: usize, seed: u64) -> Vec<f32> {
    normal(n, 2.0, seed)
}

/// `random` with ±90 planted in longer inputs, where e^90 overflows f32 and a careless sigmoid
/// gives NaN: for `ch`, the inputs of the gate and of the activation.
fn with_extremes(n: usize, seed: u64) -> Vec<f32> {
    plant_extremes(random(n, seed), 90.0)
}

/// Runs the node forward and backward for every activation at every shape on `e` and
/// compares with the CPU.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &(rows, hidden)) in SHAPES.iter().enumerate() {
        let seed = 100 * case as u64;
        let n = rows * hidden;
        let ch = with_extremes(2 * n, seed);
        let (h_prev, dy) = (random(n, seed + 1), random(n, seed + 2));
        let (dch, dh, ddy) = (
            e.to_device(&ch).unwrap(),
            e.to_device(&h_prev).unwrap(),
            e.to_device(&dy).unwrap(),
        );
        for act in NodeActivation::ALL {
            let what = format!("{act:?} node, {rows} × {hidden}");
            let want = reference::node_forward(&ch, &h_prev, hidden, act);
            let got = ops::node_forward(e, &dch, &dh, hidden, act).unwrap();
            check(e, &format!("{what}: forward"), &got, &want, TOLERANCE);

            let (want_dch, want_dh) = reference::node_backward(&ch, &h_prev, &dy, hidden, act);
            let (got_dch, got_dh) = ops::node_backward(e, &dch, &dh, &ddy, hidden, act).unwrap();
            check(e, &format!("{what}: dch"), &got_dch, &want_dch, TOLERANCE);
            check(e, &format!("{what}: dh_prev"), &got_dh, &want_dh, TOLERANCE);
        }
    }
}

cpu_reference_tests!(check_against_cpu, COVERED);

#[test]
fn wrong_lengths_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let buffer = |n: usize| e.to_device(&vec![0.5f32; n]).unwrap();
    let (ch, h_prev, dy) = (buffer(12), buffer(6), buffer(6));
    let act = NodeActivation::Tanh;
    // The shapes that fit: [2, 6] and [2, 3], or [1, 12] and [1, 6].
    assert!(ops::node_forward(e, &ch, &h_prev, 3, act).is_ok());
    assert!(ops::node_forward(e, &ch, &h_prev, 6, act).is_ok());
    let refused = |r: Result<DeviceBuffer<f32>, GpuError>, op: &str| {
        assert!(
            matches!(&r, Err(GpuError::Argument { op: o, .. }) if *o == op),
            "{op}: {r:?}"
        );
    };
    // hidden 0, hidden that does not divide h_prev, ch not twice h_prev.
    refused(ops::node_forward(e, &ch, &h_prev, 0, act), "node_forward");
    refused(ops::node_forward(e, &ch, &h_prev, 4, act), "node_forward");
    refused(
        ops::node_forward(e, &buffer(10), &h_prev, 3, act),
        "node_forward",
    );
    let backward = |ch: &DeviceBuffer<f32>, dy: &DeviceBuffer<f32>, hidden: usize| {
        ops::node_backward(e, ch, &h_prev, dy, hidden, act).map(|(dch, _)| dch)
    };
    refused(backward(&ch, &buffer(5), 3), "node_backward");
    refused(backward(&buffer(14), &dy, 3), "node_backward");
    refused(backward(&ch, &dy, 0), "node_backward");
    assert!(backward(&ch, &dy, 3).is_ok());
}
