//! The batch-norm family on a GPU executor (`kernels/batchnorm.cu`), on data laid out as
//! `[N, C, HW]`: the batch statistics, the per-channel affine map, the gradient sums and the
//! training-mode input gradient, and the running-statistics update. Each function mirrors a CPU
//! reference in `device::cpu::batchnorm`, or the per-channel arithmetic of `ops::batchnorm`
//! (same arguments, same result), checks lengths, allocates its outputs and launches.
//!
//! The per-channel reductions run in two passes over fixed trees, with a number of partial sums
//! per channel that depends only on the channel's size: the statistics and the gradient sums have
//! the same bits on every run and every GPU.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};
use crate::device::cpu::batchnorm::ChannelLayout;

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
/// statistics live (a [`BatchStats`] in training, the running mean and [`inv_std`] in eval).
#[derive(Debug, Clone, Copy)]
pub struct Normalizer<'a> {
    /// The mean subtracted, per channel.
    pub mean: &'a DeviceBuffer<f32>,
    /// The reciprocal standard deviation multiplied, per channel.
    pub inv_std: &'a DeviceBuffer<f32>,
}

/// The batch statistics of a training-mode forward, per channel (`[C]` each).
#[derive(Debug)]
pub struct BatchStats {
    /// The batch mean.
    pub mean: DeviceBuffer<f32>,
    /// The unbiased batch variance `Σ (x − mean)² / (M − 1)`, for the running variance.
    pub var_unbiased: DeviceBuffer<f32>,
    /// `1 / √(var + eps)` with the biased variance `Σ (x − mean)² / M`, which normalises.
    pub inv_std: DeviceBuffer<f32>,
}

impl BatchStats {
    /// The normalisation these statistics define.
    pub fn normalizer(&self) -> Normalizer<'_> {
        Normalizer {
            mean: &self.mean,
            inv_std: &self.inv_std,
        }
    }
}

/// The per-channel gradient sums of a backward (`[C]` each), with `M = N · HW` elements per
/// channel.
#[derive(Debug)]
pub struct GradSums {
    /// `Σ dy`: the gradient of β.
    pub sum_dy: DeviceBuffer<f32>,
    /// `Σ dy · x̂`: the gradient of γ.
    pub sum_dy_xhat: DeviceBuffer<f32>,
    /// `Σ dy / M`.
    pub mean_dy: DeviceBuffer<f32>,
    /// `Σ dy · x̂ / M`.
    pub mean_dy_xhat: DeviceBuffer<f32>,
}

/// A checked layout as the kernels take it.
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

/// The training-mode batch statistics of `x` per channel, as `ops::batchnorm::batch_norm_train`
/// derives them from the CPU's `channel_moments`: the mean, the unbiased variance, and
/// `1 / √(biased variance + eps)`. Summed in f64 in one pass over `x`, shifted by the channel's
/// first value so that a large mean does not cancel (see `kernels/batchnorm.cu`), and rounded once
/// to f32. Each channel needs at least two values.
pub fn batch_stats(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    l: &ChannelLayout,
    eps: f32,
) -> Result<BatchStats, GpuError> {
    let op = "batch_stats";
    let d = Dims::new(op, l, "x", x)?;
    check_eps(op, eps)?;
    if d.m < 2 {
        return Err(invalid(
            op,
            format!("training needs more than 1 value per channel, got layout {l:?}"),
        ));
    }
    let mut workspace = d.workspace(exec)?;
    let mut mean = exec.alloc(l.c)?;
    let mut var_unbiased = exec.alloc(l.c)?;
    let mut inv_std = exec.alloc(l.c)?;
    let p = int(op, d.partials())?;
    // SAFETY: pass 1 reads x[0..N·C·HW) (checked) and writes workspace words [0..4·P·C) (block
    // (b, ch) writes the 2 doubles at 2(ch·P + b)), with P its grid's x; pass 2 reads x at the
    // start of each channel and those 4·P·C words, and writes mean, var_unbiased and inv_std at
    // [0..C). Each buffer holds that many elements; both passes run on one queue, in order.
    unsafe {
        kernels::batchnorm_moments_partial_fwd_f32(
            exec,
            d.pass1(),
            x,
            &mut workspace,
            d.n,
            d.c,
            d.hw,
        )?;
        kernels::batchnorm_moments_final_fwd_f32(
            exec,
            d.pass2(),
            x,
            &workspace,
            &mut mean,
            &mut var_unbiased,
            &mut inv_std,
            p,
            d.n,
            d.c,
            d.hw,
            eps,
        )?;
    }
    Ok(BatchStats {
        mean,
        var_unbiased,
        inv_std,
    })
}

