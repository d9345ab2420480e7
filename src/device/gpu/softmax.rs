//! The softmax family on a GPU executor (`kernels/softmax.cu`): softmax and log-softmax along any
//! dimension (seen as [`Lanes`]), forward and backward, and the fused label-smoothed cross-entropy.
//! Each function mirrors its CPU reference in `device::cpu::softmax`, checks lengths, allocates its
//! output and launches. The lane kernels come in two variants ([`Strategy`]); the plain functions
//! pick one with [`Strategy::for_lanes`].

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};
use crate::device::cpu::softmax::Lanes;

/// Threads per block of the reductions and of the one-thread-per-lane kernels; the most threads a
/// block-per-lane kernel uses. A multiple of 32.
const THREADS: u32 = 256;

/// The longest lane one thread walks alone under [`Strategy::for_lanes`].
const MAX_THREAD_LANE: usize = 1024;

/// The most blocks of a block-per-lane launch (beyond, each block takes several lanes).
const MAX_LANE_BLOCKS: usize = 65_535;

/// How lanes are mapped onto threads (the two variants in `kernels/softmax.cu`). Both give the
/// same result up to the order of f64 additions; the choice is about speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One block per lane: the block's threads share the lane and combine partial max and sums in
    /// a fixed tree. Coalesced for contiguous lanes (`inner = 1`), and parallel within long lanes.
    BlockPerLane,
    /// One thread per lane, walking it in index order as the CPU does. Coalesced when
    /// `inner > 1` (neighbouring lanes are neighbours in memory); serial along the lane.
    ThreadPerLane,
}

impl Strategy {
    /// The variant for `lanes`: one thread per lane for strided lanes (`inner > 1`) of at most
    /// 1024 elements, one block per lane otherwise.
    pub fn for_lanes(lanes: Lanes) -> Strategy {
        if lanes.inner > 1 && lanes.size <= MAX_THREAD_LANE {
            Strategy::ThreadPerLane
        } else {
            Strategy::BlockPerLane
        }
    }
}

/// Which normalisation a lane kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// `yⱼ = exp(xⱼ − lse)`.
    Softmax,
    /// `yⱼ = xⱼ − lse`.
    LogSoftmax,
}

/// A `const float* x, float* y, int outer, int size, int inner` kernel.
type ForwardKernel = unsafe fn(
    &dyn Executor,
    LaunchConfig,
    &DeviceBuffer<f32>,
    &mut DeviceBuffer<f32>,
    i32,
    i32,
    i32,
) -> Result<(), GpuError>;

/// A `const float* y, const float* dy, float* dx, int outer, int size, int inner` kernel.
type BackwardKernel = unsafe fn(
    &dyn Executor,
    LaunchConfig,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &mut DeviceBuffer<f32>,
    i32,
    i32,
    i32,
) -> Result<(), GpuError>;

/// A multiple of 32 threads covering `n` work items, at least 32 and at most [`THREADS`].
fn threads_for(n: usize) -> u32 {
    n.next_multiple_of(32).clamp(32, THREADS as usize) as u32
}

/// The kernels' `(outer, size, inner)` for a buffer of `len` elements seen as `lanes`.
fn lane_dims(op: &'static str, len: usize, lanes: Lanes) -> Result<(i32, i32, i32), GpuError> {
    let total = lanes
        .outer
        .checked_mul(lanes.size)
        .and_then(|n| n.checked_mul(lanes.inner));
    if total != Some(len) || len == 0 {
        return Err(invalid(
            op,
            format!("{len} elements are not {lanes:?} (outer × size × inner, none zero)"),
        ));
    }
    Ok((
        int(op, lanes.outer)?,
        int(op, lanes.size)?,
        int(op, lanes.inner)?,
    ))
}

/// The launch of a lane kernel: a block per lane sized to the lane, or a thread per lane.
fn lane_config(lanes: Lanes, strategy: Strategy) -> LaunchConfig {
    let count = lanes.outer * lanes.inner;
    match strategy {
        Strategy::BlockPerLane => {
            LaunchConfig::linear(count.min(MAX_LANE_BLOCKS) as u32, threads_for(lanes.size))
        }
        Strategy::ThreadPerLane => LaunchConfig::grid_stride(count, threads_for(count)),
    }
}

