//! The batch-norm family on a GPU executor (`kernels/batchnorm.cu`), on data laid out as
//! `[N, C, HW]`: the batch statistics (with the affine coefficients and the running-statistics
//! update in the same launches), the eval-mode coefficients, the per-channel affine map, and the
//! gradient sums and training-mode input gradient of the backward; each forward can apply a ReLU
//! to its output, and each backward then masks its gradient with that output. Also a DARTS mixed
//! op over batch-normalised candidates: its forward normalises and sums every candidate in two
//! launches (one in eval mode) without writing the normalised outputs ([`mixed_sum_forward`]), and
//! its backward
//! recomputes them from the candidates' inputs ([`mixed_input_backward`],
//! [`mixed_weight_backward`]). Each function mirrors a CPU reference in `device::cpu::batchnorm`,
//! or the per-channel arithmetic of `ops::batchnorm` (same arguments, same result), checks
//! lengths, allocates its outputs and launches.
//!
//! The per-channel reductions run in two passes over fixed trees, with a number of partial sums
//! per channel that depends only on the channel's size: the statistics and the gradient sums have
//! the same bits on every run and every GPU.

use super::kernels;
use super::mixed::{self, MAX_CANDIDATES, Normalization, WeightRun, slots};
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};
use crate::device::cpu::batchnorm::{Activation, ChannelLayout};

/// Threads per block of the elementwise kernels, and the most of the first reduction pass: a
/// multiple of 32 (the block reductions need it).
const THREADS: u32 = 256;

/// Threads per block of the second reduction pass, which adds at most [`MAX_PARTIALS`] values
/// per channel.
const FINAL_THREADS: u32 = 32;

/// Elements each thread of the first pass sums before the block tree, at least.
const ELEMENTS_PER_THREAD: usize = 8;

/// The most partial sums per channel.
const MAX_PARTIALS: usize = 256;

/// The most blocks along a grid's y (the first pass puts channels there; its kernels loop over
/// the channels beyond), and along x for the per-channel second pass.
const MAX_CHANNEL_BLOCKS: usize = 65535;

/// The per-channel normalisation `x̂ = (x − mean[c]) · inv_std[c]`, borrowed from wherever the
/// statistics live (a [`TrainForward`] in training, the running mean and [`Coefficients`] in eval).
#[derive(Debug, Clone, Copy)]
pub struct Normalizer<'a> {
    /// The mean subtracted, per channel.
    pub mean: &'a DeviceBuffer<f32>,
    /// The reciprocal standard deviation multiplied, per channel.
    pub inv_std: &'a DeviceBuffer<f32>,
}

/// The affine parameters `(γ, β)`, `[C]` each, or none (γ = 1, β = 0).
pub type Affine<'a> = Option<(&'a DeviceBuffer<f32>, &'a DeviceBuffer<f32>)>;

/// The per-channel numbers a forward normalises with (`[C]` each), `y = x · scale + shift`.
#[derive(Debug)]
pub struct Coefficients {
    /// `1 / √(var + eps)`: of the batch's biased variance in training, of the running variance
    /// in eval.
    pub inv_std: DeviceBuffer<f32>,
    /// `γ · inv_std`; also the factor `k` of the input gradient.
    pub scale: DeviceBuffer<f32>,
    /// `β − mean · scale`.
    pub shift: DeviceBuffer<f32>,
}

/// Running statistics (`[C]` each) that a training-mode forward folds its batch statistics into,
/// as PyTorch does: `new = (1 − momentum) · running + momentum · batch`.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    /// The running mean.
    pub mean: &'a DeviceBuffer<f32>,
    /// The running (unbiased) variance.
    pub var: &'a DeviceBuffer<f32>,
    /// The weight of the batch, in `[0, 1]`.
    pub momentum: f32,
}

/// What a training-mode forward computes: the output, and per channel (`[C]` each) what the
/// backward and the running statistics need.
#[derive(Debug)]
pub struct TrainForward {
    /// The normalised output, laid out as the input.
    pub y: DeviceBuffer<f32>,
    /// The batch mean.
    pub mean: DeviceBuffer<f32>,
    /// `1 / √(var + eps)` of the batch's biased variance.
    pub inv_std: DeviceBuffer<f32>,
    /// `γ · inv_std`: the factor `k` of the input gradient.
    pub scale: DeviceBuffer<f32>,
    /// The new running `(mean, var)`, when running statistics were given: the variance blended
    /// with the unbiased batch variance `Σ (x − mean)² / (M − 1)`.
    pub running: Option<(DeviceBuffer<f32>, DeviceBuffer<f32>)>,
}

impl TrainForward {
    /// The normalisation of this forward.
    pub fn normalizer(&self) -> Normalizer<'_> {
        Normalizer {
            mean: &self.mean,
            inv_std: &self.inv_std,
        }
    }
}