/// `1 / √(var + eps)` per channel, in f64 (eval mode, from the running variance).
pub fn inv_std(
    exec: &dyn Executor,
    var: &DeviceBuffer<f32>,
    eps: f32,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "inv_std";
    check_eps(op, eps)?;
    let c = int(op, var.len())?;
    let mut out = exec.alloc(var.len())?;
    let config = LaunchConfig::grid_stride(var.len(), THREADS);
    // SAFETY: the kernel reads var[0..c) and writes out[0..c); both hold c elements.
    unsafe { kernels::batchnorm_inv_std_fwd_f32(exec, config, var, &mut out, c, eps) }?;
    Ok(out)
}

/// The per-channel affine map of the normalisation, `y = x · scale + shift`:
/// `scale = γ · inv_std` and `shift = β − mean · scale`, with `affine` = `Some((γ, β))` or `None`
/// (γ = 1, β = 0). Returns `(scale, shift)`; `scale` is also the factor `k` of the input gradient.
pub fn affine_coefficients(
    exec: &dyn Executor,
    norm: Normalizer<'_>,
    affine: Option<(&DeviceBuffer<f32>, &DeviceBuffer<f32>)>,
) -> Result<(DeviceBuffer<f32>, DeviceBuffer<f32>), GpuError> {
    let op = "affine_coefficients";
    let c = norm.mean.len();
    let defaults;
    let (gamma, beta) = match affine {
        Some(pair) => pair,
        None => {
            defaults = (
                exec.to_device(&vec![1.0f32; c])?,
                exec.to_device(&vec![0.0f32; c])?,
            );
            (&defaults.0, &defaults.1)
        }
    };
    check_channels(
        op,
        c,
        &[("inv_std", norm.inv_std), ("gamma", gamma), ("beta", beta)],
    )?;
    let channels = int(op, c)?;
    let mut scale = exec.alloc(c)?;
    let mut shift = exec.alloc(c)?;
    let config = LaunchConfig::grid_stride(c, THREADS);
    // SAFETY: the kernel reads mean, inv_std, gamma, beta and writes scale, shift at [0..c); all
    // six hold c elements (checked, or allocated here).
    unsafe {
        kernels::batchnorm_affine_fwd_f32(
            exec,
            config,
            norm.mean,
            norm.inv_std,
            gamma,
            beta,
            &mut scale,
            &mut shift,
            channels,
        )
    }?;
    Ok((scale, shift))
}

/// The per-channel affine map `y = x · scale[c] + shift[c]` (the normalisation, and with a zero
/// shift the eval-mode input gradient).
pub fn scale_shift(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    l: &ChannelLayout,
    scale: &DeviceBuffer<f32>,
    shift: &DeviceBuffer<f32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "scale_shift";
    let d = Dims::new(op, l, "x", x)?;
    check_channels(op, l.c, &[("scale", scale), ("shift", shift)])?;
    let mut y = exec.alloc(x.len())?;
    // SAFETY: the kernel reads x and writes y at [0..N·C·HW) and reads scale, shift at [0..C);
    // the buffers hold that many elements (checked, or allocated here).
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
        )
    }?;
    Ok(y)
}

