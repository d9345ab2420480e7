//! The elementwise family on a GPU executor (`kernels/elementwise.cu`): grid sizes, workspaces
//! and launch order, shared by CUDA and the emulator. Each function mirrors its CPU reference in
//! `device::cpu::elementwise` (same arguments, same result), checks lengths, allocates its output
//! and launches.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};

/// Threads per block: a multiple of 32 (the block reductions need it), small enough that several
/// blocks share an SM.
const THREADS: u32 = 256;

/// Elements each thread of the weight-gradient reduction sums before the block tree, at least.
const ELEMENTS_PER_THREAD: usize = 8;

/// The most partial sums per weight in the weight-gradient reduction.
const MAX_PARTIALS: usize = 256;

/// A `const float* x, float* y, int n` kernel.
type MapKernel = unsafe fn(
    &dyn Executor,
    LaunchConfig,
    &DeviceBuffer<f32>,
    &mut DeviceBuffer<f32>,
    i32,
) -> Result<(), GpuError>;

/// A `const float* a, const float* b, float* y, int n` kernel.
type ZipKernel = unsafe fn(
    &dyn Executor,
    LaunchConfig,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &mut DeviceBuffer<f32>,
    i32,
) -> Result<(), GpuError>;

fn same_len(
    op: &'static str,
    a: &DeviceBuffer<f32>,
    b: &DeviceBuffer<f32>,
) -> Result<(), GpuError> {
    if a.len() == b.len() {
        Ok(())
    } else {
        Err(invalid(
            op,
            format!("lengths {} and {} differ", a.len(), b.len()),
        ))
    }
}

/// `y[i] = f(x[i])` through a map kernel.
fn map(
    exec: &dyn Executor,
    op: &'static str,
    kernel: MapKernel,
    x: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let n = int(op, x.len())?;
    let mut y = exec.alloc(x.len())?;
    // SAFETY: map kernels touch x[0..n) and y[0..n), and both hold n elements.
    unsafe {
        kernel(
            exec,
            LaunchConfig::grid_stride(x.len(), THREADS),
            x,
            &mut y,
            n,
        )
    }?;
    Ok(y)
}

/// `y[i] = f(a[i], b[i])` through a zip kernel.
fn zip(
    exec: &dyn Executor,
    op: &'static str,
    kernel: ZipKernel,
    a: &DeviceBuffer<f32>,
    b: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    same_len(op, a, b)?;
    let n = int(op, a.len())?;
    let mut y = exec.alloc(a.len())?;
    // SAFETY: zip kernels touch a, b and y at [0..n), and all three hold n elements.
    unsafe {
        kernel(
            exec,
            LaunchConfig::grid_stride(a.len(), THREADS),
            a,
            b,
            &mut y,
            n,
        )
    }?;
    Ok(y)
}

/// `max(x, 0)`.
pub fn relu(exec: &dyn Executor, x: &DeviceBuffer<f32>) -> Result<DeviceBuffer<f32>, GpuError> {
    map(exec, "relu", kernels::elementwise_relu_fwd_f32, x)
}

/// `dy · [x > 0]`.
pub fn relu_backward(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    zip(
        exec,
        "relu_backward",
        kernels::elementwise_relu_bwd_f32,
        x,
        dy,
    )
}

/// `tanh(x)`.
pub fn tanh(exec: &dyn Executor, x: &DeviceBuffer<f32>) -> Result<DeviceBuffer<f32>, GpuError> {
    map(exec, "tanh", kernels::elementwise_tanh_fwd_f32, x)
}

/// `dy · (1 − y²)` where `y = tanh(x)`.
pub fn tanh_backward(
    exec: &dyn Executor,
    y: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    zip(
        exec,
        "tanh_backward",
        kernels::elementwise_tanh_bwd_f32,
        y,
        dy,
    )
}

/// `1 / (1 + e^(−x))`, without overflow for large |x|.
pub fn sigmoid(exec: &dyn Executor, x: &DeviceBuffer<f32>) -> Result<DeviceBuffer<f32>, GpuError> {
    map(exec, "sigmoid", kernels::elementwise_sigmoid_fwd_f32, x)
}

/// `dy · y · (1 − y)` where `y = sigmoid(x)`.
pub fn sigmoid_backward(
    exec: &dyn Executor,
    y: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    zip(
        exec,
        "sigmoid_backward",
        kernels::elementwise_sigmoid_bwd_f32,
        y,
        dy,
    )
}

/// `a + b`.
pub fn add(
    exec: &dyn Executor,
    a: &DeviceBuffer<f32>,
    b: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    zip(exec, "add", kernels::elementwise_add_fwd_f32, a, b)
}

/// `a − b`.
pub fn sub(
    exec: &dyn Executor,
    a: &DeviceBuffer<f32>,
    b: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    zip(exec, "sub", kernels::elementwise_sub_fwd_f32, a, b)
}

/// `a ⊙ b`.
pub fn mul(
    exec: &dyn Executor,
    a: &DeviceBuffer<f32>,
    b: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    zip(exec, "mul", kernels::elementwise_mul_fwd_f32, a, b)
}