/// The gradient at a batch norm's output: `dy`, and the output itself where the forward applied
/// a ReLU, so that the kernels use `dy · [out > 0]` (the ReLU's backward) in place of `dy`.
#[derive(Debug, Clone, Copy)]
pub struct OutputGrad<'a> {
    /// The gradient of the loss with respect to the op's output.
    pub dy: &'a DeviceBuffer<f32>,
    /// The op's output, when it is `relu(y)`; `None` when it is `y`.
    pub relu_out: Option<&'a DeviceBuffer<f32>>,
}

/// The kernels' `relu` flag for `act`.
fn relu_flag(act: Activation) -> i32 {
    i32::from(act == Activation::Relu)
}

/// The per-channel gradient sums of a backward (`[C]` each).
#[derive(Debug)]
pub struct GradSums {
    /// `Σ dy`: the gradient of β.
    pub sum_dy: DeviceBuffer<f32>,
    /// `Σ dy · x̂`: the gradient of γ.
    pub sum_dy_xhat: DeviceBuffer<f32>,
}

/// A checked layout as the kernels take it.
#[derive(Debug)]
struct Dims {
    n: i32,
    c: i32,
    hw: i32,
    /// Elements in all, `N · C · HW`.
    count: i32,
    /// Elements per channel, `M = N · HW`.
    m: usize,
}

impl Dims {
    /// Checks that `l` has no zero size, that its elements fit the kernels' `int`, and that `x`
    /// (named `what`) holds them all.
    fn new(
        op: &'static str,
        l: &ChannelLayout,
        what: &str,
        x: &DeviceBuffer<f32>,
    ) -> Result<Dims, GpuError> {
        let total = l
            .n
            .checked_mul(l.c)
            .and_then(|nc| nc.checked_mul(l.hw))
            .filter(|&t| t > 0)
            .ok_or_else(|| invalid(op, format!("layout {l:?} holds no elements, or too many")))?;
        if x.len() != total {
            return Err(invalid(
                op,
                format!(
                    "{what} holds {} elements, the layout {l:?} {total}",
                    x.len()
                ),
            ));
        }
        Ok(Dims {
            n: int(op, l.n)?,
            c: int(op, l.c)?,
            hw: int(op, l.hw)?,
            count: int(op, total)?,
            m: l.per_channel(),
        })
    }

    /// The partial sums per channel of a reduction: about [`ELEMENTS_PER_THREAD`] elements per
    /// thread, from the channel size alone (so the order of additions never depends on the GPU).
    fn partials(&self) -> usize {
        self.m
            .div_ceil(THREADS as usize * ELEMENTS_PER_THREAD)
            .clamp(1, MAX_PARTIALS)
    }

    /// The first pass's grid: partials along x, channels along y; blocks of [`THREADS`], or of
    /// fewer whole warps for a channel too small to give every thread
    /// [`ELEMENTS_PER_THREAD`] elements. Again from the channel size alone.
    fn pass1(&self) -> LaunchConfig {
        let threads = self
            .m
            .div_ceil(ELEMENTS_PER_THREAD)
            .next_multiple_of(32)
            .min(THREADS as usize) as u32;
        LaunchConfig {
            grid: [
                self.partials() as u32,
                (self.c as usize).min(MAX_CHANNEL_BLOCKS) as u32,
                1,
            ],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }

    /// The second pass's grid: one block per channel.
    fn pass2(&self) -> LaunchConfig {
        LaunchConfig::linear(
            (self.c as usize).min(MAX_CHANNEL_BLOCKS) as u32,
            FINAL_THREADS,
        )
    }

    /// The workspace of the two passes: two doubles (four 32-bit words) per partial.
    fn workspace(&self, exec: &dyn Executor) -> Result<DeviceBuffer<u32>, GpuError> {
        exec.alloc(4 * self.partials() * self.c as usize)
    }

    /// The elementwise kernels' grid.
    fn elementwise(&self) -> LaunchConfig {
        LaunchConfig::grid_stride(self.count as usize, THREADS)
    }
}

/// Checks that each per-channel buffer in `buffers` holds `c` values.
fn check_channels(
    op: &'static str,
    c: usize,
    buffers: &[(&str, &DeviceBuffer<f32>)],
) -> Result<(), GpuError> {
    match buffers.iter().find(|(_, b)| b.len() != c) {
        Some((what, b)) => Err(invalid(
            op,
            format!("{what} holds {} values, one per channel is {c}", b.len()),
        )),
        None => Ok(()),
    }
}

/// Checks that `eps` is finite and not negative.
fn check_eps(op: &'static str, eps: f32) -> Result<(), GpuError> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(invalid(
            op,
            format!("eps must be finite and non-negative, got {eps}"),
        ))
    }
}

/// Checks the affine parameters, if any, against `c` channels.
fn check_affine(op: &'static str, c: usize, affine: Affine<'_>) -> Result<(), GpuError> {
    match affine {
        Some((gamma, beta)) => check_channels(op, c, &[("gamma", gamma), ("beta", beta)]),
        None => Ok(()),
    }
}

