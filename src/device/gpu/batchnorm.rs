//! The batch-norm family on a GPU executor (`kernels/batchnorm.cu`), on data laid out as
//! `[N, C, HW]`: the batch statistics (with the affine coefficients and the running-statistics
//! update in the same launches), the eval-mode coefficients, the per-channel affine map, and the
//! gradient sums and training-mode input gradient of the backward; each forward can apply a ReLU
//! to its output, and each backward then masks its gradient with that output. Also the input
//! gradients of a DARTS mixed op over batch-normalised candidates, all in two launches
//! ([`mixed_input_backward`]). Each function
//! mirrors a CPU reference in `device::cpu::batchnorm`, or the per-channel arithmetic of
//! `ops::batchnorm` (same arguments, same result), checks lengths, allocates its outputs and
//! launches.
//!
//! The per-channel reductions run in two passes over fixed trees, with a number of partial sums
//! per channel that depends only on the channel's size: the statistics and the gradient sums have
//! the same bits on every run and every GPU.

use super::kernels;
use super::mixed::{MAX_CANDIDATES, WeightRun, slots};
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
    normalize(exec, &d, x, &workspace, 0, pass2)
}

/// [`train_forward`] of each of `xs` (1 to [`MAX_CANDIDATES`] inputs of layout `l`, the
/// candidates of a DARTS edge), without affine parameters or activation, each with its own running
/// statistics where `running` has them (one entry per input): the same results, bit for bit,
/// with one launch for the statistics of all of them instead of one each.
pub fn train_forward_many(
    exec: &dyn Executor,
    xs: &[&DeviceBuffer<f32>],
    l: &ChannelLayout,
    eps: f32,
    running: &[Option<Running<'_>>],
) -> Result<Vec<TrainForward>, GpuError> {
    let op = "train_forward_many";
    if xs.is_empty() || xs.len() > MAX_CANDIDATES || running.len() != xs.len() {
        return Err(invalid(
            op,
            format!(
                "{} inputs and {} running statistics: 1 to {MAX_CANDIDATES} inputs, one each",
                xs.len(),
                running.len()
            ),
        ));
    }
    let d = Dims::new(op, l, "input 0", xs[0])?;
    for (z, (x, &r)) in xs.iter().zip(running).enumerate() {
        Dims::new(op, l, &format!("input {z}"), x)?;
        check_train(op, &d, eps, r)?;
    }
    let workspace = moments(exec, &d, xs)?;
    let per_input = 4 * d.partials() * l.c;
    (xs.iter().zip(running).enumerate())
        .map(|(z, (x, &running))| {
            let pass2 = Pass2 {
                eps,
                affine: None,
                running,
                act: Activation::Identity,
            };
            normalize(exec, &d, x, &workspace, int(op, z * per_input)?, pass2)
        })
        .collect()
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
/// the partials at word `at` of `workspace`: the statistics, the output and the new running
/// statistics, in one launch.
fn normalize(
    exec: &dyn Executor,
    d: &Dims,
    x: &DeviceBuffer<f32>,
    workspace: &DeviceBuffer<u32>,
    at: i32,
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
    // 4·P·C words of the workspace from `at` (pass 1 wrote them there) and γ, β and the running
    // statistics where given, and writes mean, inv_std, scale and, where given, the new running
    // statistics at [0..C). Each buffer holds that many elements (checked, or allocated here); it
    // runs after pass 1, on the same queue.
    unsafe {
        kernels::batchnorm_normalize_fwd_f32(
            exec,
            d.pass1(),
            x,
            workspace,
            at,
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

/// One candidate of a DARTS mixed op over batch-normalised outputs, as the backward sees it.
#[derive(Debug, Clone, Copy)]
pub struct MixedTerm<'a> {
    /// The candidate's term of the sum: its normalised output `x̂`, or its input as it is.
    pub t: &'a DeviceBuffer<f32>,
    /// `1 / σ` per channel of a normalised candidate (its forward's `inv_std`); `None` for a
    /// plain one.
    pub inv_std: Option<&'a DeviceBuffer<f32>>,
}

/// The input gradients of the mixed op `Σₛ w[offset + s] · tₛ` over `terms` (1 to
/// [`MAX_CANDIDATES`], each laid out as `l`), where each normalised term is the batch norm
/// (training mode, no affine parameters) of its candidate: for each `s` with `needs[s]`,
/// `dxₛ = inv_stdₛ · (g − mean(g) − tₛ · mean(g · tₛ))` with `g = w[offset + s] · dy` (the means per
/// channel), or `g` for a plain term; `None` for the others. Two launches for all the terms
/// together (`kernels/batchnorm.cu`), where the ops one by one take a scale and two launches per
/// batch norm; the same arithmetic as `device::cpu::batchnorm::mixed_normalized_backward`.
pub fn mixed_input_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    weights: WeightRun<'_>,
    terms: &[MixedTerm<'_>],
    l: &ChannelLayout,
    needs: &[bool],
) -> Result<Vec<Option<DeviceBuffer<f32>>>, GpuError> {
    let op = "mixed_input_backward";
    let d = Dims::new(op, l, "dy", dy)?;
    if terms.is_empty() || terms.len() > MAX_CANDIDATES || needs.len() != terms.len() {
        return Err(invalid(
            op,
            format!(
                "{} terms and {} needs: 1 to {MAX_CANDIDATES} terms, one need each",
                terms.len(),
                needs.len()
            ),
        ));
    }
    let offset = weights.offset(op, terms.len())?;
    let mut norm_mask = 0u32;
    for (s, term) in terms.iter().enumerate() {
        Dims::new(op, l, &format!("term {s}"), term.t)?;
        if let Some(inv_std) = term.inv_std {
            check_channels(op, l.c, &[("inv_std", inv_std)])?;
            norm_mask |= 1 << s;
            if d.m < 2 {
                return Err(invalid(
                    op,
                    format!("a batch norm needs more than 1 value per channel, got {l:?}"),
                ));
            }
        }
    }
    let normalised = norm_mask.count_ones() as usize;
    let p = int(op, d.partials())?;
    let mut workspace = exec.alloc((4 * d.partials() * l.c * normalised).max(1))?;
    let ts: Vec<&DeviceBuffer<f32>> = terms.iter().map(|term| term.t).collect();
    let [t0, t1, t2, t3, t4, t5, t6, t7] = slots(&ts);
    let [i0, i1, i2, i3, i4, i5, i6, i7]: [Option<&DeviceBuffer<f32>>; MAX_CANDIDATES] =
        std::array::from_fn(|s| terms.get(s).and_then(|term| term.inv_std));
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
    // SAFETY: both passes read dy and the terms t0..t(K−1) at [0..N·C·HW) and w[offset + s] for
    // s < K (checked; the slots past K alias t0 and are never read). Pass 1, on B = popcount(mask)
    // grid layers, writes the 2 doubles at 2((z·C + ch)·P + b) of the workspace, which holds the
    // 4·P·C·B words that makes. Pass 2, on K layers, reads those words and inv_std at [0..C) of the
    // normalised slots (checked), and writes the given outputs at [0..N·C·HW) (allocated here);
    // null outputs, and every slot past K, are never touched. Both run on one queue, in order.
    unsafe {
        if normalised > 0 {
            kernels::batchnorm_mixed_partial_bwd_f32(
                exec,
                over(normalised),
                dy,
                weights.weights,
                offset,
                t0,
                t1,
                t2,
                t3,
                t4,
                t5,
                t6,
                t7,
                norm_mask,
                &mut workspace,
                d.n,
                d.c,
                d.hw,
            )?;
        }
        kernels::batchnorm_mixed_input_bwd_f32(
            exec,
            over(terms.len()),
            dy,
            weights.weights,
            offset,
            t0,
            t1,
            t2,
            t3,
            t4,
            t5,
            t6,
            t7,
            i0,
            i1,
            i2,
            i3,
            i4,
            i5,
            i6,
            i7,
            &workspace,
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
