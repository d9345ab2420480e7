//! The optim family on a GPU executor (`kernels/optim.cu`): fused in-place updates for SGD, Adam
//! and ASGD, and gradient clipping by the global norm. Each step mirrors the CPU optimizer in
//! `optim` (PyTorch semantics) for one parameter buffer, on the same state; these functions check
//! lengths and launch, and the caller keeps the state (momentum, moments, averages, step counts)
//! as the CPU optimizers do.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};

/// Threads per block: a multiple of 32 (the norm reduction needs it).
const THREADS: u32 = 256;

/// Elements each thread of the norm's pass 1 sums before the block tree, at least.
const ELEMENTS_PER_THREAD: usize = 8;

/// The most partial sums of squares per gradient buffer.
const MAX_PARTIALS: usize = 256;

/// SGD's hyperparameters, as `optim::sgd::Sgd` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    /// The learning rate.
    pub lr: f32,
    /// The momentum factor `μ` (0 for none).
    pub momentum: f32,
    /// The L2 weight decay `wd`, added to the gradient as `wd · w`.
    pub weight_decay: f32,
}

/// Adam's hyperparameters, as `optim::adam::Adam` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    /// The learning rate.
    pub lr: f32,
    /// The decay rates `(β₁, β₂)` of the first and second moments.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    /// The coupled L2 weight decay, added to the gradient as `wd · w`.
    pub weight_decay: f32,
}

/// The scalars of one ASGD step, as `optim::asgd::Asgd` holds them before the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsgdParams {
    /// The current step size `η`.
    pub eta: f32,
    /// The current averaging weight `μ` (1 restarts the average at the new weights).
    pub mu: f32,
    /// The decay term `λ`.
    pub lambd: f32,
    /// The L2 weight decay `wd`.
    pub weight_decay: f32,
}

/// The common length of a parameter and the buffers that go with it (gradient, state), as `int`.
fn same_lengths(op: &'static str, w: usize, others: &[usize]) -> Result<i32, GpuError> {
    if let Some(bad) = others.iter().find(|&&len| len != w) {
        return Err(invalid(
            op,
            format!("a buffer of {bad} elements goes with a parameter of {w}"),
        ));
    }
    int(op, w)
}

/// One SGD step on parameter `w` with gradient `g`: `d = g + wd·w`; with momentum
/// `b = μ·b + d` (`b = d` when `first`, as PyTorch on its first step) and `d = b`; then
/// `w ← w − lr·d`. `momentum_buffer` is required when `μ ≠ 0` and ignored (with `first`) when
/// `μ = 0`.
pub fn sgd_step(
    exec: &dyn Executor,
    params: &SgdParams,
    w: &mut DeviceBuffer<f32>,
    g: &DeviceBuffer<f32>,
    momentum_buffer: Option<&mut DeviceBuffer<f32>>,
    first: bool,
) -> Result<(), GpuError> {
    let op = "sgd_step";
    let config = LaunchConfig::grid_stride(w.len(), THREADS);
    let SgdParams {
        lr,
        momentum,
        weight_decay,
    } = *params;
    if momentum == 0.0 {
        let n = same_lengths(op, w.len(), &[g.len()])?;
        // SAFETY: the kernel touches w and g at [0..n), and both hold n elements.
        return unsafe { kernels::optim_sgd_fwd_f32(exec, config, w, g, lr, weight_decay, n) };
    }
    let b =
        momentum_buffer.ok_or_else(|| invalid(op, "momentum needs a momentum buffer".into()))?;
    let n = same_lengths(op, w.len(), &[g.len(), b.len()])?;
    // SAFETY: the kernel touches w, g and b at [0..n), and all three hold n elements.
    unsafe {
        kernels::optim_sgd_momentum_fwd_f32(
            exec,
            config,
            w,
            g,
            b,
            lr,
            momentum,
            weight_decay,
            i32::from(first),
            n,
        )
    }
}

/// Adam step number `step` (from 1) on parameter `w` with gradient `g` and moments `m`, `v`
/// (zeros before the first step): `g ← g + wd·w`, `m ← β₁·m + (1−β₁)·g`,
/// `v ← β₂·v + (1−β₂)·g²`, `w ← w − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`, with the bias
/// corrections computed from `step` in f64 as PyTorch does.
pub fn adam_step(
    exec: &dyn Executor,
    params: &AdamParams,
    step: u64,
    w: &mut DeviceBuffer<f32>,
    g: &DeviceBuffer<f32>,
    m: &mut DeviceBuffer<f32>,
    v: &mut DeviceBuffer<f32>,
) -> Result<(), GpuError> {
    let op = "adam_step";
    let n = same_lengths(op, w.len(), &[g.len(), m.len(), v.len()])?;
    let step = i32::try_from(step)
        .ok()
        .filter(|&t| t >= 1)
        .ok_or_else(|| invalid(op, format!("step {step} is not in 1..=i32::MAX")))?;
    let AdamParams {
        lr,
        betas: (beta1, beta2),
        eps,
        weight_decay,
    } = *params;
    let config = LaunchConfig::grid_stride(w.len(), THREADS);
    // SAFETY: the kernel touches w, g, m and v at [0..n), and all four hold n elements.
    unsafe {
        kernels::optim_adam_fwd_f32(
            exec,
            config,
            w,
            g,
            m,
            v,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
            n,
        )
    }
}