/// The training-mode forward of `x`, as `ops::batchnorm::batch_norm_train` computes it from the
/// CPU's `channel_moments`: the batch mean, `1 / √(biased variance + eps)` and the affine
/// coefficients, the output `y = x · scale + shift` (then `act`), and with `running` the new
/// running statistics. The sums run in f64 in one pass over `x`, shifted by the channel's first value so
/// that a large mean does not cancel (see `kernels/batchnorm.cu`), and are rounded once to f32; all
/// of it in two launches. Each channel needs at least two values.
pub fn train_forward(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    l: &ChannelLayout,
    eps: f32,
    affine: Affine<'_>,
    running: Option<Running<'_>>,
    act: Activation,
) -> Result<TrainForward, GpuError> {
    let op = "train_forward";
    let d = Dims::new(op, l, "x", x)?;
    check_train(op, &d, eps, running)?;
    check_affine(op, l.c, affine)?;
    let workspace = moments(exec, &d, &[x])?;
    let pass2 = Pass2 {
        eps,
        affine,
        running,
        act,
    };
    normalize(exec, &d, x, &workspace, pass2)
}

/// Checks what a training-mode forward needs besides its input's layout: `eps`, more than one
/// value per channel, and any running statistics (one per channel, momentum in `[0, 1]`).
fn check_train(
    op: &'static str,
    d: &Dims,
    eps: f32,
    running: Option<Running<'_>>,
) -> Result<(), GpuError> {
    check_eps(op, eps)?;
    if d.m < 2 {
        return Err(invalid(
            op,
            format!("training needs more than 1 value per channel, got {d:?}"),
        ));
    }
    if let Some(r) = running {
        let c = d.c as usize;
        check_channels(op, c, &[("running mean", r.mean), ("running var", r.var)])?;
        if !(0.0..=1.0).contains(&r.momentum) {
            return Err(invalid(
                op,
                format!("momentum must lie in [0, 1], got {}", r.momentum),
            ));
        }
    }
    Ok(())
}

/// Pass 1 of the statistics of `xs` (1 to [`MAX_CANDIDATES`], laid out as `d`, checked), in one
/// launch: the workspace of per-block partial sums, input `z`'s from word `4·z·P·C` on.
fn moments(
    exec: &dyn Executor,
    d: &Dims,
    xs: &[&DeviceBuffer<f32>],
) -> Result<DeviceBuffer<u32>, GpuError> {
    let mut workspace = exec.alloc(4 * d.partials() * d.c as usize * xs.len())?;
    let mut config = d.pass1();
    config.grid[2] = xs.len() as u32;
    let [x0, x1, x2, x3, x4, x5, x6, x7] = slots(xs);
    // SAFETY: block (b, ch, z) reads x_z at [0..N·C·HW) (z < xs.len(); each checked, and the
    // slots past it alias x0 and are never read) and writes the 2 doubles at 2((z·C + ch)·P + b)
    // of the workspace, which holds the 4·P·C·len words that makes, P being the grid's x.
    unsafe {
        kernels::batchnorm_moments_partial_fwd_f32(
            exec,
            config,
            x0,
            x1,
            x2,
            x3,
            x4,
            x5,
            x6,
            x7,
            &mut workspace,
            d.n,
            d.c,
            d.hw,
        )?;
    }
    Ok(workspace)
}

/// What pass 2 of a training forward applies besides the statistics.
#[derive(Clone, Copy)]
struct Pass2<'a> {
    eps: f32,
    affine: Affine<'a>,
    running: Option<Running<'a>>,
    act: Activation,
}

/// Pass 2 of a training forward of `x` (laid out as `d`, checked with `pass2`'s arguments), from
/// the partials of pass 1 in `workspace`: the statistics, the output and the new running
/// statistics, in one launch.
fn normalize(
    exec: &dyn Executor,
    d: &Dims,
    x: &DeviceBuffer<f32>,
    workspace: &DeviceBuffer<u32>,
    Pass2 {
        eps,
        affine,
        running,
        act,
    }: Pass2<'_>,
) -> Result<TrainForward, GpuError> {
    let c = d.c as usize;
    let mut out = TrainForward {
        y: exec.alloc(x.len())?,
        mean: exec.alloc(c)?,
        inv_std: exec.alloc(c)?,
        scale: exec.alloc(c)?,
        running: match running {
            Some(_) => Some((exec.alloc(c)?, exec.alloc(c)?)),
            None => None,
        },
    };
    let (new_mean, new_var) = match &mut out.running {
        Some((m, v)) => (Some(m), Some(v)),
        None => (None, None),
    };
    let p = int("train_forward", d.partials())?;
    // SAFETY: on pass 1's grid (z = 0), the kernel reads x and writes y at [0..N·C·HW), reads the
    // 4·P·C words of the workspace (pass 1 wrote them) and γ, β and the running
    // statistics where given, and writes mean, inv_std, scale and, where given, the new running
    // statistics at [0..C). Each buffer holds that many elements (checked, or allocated here); it
    // runs after pass 1, on the same queue.
    unsafe {
        kernels::batchnorm_normalize_fwd_f32(
            exec,
            d.pass1(),
            x,
            workspace,
            affine.map(|(gamma, _)| gamma),
            affine.map(|(_, beta)| beta),
            running.map(|r| r.mean),
            running.map(|r| r.var),
            &mut out.y,
            &mut out.mean,
            &mut out.inv_std,
            &mut out.scale,
            new_mean,
            new_var,
            p,
            d.n,
            d.c,
            d.hw,
            eps,
            running.map_or(0.0, |r| r.momentum),
            relu_flag(act),
        )?;
    }
    Ok(out)
}