/// `s · x`.
pub fn scale(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    s: f32,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let n = int("scale", x.len())?;
    let mut y = exec.alloc(x.len())?;
    let config = LaunchConfig::grid_stride(x.len(), THREADS);
    // SAFETY: the kernel touches x[0..n) and y[0..n), and both hold n elements.
    unsafe { kernels::elementwise_scale_fwd_f32(exec, config, x, &mut y, s, n) }?;
    Ok(y)
}

/// `y = a·x + b·z` (equal lengths), each product rounded before the sum, as the CPU's
/// `device::cpu::elementwise::lincomb`.
pub fn lincomb(
    exec: &dyn Executor,
    a: f32,
    x: &DeviceBuffer<f32>,
    b: f32,
    z: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    same_len("lincomb", x, z)?;
    let n = int("lincomb", x.len())?;
    let mut y = exec.alloc(x.len())?;
    let config = LaunchConfig::grid_stride(x.len(), THREADS);
    // SAFETY: the kernel touches x, z and y at [0..n), and all three hold n elements.
    unsafe { kernels::elementwise_lincomb_fwd_f32(exec, config, x, z, &mut y, a, b, n) }?;
    Ok(y)
}

/// The number of candidates `k` and their length `n` of a `[k, n]` buffer with `k` weights.
fn candidates(op: &'static str, xs_len: usize, k: usize) -> Result<(i32, i32, usize), GpuError> {
    if k == 0 || !xs_len.is_multiple_of(k) || xs_len == 0 {
        return Err(invalid(
            op,
            format!("{xs_len} elements do not split into {k} candidates of equal length"),
        ));
    }
    let n = xs_len / k;
    int(op, xs_len)?;
    Ok((int(op, k)?, int(op, n)?, n))
}

/// The DARTS mixed op `y = Σₖ weights[k] · xs[k, :]`, summed in `k` order, where `xs` holds the
/// `k = weights.len()` candidate outputs one after another (`[k, n]`).
pub fn weighted_sum(
    exec: &dyn Executor,
    xs: &DeviceBuffer<f32>,
    weights: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let (k, n, len) = candidates("weighted_sum", xs.len(), weights.len())?;
    let mut y = exec.alloc(len)?;
    let config = LaunchConfig::grid_stride(len, THREADS);
    // SAFETY: the kernel reads xs[0..k·n), weights[0..k) and writes y[0..n); the buffers hold
    // k·n, k and n elements.
    unsafe { kernels::elementwise_weighted_sum_fwd_f32(exec, config, xs, weights, &mut y, k, n) }?;
    Ok(y)
}

/// The candidates' gradients of the mixed op, `dxs[k, :] = weights[k] · dy`, as one `[k, n]`
/// buffer.
pub fn weighted_sum_backward_inputs(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    weights: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "weighted_sum_backward_inputs";
    let total = dy
        .len()
        .checked_mul(weights.len())
        .ok_or_else(|| invalid(op, "the gradient would not fit in memory".into()))?;
    let (k, n, len) = candidates(op, total, weights.len())?;
    let mut dxs = exec.alloc(total)?;
    let config = LaunchConfig::grid_stride(len, THREADS);
    // SAFETY: the kernel reads dy[0..n), weights[0..k) and writes dxs[0..k·n); the buffers hold
    // n, k and k·n elements.
    unsafe {
        kernels::elementwise_weighted_sum_input_bwd_f32(exec, config, dy, weights, &mut dxs, k, n)
    }?;
    Ok(dxs)
}

/// The mixing weights' gradient of the mixed op, `dw[k] = Σᵢ dy[i] · xs[k, i]`, summed in f64
/// by a deterministic two-pass reduction (see `kernels/elementwise.cu`): the result has the same
/// bits on every run and every GPU.
pub fn weighted_sum_backward_weights(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    xs: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "weighted_sum_backward_weights";
    if dy.is_empty() || !xs.len().is_multiple_of(dy.len()) {
        return Err(invalid(
            op,
            format!(
                "{} candidate elements are not a multiple of the {} of dy",
                xs.len(),
                dy.len()
            ),
        ));
    }
    let (k, n, len) = candidates(op, xs.len(), xs.len() / dy.len())?;
    // P depends on n alone, never on the device, so the order of additions does too.
    let partials = len
        .div_ceil(THREADS as usize * ELEMENTS_PER_THREAD)
        .min(MAX_PARTIALS);
    let p = int(op, partials)?;
    let mut workspace = exec.alloc(2 * partials * k as usize)?;
    let mut dw = exec.alloc(k as usize)?;
    let pass1 = LaunchConfig {
        grid: [p as u32, k as u32, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
    };
    let pass2 = LaunchConfig::linear(k as u32, THREADS);
    // SAFETY: pass 1 reads dy[0..n) and xs[0..k·n) and writes workspace[0..2·p·k) (block (b, j)
    // writes slots 2(j·p + b) and the next); pass 2 reads those 2·p·k values and writes dw[0..k).
    // Each buffer holds that many elements. Both passes run on one queue, in order.
    unsafe {
        kernels::elementwise_weighted_sum_weight_partial_bwd_f32(
            exec,
            pass1,
            dy,
            xs,
            &mut workspace,
            n,
        )?;
        kernels::elementwise_weighted_sum_weight_final_bwd_f32(
            exec, pass2, &workspace, &mut dw, p, k, 0, k,
        )?;
    }
    Ok(dw)
}