/// Softmax or log-softmax of `x` along `lanes`, with the given variant.
pub fn lanes_forward(
    exec: &dyn Executor,
    which: Normalize,
    strategy: Strategy,
    x: &DeviceBuffer<f32>,
    lanes: Lanes,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let (op, kernel): (_, ForwardKernel) = match (which, strategy) {
        (Normalize::Softmax, Strategy::BlockPerLane) => {
            ("softmax", kernels::softmax_softmax_block_fwd_f32)
        }
        (Normalize::Softmax, Strategy::ThreadPerLane) => {
            ("softmax", kernels::softmax_softmax_thread_fwd_f32)
        }
        (Normalize::LogSoftmax, Strategy::BlockPerLane) => {
            ("log_softmax", kernels::softmax_log_softmax_block_fwd_f32)
        }
        (Normalize::LogSoftmax, Strategy::ThreadPerLane) => {
            ("log_softmax", kernels::softmax_log_softmax_thread_fwd_f32)
        }
    };
    let (outer, size, inner) = lane_dims(op, x.len(), lanes)?;
    let mut y = exec.alloc(x.len())?;
    // SAFETY: the kernel touches x and y at [0, outer·size·inner), which is the length of both.
    unsafe {
        kernel(
            exec,
            lane_config(lanes, strategy),
            x,
            &mut y,
            outer,
            size,
            inner,
        )
    }?;
    Ok(y)
}

/// The backward of softmax (`dx = y ⊙ (dy − Σ dy⊙y)`) or log-softmax (`dx = dy − exp(y)·Σ dy`)
/// along `lanes`, from the forward output `y`, with the given variant.
pub fn lanes_backward(
    exec: &dyn Executor,
    which: Normalize,
    strategy: Strategy,
    y: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
    lanes: Lanes,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let (op, kernel): (_, BackwardKernel) = match (which, strategy) {
        (Normalize::Softmax, Strategy::BlockPerLane) => {
            ("softmax_backward", kernels::softmax_softmax_block_bwd_f32)
        }
        (Normalize::Softmax, Strategy::ThreadPerLane) => {
            ("softmax_backward", kernels::softmax_softmax_thread_bwd_f32)
        }
        (Normalize::LogSoftmax, Strategy::BlockPerLane) => (
            "log_softmax_backward",
            kernels::softmax_log_softmax_block_bwd_f32,
        ),
        (Normalize::LogSoftmax, Strategy::ThreadPerLane) => (
            "log_softmax_backward",
            kernels::softmax_log_softmax_thread_bwd_f32,
        ),
    };
    let (outer, size, inner) = lane_dims(op, y.len(), lanes)?;
    if dy.len() != y.len() {
        return Err(invalid(
            op,
            format!("dy has {} elements, y {}", dy.len(), y.len()),
        ));
    }
    let mut dx = exec.alloc(y.len())?;
    // SAFETY: the kernel touches y, dy and dx at [0, outer·size·inner), the length of all three.
    unsafe {
        kernel(
            exec,
            lane_config(lanes, strategy),
            y,
            dy,
            &mut dx,
            outer,
            size,
            inner,
        )
    }?;
    Ok(dx)
}

/// `softmax(x)` along `lanes`: `exp(x − log Σ exp x)`, max-subtracted, in f64.
pub fn softmax(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    lanes: Lanes,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let strategy = Strategy::for_lanes(lanes);
    lanes_forward(exec, Normalize::Softmax, strategy, x, lanes)
}

/// The softmax backward from its output `y`: `dx = y ⊙ (dy − Σ dy⊙y)` along each lane.
pub fn softmax_backward(
    exec: &dyn Executor,
    y: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
    lanes: Lanes,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let strategy = Strategy::for_lanes(lanes);
    lanes_backward(exec, Normalize::Softmax, strategy, y, dy, lanes)
}

/// `log softmax(x)` along `lanes`: `x − log Σ exp x`, max-subtracted, in f64.
pub fn log_softmax(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    lanes: Lanes,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let strategy = Strategy::for_lanes(lanes);
    lanes_forward(exec, Normalize::LogSoftmax, strategy, x, lanes)
}