/// Eval mode's per-channel numbers, from the running statistics (`[C]` each):
/// `inv_std = 1 / √(var + eps)` in f64, and the affine coefficients. One launch.
pub fn eval_coefficients(
    exec: &dyn Executor,
    mean: &DeviceBuffer<f32>,
    var: &DeviceBuffer<f32>,
    eps: f32,
    affine: Affine<'_>,
) -> Result<Coefficients, GpuError> {
    let op = "eval_coefficients";
    check_eps(op, eps)?;
    let c = mean.len();
    check_channels(op, c, &[("var", var)])?;
    check_affine(op, c, affine)?;
    let channels = int(op, c)?;
    let mut out = Coefficients {
        inv_std: exec.alloc(c)?,
        scale: exec.alloc(c)?,
        shift: exec.alloc(c)?,
    };
    let config = LaunchConfig::grid_stride(c, THREADS);
    // SAFETY: the kernel reads mean, var and (where given) γ, β, and writes the three
    // coefficients, all at [0..c); every buffer holds c elements (checked, or allocated here).
    unsafe {
        kernels::batchnorm_coefficients_fwd_f32(
            exec,
            config,
            mean,
            var,
            affine.map(|(gamma, _)| gamma),
            affine.map(|(_, beta)| beta),
            &mut out.inv_std,
            &mut out.scale,
            &mut out.shift,
            channels,
            eps,
        )
    }?;
    Ok(out)
}

/// The per-channel affine map `y = x · scale[c] + shift[c]`, then `act` (the eval-mode
/// normalisation, and with no shift, `None`, and `Identity` the eval-mode input gradient).
pub fn scale_shift(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    l: &ChannelLayout,
    scale: &DeviceBuffer<f32>,
    shift: Option<&DeviceBuffer<f32>>,
    act: Activation,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "scale_shift";
    let d = Dims::new(op, l, "x", x)?;
    check_channels(op, l.c, &[("scale", scale)])?;
    if let Some(shift) = shift {
        check_channels(op, l.c, &[("shift", shift)])?;
    }
    let mut y = exec.alloc(x.len())?;
    // SAFETY: the kernel reads x and writes y at [0..N·C·HW) and reads scale and any shift at
    // [0..C); the buffers hold that many elements (checked, or allocated here).
    unsafe {
        kernels::batchnorm_scale_shift_fwd_f32(
            exec,
            d.elementwise(),
            x,
            scale,
            shift,
            &mut y,
            d.count,
            d.c,
            d.hw,
            relu_flag(act),
        )
    }?;
    Ok(y)
}

/// Pass 1 of the backward's reductions, for `op`: checks `x`, `grad` and `norm` against `l`, and
/// returns the checked layout and the workspace of per-block partial sums of `dy` and `dy · x̂`
/// (`dy` masked where `grad` says so).
fn grad_partials(
    exec: &dyn Executor,
    op: &'static str,
    x: &DeviceBuffer<f32>,
    grad: OutputGrad<'_>,
    l: &ChannelLayout,
    norm: Normalizer<'_>,
) -> Result<(Dims, DeviceBuffer<u32>), GpuError> {
    let d = Dims::new(op, l, "x", x)?;
    Dims::new(op, l, "dy", grad.dy)?;
    if let Some(out) = grad.relu_out {
        Dims::new(op, l, "the ReLU's output", out)?;
    }
    check_channels(op, l.c, &[("mean", norm.mean), ("inv_std", norm.inv_std)])?;
    let mut workspace = d.workspace(exec)?;
    // SAFETY: the kernel reads x, dy and any ReLU output at [0..N·C·HW) and mean, inv_std at
    // [0..C) (all checked), and block (b, ch) writes the 2 doubles at 2(ch·P + b) of the
    // workspace, which holds the 4·P·C words that makes, P being the grid's x.
    unsafe {
        kernels::batchnorm_grad_partial_bwd_f32(
            exec,
            d.pass1(),
            x,
            grad.dy,
            grad.relu_out,
            norm.mean,
            norm.inv_std,
            &mut workspace,
            d.n,
            d.c,
            d.hw,
        )?;
    }
    Ok((d, workspace))
}

