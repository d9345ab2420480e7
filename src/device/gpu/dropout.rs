//! The dropout family on a GPU executor (`kernels/dropout.cu`): Philox masks and their
//! broadcast application, shared by CUDA and the emulator. Each function mirrors its CPU reference
//! in `device::cpu::dropout` (same arguments, same bits: the mask kernel runs the same Philox and
//! the same conversion to a uniform as `crate::rng::uniform_at`), checks its arguments, allocates
//! its output and launches.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, invalid};

/// Threads per block: enough to hide memory latency, small enough that several blocks share an SM.
const THREADS: u32 = 256;

/// Mask elements drawn by one Philox call, and so by one step of a mask thread.
const WORDS_PER_DRAW: usize = 4;

/// `n` as the kernels' `int`, refusing zero and what does not fit.
fn int(op: &'static str, what: &str, n: usize) -> Result<i32, GpuError> {
    match i32::try_from(n) {
        Ok(0) => Err(invalid(op, format!("{what} is 0: it must be at least 1"))),
        Ok(n) => Ok(n),
        Err(_) => Err(invalid(
            op,
            format!("{what} is {n}, more than a kernel indexes"),
        )),
    }
}

/// Inverted-dropout multipliers: element i is 1/(1-p) when uniform_at(seed, i) >= p, else 0.
pub fn mask(
    exec: &dyn Executor,
    n: usize,
    p: f32,
    seed: u64,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let len = int("mask", "the mask length", n)?;
    let mut mask = exec.alloc(n)?;
    let config = LaunchConfig::grid_stride(n.div_ceil(WORDS_PER_DRAW), THREADS);
    // SAFETY: the kernel writes mask[0..n) (the last draw's words past n are skipped), and mask
    // holds n elements.
    unsafe { kernels::dropout_mask_fwd_f32(exec, config, &mut mask, len, p, seed) }?;
    Ok(mask)
}

/// y[i] = x[i] * mask[(i / inner) % mask.len()] (the CPU apply_mask's broadcast).
pub fn apply_mask(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    mask: &DeviceBuffer<f32>,
    inner: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "apply_mask";
    let n = int(op, "the length of x", x.len())?;
    let m = int(op, "the mask length", mask.len())?;
    let inner = int(op, "inner", inner)?;
    let mut y = exec.alloc(x.len())?;
    let config = LaunchConfig::grid_stride(x.len(), THREADS);
    // SAFETY: the kernel reads x[0..n) and mask[0..m) (indices are taken mod m) and writes
    // y[0..n); the buffers hold n, m and n elements.
    unsafe { kernels::dropout_apply_mask_fwd_f32(exec, config, x, mask, &mut y, n, m, inner) }?;
    Ok(y)
}
