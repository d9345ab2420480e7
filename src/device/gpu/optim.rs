//! The optim family on a GPU executor (`kernels/optim.cu`): fused in-place updates for SGD, Adam
//! and ASGD, and gradient clipping by the global norm. Each step mirrors the CPU optimizer in
//! `optim` (PyTorch semantics) on the same state: SGD, the norm and the clipping for every
//! parameter at once (multi-tensor launches, [`super::multi`]), Adam and ASGD for one parameter
//! buffer. These functions check lengths and launch, and the caller keeps the state (momentum,
//! moments, averages, step counts) as the CPU optimizers do.

use super::kernels;
use super::multi::{Entry, Table};
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};

/// Threads per block: a multiple of 32 (the norm reduction needs it).
const THREADS: u32 = 256;

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

/// One SGD step on every parameter `w[i]` with gradient `g[i]`, in one launch: `d = g + wd·w`;
/// with momentum `b = μ·b + d` (`b = d` when `first`, as PyTorch on its first step) and `d = b`;
/// then `w ← w − lr·d`. `momentum_buffers` (one per parameter) are required when `μ ≠ 0` and
/// ignored (with `first`) when `μ = 0`.
pub fn sgd_step(
    exec: &dyn Executor,
    params: &SgdParams,
    w: &mut [&mut DeviceBuffer<f32>],
    g: &[&DeviceBuffer<f32>],
    momentum_buffers: Option<&mut [&mut DeviceBuffer<f32>]>,
    first: bool,
) -> Result<(), GpuError> {
    let op = "sgd_step";
    let SgdParams {
        lr,
        momentum,
        weight_decay,
    } = *params;
    let b: Option<&[&mut DeviceBuffer<f32>]> = match momentum_buffers {
        Some(b) if momentum != 0.0 => Some(b),
        None if momentum != 0.0 => {
            return Err(invalid(op, "momentum needs momentum buffers".into()));
        }
        _ => None,
    };
    if g.len() != w.len() || b.is_some_and(|b| b.len() != w.len()) {
        return Err(invalid(
            op,
            format!(
                "{} parameters, {} gradients and {} momentum buffers",
                w.len(),
                g.len(),
                b.map_or(0, <[_]>::len)
            ),
        ));
    }
    let mut entries = Vec::with_capacity(w.len());
    for (i, (w, g)) in w.iter().zip(g).enumerate() {
        let b = b.map(|b| &*b[i]);
        same_lengths(
            op,
            w.len(),
            &[g.len(), b.map_or(w.len(), DeviceBuffer::len)],
        )?;
        entries.push(Entry::new([Some(&**w), Some(*g), b], w.len()));
    }
    let table = Table::new::<f32>(exec, op, &entries)?;
    // SAFETY: block k touches elements [chunk·CHUNK, min(…, n)) of its tensor's w, g and b, and
    // `Table::new` checked that each buffer holds n elements. The written buffers (w, b) are
    // borrowed mutably, so no two entries share one and nothing else reads them meanwhile.
    unsafe {
        kernels::optim_sgd_fwd_f32(
            exec,
            table.config(),
            &table.words,
            table.tensors,
            table.chunk_len(),
            lr,
            momentum,
            weight_decay,
            i32::from(first),
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
/// buffer: one multi-tensor pass of partial sums, then one block adds the partials, all in f64 and
/// in an order fixed by the buffers' lengths, so every run gives the same bits.
pub fn grad_norm(
    exec: &dyn Executor,
    grads: &[&DeviceBuffer<f32>],
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "grad_norm";
    let entries: Vec<Entry<'_>> = grads
        .iter()
        .map(|g| Entry::new([Some(*g), None, None], g.len()))
        .collect();
    let table = Table::new::<f32>(exec, op, &entries)?;
    let p = int(op, table.blocks)?;
    let mut workspace = exec.alloc(2 * table.blocks)?;
    let mut norm = exec.alloc(1)?;
    // SAFETY: pass 1's block k reads its chunk of its gradient (each holds its length: checked by
    // `Table::new`) and writes workspace[2k] and [2k + 1], below 2p; pass 2 reads workspace[0..2p)
    // and writes norm[0]. Both run on one queue, in order.
    unsafe {
        kernels::optim_grad_norm_partial_fwd_f32(
            exec,
            table.config(),
            &table.words,
            &mut workspace,
            table.tensors,
            table.chunk_len(),
        )?;
        kernels::optim_grad_norm_final_fwd_f32(
            exec,
            LaunchConfig::linear(1, THREADS),
            &workspace,
            &mut norm,
            p,
        )
    }?;
    Ok(norm)
}

/// `x · factor` for every buffer in `xs`, each product rounded once (as the CPU's
/// `Tensor::scaled`), in one launch: the clipping of `clip_grad_norm`.
pub fn scale_all(
    exec: &dyn Executor,
    xs: &[&DeviceBuffer<f32>],
    factor: f32,
) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
    let op = "scale_all";
    let ys = xs
        .iter()
        .map(|x| exec.alloc(x.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let entries: Vec<Entry<'_>> = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| Entry::new([Some(*x), Some(y), None], x.len()))
        .collect();
    let table = Table::new::<f32>(exec, op, &entries)?;
    // SAFETY: block k reads its chunk of its x and writes the same chunk of its y, each holding
    // the tensor's length (checked by `Table::new`); every y is a fresh allocation of its own.
    unsafe {
        kernels::optim_scale_fwd_f32(
            exec,
            table.config(),
            &table.words,
            table.tensors,
            table.chunk_len(),
            factor,
        )
    }?;
    Ok(ys)
}