/// Per channel, `Σ dy` and `Σ dy · x̂` (summed in f64, as the CPU's `channel_grad_sums`): the
/// gradients of β and γ, for a backward that needs no training-mode input gradient
/// ([`train_backward`] computes both at once).
pub fn channel_grad_sums(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    grad: OutputGrad<'_>,
    l: &ChannelLayout,
    norm: Normalizer<'_>,
) -> Result<GradSums, GpuError> {
    let op = "channel_grad_sums";
    let (d, workspace) = grad_partials(exec, op, x, grad, l, norm)?;
    let mut sums = GradSums {
        sum_dy: exec.alloc(l.c)?,
        sum_dy_xhat: exec.alloc(l.c)?,
    };
    let p = int(op, d.partials())?;
    // SAFETY: the kernel reads the 4·P·C words of the workspace and writes the two sums at
    // [0..C); each buffer holds that many elements. It runs after pass 1, on the same queue.
    unsafe {
        kernels::batchnorm_grad_final_bwd_f32(
            exec,
            d.pass2(),
            &workspace,
            &mut sums.sum_dy,
            &mut sums.sum_dy_xhat,
            p,
            d.c,
        )?;
    }
    Ok(sums)
}

/// Training-mode input gradient, `dx = k[c] · (dy − mean(dy) − x̂ · mean(dy · x̂))` with
/// `k = γ · inv_std` (the `scale` of [`TrainForward`]) and the means over each channel's `M`
/// elements (the derivation is in `ops::batchnorm`), in two launches; with `sums`, also the
/// gradient sums of β and γ, as [`channel_grad_sums`] gives them. `dy` is masked where `grad`
/// says so.
pub fn train_backward(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    grad: OutputGrad<'_>,
    l: &ChannelLayout,
    norm: Normalizer<'_>,
    k: &DeviceBuffer<f32>,
    sums: bool,
) -> Result<(DeviceBuffer<f32>, Option<GradSums>), GpuError> {
    let op = "train_backward";
    check_channels(op, l.c, &[("k", k)])?;
    let (d, workspace) = grad_partials(exec, op, x, grad, l, norm)?;
    let mut dx = exec.alloc(x.len())?;
    let mut sums = match sums {
        true => Some(GradSums {
            sum_dy: exec.alloc(l.c)?,
            sum_dy_xhat: exec.alloc(l.c)?,
        }),
        false => None,
    };
    let (sum_dy, sum_dy_xhat) = match &mut sums {
        Some(s) => (Some(&mut s.sum_dy), Some(&mut s.sum_dy_xhat)),
        None => (None, None),
    };
    let p = int(op, d.partials())?;
    // SAFETY: pass 2, on pass 1's grid, reads x, dy and any ReLU output (checked by
    // grad_partials) and writes dx at [0..N·C·HW), reads the 4·P·C words of the workspace and
    // mean, inv_std, k at [0..C), and writes the sums, where given, at [0..C). Each buffer holds that many elements (checked, or allocated here); it runs
    // after pass 1, on the same queue.
    unsafe {
        kernels::batchnorm_normalize_bwd_f32(
            exec,
            d.pass1(),
            x,
            grad.dy,
            grad.relu_out,
            &workspace,
            norm.mean,
            norm.inv_std,
            k,
            &mut dx,
            sum_dy,
            sum_dy_xhat,
            p,
            d.n,
            d.c,
            d.hw,
        )?;
    }
    Ok((dx, sums))
}

/// One candidate of [`mixed_sum_forward`].
#[derive(Debug, Clone, Copy)]
pub enum MixedInput<'a> {
    /// A candidate's output, summed as it is.
    Plain(&'a DeviceBuffer<f32>),
    /// A candidate's output before its batch norm (training mode, no affine parameters), with
    /// the running statistics to fold the batch's into, if any.
    Normalized(&'a DeviceBuffer<f32>, Option<Running<'a>>),
    /// A candidate's output before its batch norm in eval mode (no affine parameters), which
    /// normalises with the running statistics (`[C]` each).
    Eval {
        /// The candidate's output.
        x: &'a DeviceBuffer<f32>,
        /// The running mean.
        mean: &'a DeviceBuffer<f32>,
        /// The running variance.
        var: &'a DeviceBuffer<f32>,
    },
}