/// The log-softmax backward from its output `y`: `dx = dy − exp(y) · Σ dy` along each lane.
pub fn log_softmax_backward(
    exec: &dyn Executor,
    y: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
    lanes: Lanes,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let strategy = Strategy::for_lanes(lanes);
    lanes_backward(exec, Normalize::LogSoftmax, strategy, y, dy, lanes)
}

/// The number of rows of `logits: [rows, classes]` with one target per row, as the kernels'
/// `(rows, classes)`, after checking the shapes and the smoothing.
fn cross_entropy_dims(
    op: &'static str,
    logits: &DeviceBuffer<f32>,
    targets: &DeviceBuffer<i32>,
    classes: usize,
    smoothing: f32,
) -> Result<(i32, i32), GpuError> {
    if classes == 0 || targets.len().checked_mul(classes) != Some(logits.len()) {
        return Err(invalid(
            op,
            format!(
                "{} logits are not {} rows (one per target) of {classes} classes",
                logits.len(),
                targets.len()
            ),
        ));
    }
    if !(0.0..1.0).contains(&smoothing) {
        return Err(invalid(
            op,
            format!("label smoothing {smoothing} is outside [0, 1)"),
        ));
    }
    int(op, logits.len())?;
    Ok((int(op, targets.len())?, int(op, classes)?))
}

/// The mean label-smoothed cross-entropy of `logits: [rows, classes]` against one class index per
/// row in `targets`, as a 1-element buffer: row `i` costs
/// `lseᵢ − (1−ε)·x_{i,tᵢ} − (ε/K)·Σₖ x_{i,k}` (in f64), and the mean over rows is a deterministic
/// second pass. Targets must lie in `[0, classes)` (the op layer checks them on the host); a row
/// with another target makes the loss NaN.
pub fn cross_entropy(
    exec: &dyn Executor,
    logits: &DeviceBuffer<f32>,
    targets: &DeviceBuffer<i32>,
    classes: usize,
    smoothing: f32,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "cross_entropy";
    let (rows, k) = cross_entropy_dims(op, logits, targets, classes, smoothing)?;
    let n = targets.len();
    let mut row_loss = exec.alloc(2 * n)?;
    let mut loss = exec.alloc(1)?;
    let pass1 = LaunchConfig::linear(n.min(MAX_LANE_BLOCKS) as u32, threads_for(classes));
    let pass2 = LaunchConfig::linear(1, threads_for(n));
    // SAFETY: pass 1 reads logits[0..rows·k) and targets[0..rows) and writes row_loss[0..2·rows);
    // pass 2 reads those 2·rows values and writes loss[0]. The buffers hold that many elements,
    // and both passes run on one queue, in order.
    unsafe {
        kernels::softmax_cross_entropy_rows_fwd_f32(
            exec,
            pass1,
            logits,
            targets,
            &mut row_loss,
            rows,
            k,
            smoothing,
        )?;
        kernels::softmax_cross_entropy_mean_fwd_f32(exec, pass2, &row_loss, &mut loss, rows)?;
    }
    Ok(loss)
}

/// The cross-entropy backward: `dx[i, k] = (pᵢₖ − qᵢₖ) · dloss / rows` with `p` the row softmax
/// and `qᵢₖ = ε/K + (1−ε)·[k = tᵢ]` the smoothed target; `dloss` is the loss gradient, a
/// 1-element device buffer.
pub fn cross_entropy_backward(
    exec: &dyn Executor,
    logits: &DeviceBuffer<f32>,
    targets: &DeviceBuffer<i32>,
    classes: usize,
    smoothing: f32,
    dloss: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "cross_entropy_backward";
    let (rows, k) = cross_entropy_dims(op, logits, targets, classes, smoothing)?;
    if dloss.len() != 1 {
        return Err(invalid(
            op,
            format!("dloss has {} elements, not 1", dloss.len()),
        ));
    }
    let mut dx = exec.alloc(logits.len())?;
    let config = LaunchConfig::linear(
        targets.len().min(MAX_LANE_BLOCKS) as u32,
        threads_for(classes),
    );
    // SAFETY: the kernel reads logits[0..rows·k), targets[0..rows), dloss[0] and writes
    // dx[0..rows·k); the buffers hold that many elements.
    unsafe {
        kernels::softmax_cross_entropy_bwd_f32(
            exec, config, logits, targets, dloss, &mut dx, rows, k, smoothing,
        )
    }?;
    Ok(dx)
}