/// Per channel, `Σ dy` and `Σ dy · x̂` (summed in f64, as the CPU's `channel_grad_sums`) and
/// their means over the channel's `M` elements, the two means the training-mode input gradient
/// needs.
pub fn channel_grad_sums(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
    l: &ChannelLayout,
    norm: Normalizer<'_>,
) -> Result<GradSums, GpuError> {
    let op = "channel_grad_sums";
    let d = Dims::new(op, l, "x", x)?;
    Dims::new(op, l, "dy", dy)?;
    check_channels(op, l.c, &[("mean", norm.mean), ("inv_std", norm.inv_std)])?;
    let mut workspace = d.workspace(exec)?;
    let mut sums = GradSums {
        sum_dy: exec.alloc(l.c)?,
        sum_dy_xhat: exec.alloc(l.c)?,
        mean_dy: exec.alloc(l.c)?,
        mean_dy_xhat: exec.alloc(l.c)?,
    };
    let (p, m) = (int(op, d.partials())?, int(op, d.m)?);
    // SAFETY: pass 1 reads x, dy at [0..N·C·HW) and mean, inv_std at [0..C) (all checked), and
    // writes workspace words [0..4·P·C); pass 2 reads those words and writes the four sums at
    // [0..C). Each buffer holds that many elements; both passes run on one queue, in order.
    unsafe {
        kernels::batchnorm_grad_partial_bwd_f32(
            exec,
            d.pass1(),
            x,
            dy,
            norm.mean,
            norm.inv_std,
            &mut workspace,
            d.n,
            d.c,
            d.hw,
        )?;
        kernels::batchnorm_grad_final_bwd_f32(
            exec,
            d.pass2(),
            &workspace,
            &mut sums.sum_dy,
            &mut sums.sum_dy_xhat,
            &mut sums.mean_dy,
            &mut sums.mean_dy_xhat,
            p,
            d.c,
            m,
        )?;
    }
    Ok(sums)
}

/// Training-mode input gradient, `dx = k[c] · (dy − mean_dy[c] − x̂ · mean_dy_xhat[c])` with
/// `k = γ · inv_std` (the `scale` of [`affine_coefficients`]) and the means of
/// [`channel_grad_sums`]; the derivation is in `ops::batchnorm`.
pub fn normalize_backward(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
    l: &ChannelLayout,
    norm: Normalizer<'_>,
    k: &DeviceBuffer<f32>,
    sums: &GradSums,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "normalize_backward";
    let d = Dims::new(op, l, "x", x)?;
    Dims::new(op, l, "dy", dy)?;
    check_channels(
        op,
        l.c,
        &[
            ("mean", norm.mean),
            ("inv_std", norm.inv_std),
            ("k", k),
            ("mean_dy", &sums.mean_dy),
            ("mean_dy_xhat", &sums.mean_dy_xhat),
        ],
    )?;
    let mut dx = exec.alloc(x.len())?;
    // SAFETY: the kernel reads x, dy and writes dx at [0..N·C·HW), and reads the five
    // per-channel buffers at [0..C); all hold that many elements (checked, or allocated here).
    unsafe {
        kernels::batchnorm_normalize_bwd_f32(
            exec,
            d.elementwise(),
            x,
            dy,
            norm.mean,
            norm.inv_std,
            k,
            &sums.mean_dy,
            &sums.mean_dy_xhat,
            &mut dx,
            d.count,
            d.c,
            d.hw,
        )
    }?;
    Ok(dx)
}

/// PyTorch's running-statistics update, in f64 as the CPU computes it, into new buffers (mean,
/// var): `(1 − momentum) · running + momentum · batch`, with the unbiased batch variance for the
/// running variance.
pub fn update_running_stats(
    exec: &dyn Executor,
    running_mean: &DeviceBuffer<f32>,
    running_var: &DeviceBuffer<f32>,
    mean: &DeviceBuffer<f32>,
    var_unbiased: &DeviceBuffer<f32>,
    momentum: f32,
) -> Result<(DeviceBuffer<f32>, DeviceBuffer<f32>), GpuError> {
    let op = "update_running_stats";
    let c = mean.len();
    check_channels(
        op,
        c,
        &[
            ("running_mean", running_mean),
            ("running_var", running_var),
            ("var_unbiased", var_unbiased),
        ],
    )?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(invalid(
            op,
            format!("momentum must lie in [0, 1], got {momentum}"),
        ));
    }
    let channels = int(op, c)?;
    let (mut new_mean, mut new_var) = (exec.alloc(c)?, exec.alloc(c)?);
    let config = LaunchConfig::grid_stride(c, THREADS);
    // SAFETY: the kernel reads running_mean, running_var, mean, var_unbiased and writes new_mean,
    // new_var at [0..c); all six hold c elements (checked, or allocated so).
    unsafe {
        kernels::batchnorm_running_stats_fwd_f32(
            exec,
            config,
            running_mean,
            running_var,
            mean,
            var_unbiased,
            &mut new_mean,
            &mut new_var,
            channels,
            momentum,
        )
    }?;
    Ok((new_mean, new_var))
}