impl<'a> MixedInput<'a> {
    /// The candidate's buffer.
    fn x(&self) -> &'a DeviceBuffer<f32> {
        match *self {
            MixedInput::Plain(x) | MixedInput::Normalized(x, _) | MixedInput::Eval { x, .. } => x,
        }
    }

    /// The running statistics a normalised candidate reads: those it folds the batch's into in
    /// training, those it normalises with in eval mode, as the kernel's `(mean, var)`.
    fn running(&self) -> Option<(&'a DeviceBuffer<f32>, &'a DeviceBuffer<f32>)> {
        match *self {
            MixedInput::Normalized(_, running) => running.map(|r| (r.mean, r.var)),
            MixedInput::Eval { mean, var, .. } => Some((mean, var)),
            MixedInput::Plain(_) => None,
        }
    }
}

/// What [`mixed_sum_forward`] computes.
#[derive(Debug)]
pub struct MixedForward {
    /// The weighted sum, laid out as the candidates.
    pub y: DeviceBuffer<f32>,
    /// `[K, 2, C]`: per candidate, the batch mean and `1 / σ` of each channel its batch norm
    /// used (zeros for a plain candidate); the backward recomputes the normalised terms from them.
    pub stats: DeviceBuffer<f32>,
    /// Per candidate, its new running `(mean, var)` where it had running statistics.
    pub running: Vec<Option<(DeviceBuffer<f32>, DeviceBuffer<f32>)>>,
}

/// The bit mask of the normalised slots among `normalized` (one flag per slot).
fn norm_mask(normalized: impl Iterator<Item = bool>) -> u32 {
    normalized
        .enumerate()
        .fold(0, |mask, (s, norm)| mask | (u32::from(norm) << s))
}