/// One ASGD step on parameter `w` with gradient `g` and average `ax`: `g ← g + wd·w`,
/// `w ← w·(1 − λη) − η·g` (the factor rounded from f64, as the CPU does), then `ax ← w` when
/// `μ = 1`, else `ax ← ax + μ·(w − ax)`. The caller updates `η` and `μ` after the step.
pub fn asgd_step(
    exec: &dyn Executor,
    params: &AsgdParams,
    w: &mut DeviceBuffer<f32>,
    g: &DeviceBuffer<f32>,
    ax: &mut DeviceBuffer<f32>,
) -> Result<(), GpuError> {
    let n = same_lengths("asgd_step", w.len(), &[g.len(), ax.len()])?;
    let AsgdParams {
        eta,
        mu,
        lambd,
        weight_decay,
    } = *params;
    let decay = (1.0 - lambd as f64 * eta as f64) as f32;
    let config = LaunchConfig::grid_stride(w.len(), THREADS);
    // SAFETY: the kernel touches w, g and ax at [0..n), and all three hold n elements.
    unsafe { kernels::optim_asgd_fwd_f32(exec, config, w, g, ax, decay, eta, mu, weight_decay, n) }
}

/// The global L2 norm `√(Σ g²)` over every element of every buffer in `grads`, as a 1-element
/// buffer: a partial pass per buffer into one workspace, then one block adds the partials, all in
/// f64 and in an order fixed by the buffers' lengths, so every run gives the same bits.
pub fn grad_norm(
    exec: &dyn Executor,
    grads: &[&DeviceBuffer<f32>],
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "grad_norm";
    if grads.is_empty() {
        return Err(invalid(op, "no gradients".into()));
    }
    let blocks: Vec<usize> = grads
        .iter()
        .map(|g| {
            g.len()
                .div_ceil(THREADS as usize * ELEMENTS_PER_THREAD)
                .clamp(1, MAX_PARTIALS)
        })
        .collect();
    let total: usize = blocks.iter().sum();
    let p = int(op, total)?;
    let mut workspace = exec.alloc(2 * total)?;
    let mut norm = exec.alloc(1)?;
    let mut offset = 0;
    for (g, &b) in grads.iter().zip(&blocks) {
        let n = int(op, g.len())?;
        let config = LaunchConfig::linear(b as u32, THREADS);
        // SAFETY: the kernel reads g[0..n) and writes workspace slots 2·(offset + j) and the next
        // for its b blocks j, all below 2·total, the workspace's length.
        unsafe {
            kernels::optim_grad_norm_partial_fwd_f32(
                exec,
                config,
                g,
                &mut workspace,
                n,
                int(op, offset)?,
            )
        }?;
        offset += b;
    }
    let config = LaunchConfig::linear(1, THREADS);
    // SAFETY: the kernel reads workspace[0..2p) and writes norm[0]; the buffers hold 2p and 1
    // elements. It runs after the partial passes, on the same queue.
    unsafe { kernels::optim_grad_norm_final_fwd_f32(exec, config, &workspace, &mut norm, p) }?;
    Ok(norm)
}

fn check_max_norm(op: &'static str, max_norm: f32) -> Result<(), GpuError> {
    if max_norm.is_finite() && max_norm > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            op,
            format!("max_norm must be finite and positive, got {max_norm}"),
        ))
    }
}

/// Scales every buffer in `grads` in place by `coef = max_norm / (norm + 1e−6)` when `coef < 1`,
/// reading `norm` (1 element, from [`grad_norm`]) on the device; leaves them alone otherwise.
pub fn clip_scale(
    exec: &dyn Executor,
    norm: &DeviceBuffer<f32>,
    grads: &mut [DeviceBuffer<f32>],
    max_norm: f32,
) -> Result<(), GpuError> {
    let op = "clip_scale";
    if norm.len() != 1 {
        return Err(invalid(
            op,
            format!("the norm has {} elements, not 1", norm.len()),
        ));
    }
    check_max_norm(op, max_norm)?;
    for g in grads.iter_mut() {
        let n = int(op, g.len())?;
        let config = LaunchConfig::grid_stride(g.len(), THREADS);
        // SAFETY: the kernel reads norm[0] and touches g[0..n); the buffers hold 1 and n elements.
        unsafe { kernels::optim_clip_scale_fwd_f32(exec, config, norm, g, max_norm, n) }?;
    }
    Ok(())
}

/// Gradient clipping as PyTorch's `clip_grad_norm_`, on the device: the global norm
/// ([`grad_norm`]), then [`clip_scale`] in place. Returns the norm before clipping, as a
/// 1-element buffer; nothing is copied to the host.
pub fn clip_grad_norm(
    exec: &dyn Executor,
    grads: &mut [DeviceBuffer<f32>],
    max_norm: f32,
) -> Result<DeviceBuffer<f32>, GpuError> {
    check_max_norm("clip_grad_norm", max_norm)?;
    let norm = grad_norm(exec, &grads.iter().collect::<Vec<_>>())?;
    clip_scale(exec, &norm, grads, max_norm)?;
    Ok(norm)
}
