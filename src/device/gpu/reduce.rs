//! The reduce family on a GPU executor (`kernels/reduce.cu`): the sum and mean of a whole buffer
//! (a deterministic two-pass reduction in f64), their backward, and column sums. Each function
//! mirrors its CPU reference (`device::cpu::sum_f64` as the sum/mean op uses it, and
//! `device::cpu::reduce::column_sums`), checks lengths, allocates its output and launches.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};

/// Threads per block: a multiple of 32 (the block reductions need it).
const THREADS: u32 = 256;

/// Elements each thread of pass 1 sums before the block tree, at least.
const ELEMENTS_PER_THREAD: usize = 8;

/// The most partial sums pass 1 writes.
const MAX_PARTIALS: usize = 256;

/// `(Σ x) / divisor` as a 1-element buffer: pass 1 writes P partial sums (P depends on the length
/// alone), pass 2 adds them in one block and scales by `1 / divisor`.
fn scaled_sum(
    exec: &dyn Executor,
    op: &'static str,
    x: &DeviceBuffer<f32>,
    divisor: i32,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let n = int(op, x.len())?;
    let partials = x
        .len()
        .div_ceil(THREADS as usize * ELEMENTS_PER_THREAD)
        .clamp(1, MAX_PARTIALS);
    let p = int(op, partials)?;
    let mut workspace = exec.alloc(2 * partials)?;
    let mut y = exec.alloc(1)?;
    let pass1 = LaunchConfig::linear(partials as u32, THREADS);
    let pass2 = LaunchConfig::linear(1, THREADS);
    // SAFETY: pass 1 reads x[0..n) and writes workspace[0..2p) (block b writes slots 2b and
    // 2b + 1, and there are p blocks); pass 2 reads those 2p values and writes y[0]. The buffers
    // hold that many elements, and both passes run on one queue, in order.
    unsafe {
        kernels::reduce_sum_partial_fwd_f32(exec, pass1, x, &mut workspace, n)?;
        kernels::reduce_sum_final_fwd_f32(exec, pass2, &workspace, &mut y, p, divisor)?;
    }
    Ok(y)
}

/// The sum of all elements, as a 1-element buffer (accumulated in f64, in an order fixed by the
/// length alone, so every run gives the same bits).
pub fn sum(exec: &dyn Executor, x: &DeviceBuffer<f32>) -> Result<DeviceBuffer<f32>, GpuError> {
    scaled_sum(exec, "sum", x, 1)
}

/// The mean of all elements, `(Σ x) · (1/n)`, as a 1-element buffer.
pub fn mean(exec: &dyn Executor, x: &DeviceBuffer<f32>) -> Result<DeviceBuffer<f32>, GpuError> {
    let n = int("mean", x.len())?;
    scaled_sum(exec, "mean", x, n)
}

/// `len` copies of `dy[0] · (1 / divisor)`.
fn fill_scaled(
    exec: &dyn Executor,
    op: &'static str,
    dy: &DeviceBuffer<f32>,
    len: usize,
    divisor: i32,
) -> Result<DeviceBuffer<f32>, GpuError> {
    if dy.len() != 1 {
        return Err(invalid(op, format!("dy has {} elements, not 1", dy.len())));
    }
    let n = int(op, len)?;
    let mut dx = exec.alloc(len)?;
    let config = LaunchConfig::grid_stride(len, THREADS);
    // SAFETY: the kernel reads dy[0] and writes dx[0..n); dy holds 1 element and dx n.
    unsafe { kernels::reduce_sum_bwd_f32(exec, config, dy, &mut dx, divisor, n) }?;
    Ok(dx)
}

/// The sum's backward: `len` copies of the 1-element gradient `dy`.
pub fn sum_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    len: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    fill_scaled(exec, "sum_backward", dy, len, 1)
}

/// The mean's backward: `len` copies of `dy / len` (computed as `dy · (1/len)` in f64).
pub fn mean_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    len: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "mean_backward";
    fill_scaled(exec, op, dy, len, int(op, len)?)
}

/// `out[j] = Σᵢ x[i, j]` for the row-major `rows × cols` matrix `x` (the bias gradient of a linear
/// layer), in f64 with `i` in order, one thread per column: the CPU's exact order, so its bits.
pub fn column_sums(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "column_sums";
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(x.len()) {
        return Err(invalid(
            op,
            format!("{} elements are not a {rows} × {cols} matrix", x.len()),
        ));
    }
    int(op, x.len())?;
    let (r, c) = (int(op, rows)?, int(op, cols)?);
    let mut out = exec.alloc(cols)?;
    let config = LaunchConfig::grid_stride(cols, THREADS);
    // SAFETY: the kernel reads x[0..rows·cols) and writes out[0..cols); x holds rows·cols
    // elements and out cols.
    unsafe { kernels::reduce_column_sums_fwd_f32(exec, config, x, &mut out, r, c) }?;
    Ok(out)
}