/// The DARTS mixed op over batch-normalised candidates, forward: `y = Σₛ w[offset + s] · tₛ` over
/// `inputs` (1 to [`MAX_CANDIDATES`], laid out as `l`), `tₛ` the batch norm (no affine
/// parameters, `eps`) of a normalised candidate or a plain candidate as it is. In training
/// ([`MixedInput::Normalized`] candidates), the same bits as [`train_forward`] of each normalised
/// candidate summed by `mixed::mixed_forward`, with the same statistics and running statistics,
/// in two launches (one statistics pass over all the normalised candidates, then one that
/// normalises and sums); running statistics must share one momentum. In eval mode
/// ([`MixedInput::Eval`] candidates; the two modes do not mix), the bits of [`eval_coefficients`]
/// and [`scale_shift`] for each, in one launch. No `tₛ` is ever written.
pub fn mixed_sum_forward(
    exec: &dyn Executor,
    inputs: &[MixedInput<'_>],
    weights: WeightRun<'_>,
    l: &ChannelLayout,
    eps: f32,
) -> Result<MixedForward, GpuError> {
    let op = "mixed_sum_forward";
    if inputs.is_empty() || inputs.len() > MAX_CANDIDATES {
        return Err(invalid(
            op,
            format!("{} candidates: 1 to {MAX_CANDIDATES}", inputs.len()),
        ));
    }
    let offset = weights.offset(op, inputs.len())?;
    let d = Dims::new(op, l, "candidate 0", inputs[0].x())?;
    check_eps(op, eps)?;
    let is = |f: fn(&MixedInput<'_>) -> bool| inputs.iter().any(f);
    let train = is(|input| matches!(input, MixedInput::Normalized(..)));
    if train && is(|input| matches!(input, MixedInput::Eval { .. })) {
        return Err(invalid(
            op,
            "training and eval-mode candidates together".into(),
        ));
    }
    let mut momentum = None;
    for (s, input) in inputs.iter().enumerate() {
        Dims::new(op, l, &format!("candidate {s}"), input.x())?;
        match *input {
            MixedInput::Normalized(_, running) => {
                check_train(op, &d, eps, running)?;
                let m = running.map(|r| r.momentum);
                if m.is_some() && momentum.is_some_and(|first| Some(first) != m) {
                    return Err(invalid(
                        op,
                        format!("running statistics with momenta {momentum:?} and {m:?}"),
                    ));
                }
                momentum = momentum.or(m);
            }
            MixedInput::Eval { mean, var, .. } => {
                check_channels(op, l.c, &[("running mean", mean), ("running var", var)])?
            }
            MixedInput::Plain(_) => {}
        }
    }
    let mask = norm_mask(
        inputs
            .iter()
            .map(|input| !matches!(input, MixedInput::Plain(_))),
    );
    let xs: Vec<&DeviceBuffer<f32>> = inputs.iter().map(MixedInput::x).collect();
    let normalized: Vec<&DeviceBuffer<f32>> = (xs.iter().enumerate())
        .filter(|&(s, _)| mask >> s & 1 == 1)
        .map(|(_, &x)| x)
        .collect();
    let workspace = match train {
        true => Some(moments(exec, &d, &normalized)?),
        false => None,
    };
    let c = l.c;
    let mut out = MixedForward {
        y: exec.alloc(xs[0].len())?,
        stats: exec.alloc(2 * c * inputs.len())?,
        running: (inputs.iter())
            .map(|input| match input {
                MixedInput::Normalized(_, Some(_)) => Ok(Some((exec.alloc(c)?, exec.alloc(c)?))),
                _ => Ok(None),
            })
            .collect::<Result<_, GpuError>>()?,
    };
    let [x0, x1, x2, x3, x4, x5, x6, x7] = slots(&xs);
    let running = |s: usize| inputs.get(s).and_then(MixedInput::running);
    let [rm0, rm1, rm2, rm3, rm4, rm5, rm6, rm7] =
        std::array::from_fn(|s| running(s).map(|(mean, _)| mean));
    let [rv0, rv1, rv2, rv3, rv4, rv5, rv6, rv7] =
        std::array::from_fn(|s| running(s).map(|(_, var)| var));
    let (new_means, new_vars): (Vec<_>, Vec<_>) = (out.running.iter_mut())
        .map(|r| match r {
            Some((m, v)) => (Some(m), Some(v)),
            None => (None, None),
        })
        .unzip();
    let (mut new_means, mut new_vars) = (new_means.into_iter(), new_vars.into_iter());
    let [nm0, nm1, nm2, nm3, nm4, nm5, nm6, nm7] =
        std::array::from_fn(|_| new_means.next().flatten());
    let [nv0, nv1, nv2, nv3, nv4, nv5, nv6, nv7] =
        std::array::from_fn(|_| new_vars.next().flatten());
    // SAFETY: on pass 1's grid, the kernel reads x0..x(K−1) at [0..N·C·HW) (checked; the slots
    // past K alias x0 and are never read), w[offset + s] for s < K (checked), in training the
    // 4·P·C words of each normalised slot's partials (pass 1 wrote them, in slot order, into a
    // workspace of that many), and the running statistics at [0..C) where given (checked; every
    // normalised slot gives them in eval mode); it writes y at [0..N·C·HW), the stats at
    // [0..2·K·C) and the new running statistics at [0..C) where given, all allocated here at those
    // lengths. It runs after pass 1, on the same queue.
    unsafe {
        kernels::batchnorm_mixed_sum_fwd_f32(
            exec,
            d.pass1(),
            x0,
            x1,
            x2,
            x3,
            x4,
            x5,
            x6,
            x7,
            weights.weights,
            offset,
            mask,
            int(op, inputs.len())?,
            workspace.as_ref(),
            rm0,
            rm1,
            rm2,
            rm3,
            rm4,
            rm5,
            rm6,
            rm7,
            rv0,
            rv1,
            rv2,
            rv3,
            rv4,
            rv5,
            rv6,
            rv7,
            &mut out.stats,
            &mut out.y,
            nm0,
            nm1,
            nm2,
            nm3,
            nm4,
            nm5,
            nm6,
            nm7,
            nv0,
            nv1,
            nv2,
            nv3,
            nv4,
            nv5,
            nv6,
            nv7,
            int(op, d.partials())?,
            d.n,
            d.c,
            d.hw,
            eps,
            momentum.unwrap_or(0.0),
        )?;
    }
    Ok(out)
}

/// The candidates of a DARTS mixed op over batch-normalised outputs, as its backward reads them
/// (see [`mixed_sum_forward`]).
#[derive(Debug, Clone, Copy)]
pub struct MixedTerms<'a> {
    /// Each candidate's input: its output before the batch norm, or the term itself.
    pub xs: &'a [&'a DeviceBuffer<f32>],
    /// Whether each candidate is batch-normalised.
    pub normalized: &'a [bool],
    /// The forward's `[K, 2, C]` statistics ([`MixedForward::stats`]).
    pub stats: &'a DeviceBuffer<f32>,
    /// Whether the forward ran in training mode (batch statistics, which depend on the inputs)
    /// or in eval mode (running statistics, constants).
    pub train: bool,
}

impl MixedTerms<'_> {
    /// Checks the terms against the layout `l` (1 to [`MAX_CANDIDATES`] of them, each with its
    /// flag, holding `l`'s elements, the statistics `2·K·C` values, and more than one value per
    /// channel when any is normalised); returns the kernels' mask of normalised slots.
    fn check(&self, op: &'static str, l: &ChannelLayout) -> Result<u32, GpuError> {
        let k = self.xs.len();
        if k == 0 || k > MAX_CANDIDATES || self.normalized.len() != k {
            return Err(invalid(
                op,
                format!(
                    "{k} terms and {} flags: 1 to {MAX_CANDIDATES} terms, one flag each",
                    self.normalized.len()
                ),
            ));
        }
        for (s, x) in self.xs.iter().enumerate() {
            Dims::new(op, l, &format!("term {s}"), x)?;
        }
        check_channels(op, 2 * k * l.c, &[("the statistics", self.stats)])?;
        let mask = norm_mask(self.normalized.iter().copied());
        if self.train && mask != 0 && l.per_channel() < 2 {
            return Err(invalid(
                op,
                format!("a batch norm needs more than 1 value per channel, got {l:?}"),
            ));
        }
        Ok(mask)
    }
}

/// The input gradients of the mixed op `Σₛ w[offset + s] · tₛ` over `terms` (each laid out as
/// `l`), `tₛ` the batch norm (no affine parameters) of a normalised candidate's input: for each `s`
/// with `needs[s]`, with `g = w[offset + s] · dy`, in training
/// `dxₛ = inv_stdₛ · (g − mean(g) − tₛ · mean(g · tₛ))` (the means per channel, `tₛ` recomputed
/// from the statistics), in eval mode `dxₛ = inv_stdₛ · g`, and `g` for a plain term; `None` for
/// the others. Two launches for all the terms together in training, one in eval mode
/// (`kernels/batchnorm.cu`), where the ops one by one take a scale and two launches per batch
/// norm; the same arithmetic as `device::cpu::batchnorm::mixed_normalized_backward` and
/// `mixed_eval_backward`.
pub fn mixed_input_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    weights: WeightRun<'_>,
    terms: MixedTerms<'_>,
    l: &ChannelLayout,
    needs: &[bool],
) -> Result<Vec<Option<DeviceBuffer<f32>>>, GpuError> {
    let op = "mixed_input_backward";
    let d = Dims::new(op, l, "dy", dy)?;
    let norm_mask = terms.check(op, l)?;
    let k = terms.xs.len();
    if needs.len() != k {
        return Err(invalid(
            op,
            format!("{k} terms and {} needs: one need each", needs.len()),
        ));
    }
    let offset = weights.offset(op, k)?;
    // Only training's input gradient has the per-channel means, which pass 1 sums.
    let normalised = match terms.train {
        true => norm_mask.count_ones() as usize,
        false => 0,
    };
    let p = int(op, d.partials())?;
    let mut workspace = match normalised {
        0 => None,
        _ => Some(exec.alloc(4 * d.partials() * l.c * normalised)?),
    };
    let [x0, x1, x2, x3, x4, x5, x6, x7] = slots(terms.xs);
    let mut dxs = needs
        .iter()
        .map(|&need| need.then(|| exec.alloc(dy.len())).transpose())
        .collect::<Result<Vec<_>, GpuError>>()?;
    let mut outputs = dxs.iter_mut().map(Option::as_mut);
    let [o0, o1, o2, o3, o4, o5, o6, o7] = std::array::from_fn(|_| outputs.next().flatten());
    let over = |slots: usize| {
        let mut config = d.pass1();
        config.grid[2] = slots as u32;
        config
    };
    // SAFETY: both passes read dy and the inputs x0..x(K−1) at [0..N·C·HW), w[offset + s] for
    // s < K and the stats at [0..2·K·C) (all checked; the slots past K alias x0 and are never
    // read). Pass 1 (training only), on B = popcount(mask) grid layers, writes the 2 doubles at
    // 2((z·C + ch)·P + b) of the workspace, which holds the 4·P·C·B words that makes. Pass 2, on K
    // layers, reads those words (when there is a workspace) and writes the given outputs at
    // [0..N·C·HW) (allocated here); null outputs, and every slot past K, are never touched. Both
    // run on one queue, in order.
    unsafe {
        if let Some(workspace) = workspace.as_mut() {
            kernels::batchnorm_mixed_partial_bwd_f32(
                exec,
                over(normalised),
                dy,
                weights.weights,
                offset,
                x0,
                x1,
                x2,
                x3,
                x4,
                x5,
                x6,
                x7,
                terms.stats,
                norm_mask,
                workspace,
                d.n,
                d.c,
                d.hw,
            )?;
        }
        kernels::batchnorm_mixed_input_bwd_f32(
            exec,
            over(k),
            dy,
            weights.weights,
            offset,
            x0,
            x1,
            x2,
            x3,
            x4,
            x5,
            x6,
            x7,
            terms.stats,
            workspace.as_ref(),
            o0,
            o1,
            o2,
            o3,
            o4,
            o5,
            o6,
            o7,
            norm_mask,
            p,
            d.n,
            d.c,
            d.hw,
        )?;
    }
    Ok(dxs)
}

/// The mixing weights' gradient of the mixed op over `terms` (laid out as `l`):
/// `dw[s] = Σᵢ dy[i] · tₛ[i]` with each normalised `tₛ` recomputed from the statistics, by
/// `mixed::mixed_backward_weights`' deterministic reduction (its result's layout too).
pub fn mixed_weight_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    weights: WeightRun<'_>,
    terms: MixedTerms<'_>,
    l: &ChannelLayout,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "mixed_weight_backward";
    let norm_mask = terms.check(op, l)?;
    let norm = Normalization {
        stats: terms.stats,
        norm_mask,
        c: int(op, l.c)?,
        hw: int(op, l.hw)?,
    };
    mixed::weight_gradient(exec, op, dy, terms.xs, weights, Some(norm))
}
