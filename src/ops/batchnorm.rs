//! Batch normalisation over (N, H, W) per channel, on `[N, C, H, W]` or `[N, C]` inputs, in
//! training mode (batch statistics) and eval mode (running statistics), and PyTorch's update of
//! the running statistics. The layer that owns the running buffers lives in `nn`.
//!
//! Backward, per channel, with `M = N·H·W`, `x̂ = (x − μ)/σ`, `σ = √(var + eps)` and
//! `y = γ·x̂ + β`: `dγ = Σ dy·x̂` and `dβ = Σ dy` in both modes. In eval mode μ and σ are constants,
//! so `dx = (γ/σ)·dy`. In training mode μ and the biased variance depend on x:
//! `∂x̂ⱼ/∂xᵢ = (δᵢⱼ − 1/M − x̂ᵢ·x̂ⱼ/M)/σ` (the `1/M` from μ, the last term from σ), so
//! `dxᵢ = Σⱼ γ·dyⱼ·∂x̂ⱼ/∂xᵢ = (γ/σ)·(dyᵢ − mean(dy) − x̂ᵢ·mean(dy·x̂))`, the means over the M
//! elements of the channel. Without affine parameters γ = 1.
//!
//! Either op can apply a ReLU to its output ([`Activation::Relu`], as DARTS' separable
//! convolutions do after their first batch norm): `z = relu(y)`, and the backward first turns the
//! gradient at `z` into the one at `y`, `dy · [z > 0]` (`z > 0` exactly where `y > 0`). The op then
//! keeps `z` alone, where a batch norm and a separate ReLU keep `y` and `z`.

use crate::autograd::{Tape, Var};
use std::borrow::Cow;

use crate::device::cpu::batchnorm::{self as k, ChannelLayout, Normalizer};
use crate::device::cpu::elementwise::relu_backward;
use crate::device::gpu::{self, Executor, batchnorm as g, elementwise as gpu_elementwise};
use crate::ops::{buffer, common_device};
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

pub use crate::device::cpu::batchnorm::Activation;

/// Running statistics (`[C]` each, on the input's device) that a training-mode forward folds its
/// batch statistics into, as PyTorch does: `new = (1 − momentum)·running + momentum·batch`, the
/// variance blended with the unbiased batch variance `Σ (x − μ)² / (M − 1)`.
#[derive(Debug, Clone, Copy)]
pub struct RunningStats<'a> {
    /// The running mean.
    pub mean: &'a Tensor,
    /// The running variance.
    pub var: &'a Tensor,
    /// The weight of the batch, in `[0, 1]` (PyTorch's default is 0.1).
    pub momentum: f32,
}

/// The layout of a `[N, C, H, W]` or `[N, C]` input.
fn layout(tape: &Tape, op: &'static str, x: Var) -> Result<ChannelLayout> {
    layout_of(op, tape.shape(x))
}

/// The layout of a `[N, C, H, W]` or `[N, C]` shape.
pub(crate) fn layout_of(op: &'static str, shape: &[usize]) -> Result<ChannelLayout> {
    match *shape {
        [n, c, h, w] => Ok(ChannelLayout { n, c, hw: h * w }),
        [n, c] => Ok(ChannelLayout { n, c, hw: 1 }),
        ref other => Err(Error::shape(
            op,
            "2 dimensions (N, C) or 4 (N, C, H, W)",
            other,
        )),
    }
}

/// Checks that `shape` is `[c]`; `what` names the tensor for the error.
fn check_channels(op: &'static str, what: &str, shape: &[usize], c: usize) -> Result<()> {
    if shape != [c] {
        return Err(Error::shape(
            op,
            format!("{what} of shape [{c}] (one per channel)"),
            shape,
        ));
    }
    Ok(())
}

/// Checks that `eps` is finite and not negative.
pub(crate) fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(
            op,
            format!("eps must be finite and non-negative, got {eps}"),
        ));
    }
    Ok(())
}

/// `1/√(var + eps)` per channel, in f64.
pub(crate) fn inv_std(var: impl Iterator<Item = f64>, eps: f32) -> Vec<f32> {
    var.map(|v| (1.0 / (v + eps as f64).sqrt()) as f32)
        .collect()
}

/// The normalisation of one forward, on the input's device: the per-channel mean and `1/σ`; on a
/// GPU also the output, computed with them.
enum Norm {
    Cpu(Normalizer),
    Gpu(Box<GpuNorm>),
}

/// A forward on a GPU: its output, and what its backward needs.
struct GpuNorm {
    /// The normalised output.
    y: gpu::DeviceBuffer<f32>,
    /// The running mean (eval), shared rather than copied, or the batch mean (train).
    mean: Tensor,
    /// `1/σ` per channel.
    inv_std: gpu::DeviceBuffer<f32>,
    /// `γ/σ` per channel: the factor of the input gradient.
    scale: gpu::DeviceBuffer<f32>,
}

/// The affine parameters γ, β: their variables on the tape and their values.
struct Affine {
    vars: (Var, Var),
    values: (Tensor, Tensor),
}

/// The affine parameters, if any, after their shapes and devices are checked.
fn affine_values(
    tape: &Tape,
    op: &'static str,
    x: Var,
    affine: Option<(Var, Var)>,
    c: usize,
) -> Result<Option<Affine>> {
    match affine {
        Some((g, b)) => {
            check_channels(op, "gamma", tape.shape(g), c)?;
            check_channels(op, "beta", tape.shape(b), c)?;
            common_device(op, &[tape.value(x), tape.value(g), tape.value(b)])?;
            Ok(Some(Affine {
                vars: (g, b),
                values: (tape.value(g).clone(), tape.value(b).clone()),
            }))
        }
        None => Ok(None),
    }
}

/// The GPU buffers of the affine parameters' values.
fn affine_buffers(affine: &Option<Affine>) -> g::Affine<'_> {
    affine
        .as_ref()
        .map(|a| (buffer(&a.values.0), buffer(&a.values.1)))
}

/// How [`normalize`] was asked to normalise: whether μ and σ were computed from `x` (so the input
/// gradient has the two extra terms of the training-mode rule in the module comment), and what
/// follows the normalisation.
#[derive(Debug, Clone, Copy)]
struct Mode {
    train: bool,
    act: Activation,
}

/// Applies `y = γ·(x − μ)·inv_std + β` (then the activation) with the given normalisation and
/// records the backward.
fn normalize(
    tape: &mut Tape,
    op: &'static str,
    x: Var,
    l: ChannelLayout,
    affine: Option<Affine>,
    norm: Norm,
    mode: Mode,
) -> Result<Var> {
    let xv = tape.value(x).clone();
    let (inputs, params) = match affine {
        Some(Affine {
            vars: (g, b),
            values,
        }) => (vec![x, g, b], Some(values)),
        None => (vec![x], None),
    };
    let (y, backward) = match norm {
        Norm::Cpu(norm) => normalize_cpu(xv, l, params, norm, mode)?,
        Norm::Gpu(norm) => {
            let exec = xv
                .device()
                .executor()?
                .ok_or_else(|| Error::invalid(op, "GPU statistics for an input on the CPU"))?;
            normalize_gpu(exec, xv, l, *norm, mode)?
        }
    };
    Ok(tape.record(op, y, &inputs, backward))
}
/// A backward closure of [`normalize`].
type Backward = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

/// `y = x·scale + shift` per channel with `scale = γ/σ` (also the factor `k` of the input
/// gradient) and `shift = β − μ·scale`; γ = 1 and β = 0 without affine parameters.
fn coefficients(params: Option<&(Tensor, Tensor)>, norm: &Normalizer) -> (Vec<f32>, Vec<f32>) {
    let c = norm.mean.len();
    let (gamma, beta) = match params {
        Some((g, b)) => (g.to_vec(), b.to_vec()),
        None => (vec![1.0; c], vec![0.0; c]),
    };
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&norm.inv_std)
        .map(|(g, s)| g * s)
        .collect();
    let shift = beta
        .iter()
        .zip(norm.mean.iter().zip(&scale))
        .map(|(b, (m, a))| b - m * a)
        .collect();
    (scale, shift)
}

/// [`normalize`] on the CPU reference.
fn normalize_cpu(
    xv: Tensor,
    l: ChannelLayout,
    params: Option<(Tensor, Tensor)>,
    norm: Normalizer,
    Mode { train, act }: Mode,
) -> Result<(Tensor, Backward)> {
    let (scale, shift) = coefficients(params.as_ref(), &norm);
    let y = Tensor::from_vec(
        k::scale_shift(xv.data(), &l, &scale, &shift, act),
        xv.shape(),
    )?;
    let relu_out = (act == Activation::Relu).then(|| y.clone());
    let backward = move |dy: &Tensor, needs: &[bool]| {
        let c = l.c;
        // The gradient at the normalisation's output.
        let dy = match &relu_out {
            Some(z) => Cow::Owned(relu_backward(z.data(), dy.data())),
            None => Cow::Borrowed(dy.data()),
        };
        let dy = &dy[..];
        let sums_needed = (train && needs[0]) || (needs.len() == 3 && (needs[1] || needs[2]));
        let (sum_dy, sum_dy_xhat) = if sums_needed {
            k::channel_grad_sums(xv.data(), dy, &l, &norm)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut grads = Vec::with_capacity(needs.len());
        grads.push(if !needs[0] {
            None
        } else if train {
            let count = l.per_channel() as f64;
            let mean_of =
                |s: &[f64]| -> Vec<f32> { s.iter().map(|v| (v / count) as f32).collect() };
            let (mean_dy, mean_dy_xhat) = (mean_of(&sum_dy), mean_of(&sum_dy_xhat));
            let dx =
                k::normalize_backward(xv.data(), dy, &l, &norm, &scale, &mean_dy, &mean_dy_xhat);
            Some(Tensor::from_vec(dx, xv.shape())?)
        } else {
            let dx = k::scale_shift(dy, &l, &scale, &vec![0.0; c], Activation::Identity);
            Some(Tensor::from_vec(dx, xv.shape())?)
        });
        if needs.len() == 3 {
            for (need, sums) in [(needs[1], &sum_dy_xhat), (needs[2], &sum_dy)] {
                grads.push(if need {
                    let g = sums.iter().map(|&v| v as f32).collect();
                    Some(Tensor::from_vec(g, &[c])?)
                } else {
                    None
                });
            }
        }
        Ok(grads)
    };
    Ok((y, Box::new(backward)))
}

/// [`normalize`] on a GPU executor, where the forward already ran: the same arithmetic as
/// [`normalize_cpu`], kernel by kernel (`kernels/batchnorm.cu`), with the statistics and
/// coefficients kept on the device.
fn normalize_gpu(
    exec: &'static dyn Executor,
    xv: Tensor,
    l: ChannelLayout,
    norm: GpuNorm,
    Mode { train, act }: Mode,
) -> Result<(Tensor, Backward)> {
    let device = xv.device();
    let GpuNorm {
        y,
        mean,
        inv_std,
        scale,
    } = norm;
    let y = Tensor::from_buffer(y, xv.shape(), device)?;
    let relu_out = (act == Activation::Relu).then(|| y.clone());
    let backward = move |dy: &Tensor, needs: &[bool]| {
        common_device("batch_norm backward", &[&xv, dy])?;
        let norm = g::Normalizer {
            mean: buffer(&mean),
            inv_std: &inv_std,
        };
        let x = buffer(&xv);
        let grad = g::OutputGrad {
            dy: buffer(dy),
            relu_out: relu_out.as_ref().map(buffer),
        };
        let affine_needed = needs.len() == 3 && (needs[1] || needs[2]);
        let as_tensor = |b| Tensor::from_buffer(b, xv.shape(), device);
        let (dx, sums) = match (needs[0], train) {
            (true, true) => {
                let (dx, sums) = g::train_backward(exec, x, grad, &l, norm, &scale, affine_needed)?;
                (Some(as_tensor(dx)?), sums)
            }
            (need_dx, _) => {
                let dx = match need_dx {
                    true => {
                        // dx = k·dy, with dy first masked by the ReLU where there is one.
                        let masked = match grad.relu_out {
                            Some(z) => Some(gpu_elementwise::relu_backward(exec, z, grad.dy)?),
                            None => None,
                        };
                        let dy = masked.as_ref().unwrap_or(grad.dy);
                        let identity = Activation::Identity;
                        Some(as_tensor(g::scale_shift(
                            exec, dy, &l, &scale, None, identity,
                        )?)?)
                    }
                    false => None,
                };
                let sums = match affine_needed {
                    true => Some(g::channel_grad_sums(exec, x, grad, &l, norm)?),
                    false => None,
                };
                (dx, sums)
            }
        };
        let mut grads = vec![dx];
        if needs.len() == 3 {
            match sums {
                Some(sums) => {
                    for (need, sum) in [(needs[1], sums.sum_dy_xhat), (needs[2], sums.sum_dy)] {
                        grads.push(match need {
                            true => Some(Tensor::from_buffer(sum, &[l.c], device)?),
                            false => None,
                        });
                    }
                }
                None => grads.extend([None, None]),
            }
        }
        Ok(grads)
    };
    Ok((y, Box::new(backward)))
}

/// Checks `running` against `c` channels and `x`'s device.
pub(crate) fn check_running(
    op: &'static str,
    x: &Tensor,
    running: &RunningStats<'_>,
    c: usize,
) -> Result<()> {
    check_channels(op, "running_mean", running.mean.shape(), c)?;
    check_channels(op, "running_var", running.var.shape(), c)?;
    common_device(op, &[x, running.mean, running.var])?;
    if !(0.0..=1.0).contains(&running.momentum) {
        return Err(Error::invalid(
            op,
            format!("momentum must lie in [0, 1], got {}", running.momentum),
        ));
    }
    Ok(())
}

/// PyTorch's blend `(1 − momentum)·running + momentum·batch`, in f64, on the CPU.
fn blend(running: &Tensor, batch: &[f32], momentum: f32) -> Result<Tensor> {
    let m = momentum as f64;
    let data = running
        .data()
        .iter()
        .zip(batch)
        .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b as f64) as f32)
        .collect();
    Tensor::from_vec(data, running.shape())
}

/// Training-mode batch norm over (N, H, W) per channel with the biased batch variance:
/// `y = (x − mean)/√(var + eps)·γ + β`, then `act`, where `affine` is `Some((γ [C], β [C]))` or
/// `None` (γ = 1, β = 0). Accepts `[N, C, H, W]` or `[N, C]`; each channel needs more than one
/// value. With `running`, also returns the new running `(mean, var)` ([`RunningStats`]); the
/// layer that owns them keeps them.
pub fn batch_norm_train(
    tape: &mut Tape,
    x: Var,
    affine: Option<(Var, Var)>,
    eps: f32,
    running: Option<RunningStats<'_>>,
    act: Activation,
) -> Result<(Var, Option<(Tensor, Tensor)>)> {
    const OP: &str = "batch_norm_train";
    let l = layout(tape, OP, x)?;
    check_eps(OP, eps)?;
    check_train_count(OP, tape.shape(x), &l)?;
    let affine = affine_values(tape, OP, x, affine, l.c)?;
    let (norm, new_running) = train_statistics(OP, tape.value(x), &l, eps, &affine, running, act)?;
    let y = normalize(tape, OP, x, l, affine, norm, Mode { train: true, act })?;
    Ok((y, new_running))
}

/// The batch statistics of a training-mode forward of `xv` (laid out as `l`, more than one value
/// per channel), and with `running` the new running `(mean, var)`: on the CPU the mean and `1/σ`;
/// on a GPU also the normalised output (with `affine` and `act`), which the same launches write.
fn train_statistics(
    op: &'static str,
    xv: &Tensor,
    l: &ChannelLayout,
    eps: f32,
    affine: &Option<Affine>,
    running: Option<RunningStats<'_>>,
    act: Activation,
) -> Result<(Norm, Option<(Tensor, Tensor)>)> {
    let count = l.per_channel();
    if let Some(r) = &running {
        check_running(op, xv, r, l.c)?;
    }
    let device = xv.device();
    Ok(match xv.storage() {
        Data::Cpu(data) => {
            let (mean, m2) = k::channel_moments(data, l);
            let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
            let new_running = match running {
                Some(r) => {
                    let var_unbiased: Vec<f32> = m2
                        .iter()
                        .map(|&s| (s / (count - 1) as f64) as f32)
                        .collect();
                    Some((
                        blend(r.mean, &mean, r.momentum)?,
                        blend(r.var, &var_unbiased, r.momentum)?,
                    ))
                }
                None => None,
            };
            let norm = Normalizer {
                mean,
                inv_std: inv_std(m2.iter().map(|&s| s / count as f64), eps),
            };
            (Norm::Cpu(norm), new_running)
        }
        Data::Gpu(exec, data) => {
            let running = running.map(|r| g::Running {
                mean: buffer(r.mean),
                var: buffer(r.var),
                momentum: r.momentum,
            });
            let out = g::train_forward(exec, data, l, eps, affine_buffers(affine), running, act)?;
            let new_running = match out.running {
                Some((m, v)) => Some((
                    Tensor::from_buffer(m, &[l.c], device)?,
                    Tensor::from_buffer(v, &[l.c], device)?,
                )),
                None => None,
            };
            let norm = GpuNorm {
                y: out.y,
                mean: Tensor::from_buffer(out.mean, &[l.c], device)?,
                inv_std: out.inv_std,
                scale: out.scale,
            };
            (Norm::Gpu(Box::new(norm)), new_running)
        }
    })
}

/// The batch statistics of a training-mode batch norm of `x`, a tensor on the CPU laid out as `l`
/// (more than one value per channel), without affine parameters, and with `running` the new
/// running `(mean, var)`: what the fused DARTS mixed op (`ops::mixed`) normalises its candidates
/// with, as [`batch_norm_train`] would.
pub(crate) fn train_normalizer_cpu(
    op: &'static str,
    x: &Tensor,
    l: &ChannelLayout,
    eps: f32,
    running: Option<RunningStats<'_>>,
) -> Result<(Normalizer, Option<(Tensor, Tensor)>)> {
    match train_statistics(op, x, l, eps, &None, running, Activation::Identity)? {
        (Norm::Cpu(norm), running) => Ok((norm, running)),
        (Norm::Gpu(_), _) => Err(Error::invalid(
            op,
            "a GPU tensor where the CPU was expected",
        )),
    }
}

/// Fails unless every channel of `l` has more than one value, as training needs.
pub(crate) fn check_train_count(
    op: &'static str,
    shape: &[usize],
    l: &ChannelLayout,
) -> Result<()> {
    if l.per_channel() < 2 {
        return Err(Error::invalid(
            op,
            format!("training needs more than 1 value per channel, got input shape {shape:?}"),
        ));
    }
    Ok(())
}

/// Eval-mode batch norm with the given running statistics (`[C]` each):
/// `y = (x − running_mean)/√(running_var + eps)·γ + β`, then `act`. The statistics are
/// constants; the gradient flows to x and to γ, β.
pub fn batch_norm_eval(
    tape: &mut Tape,
    x: Var,
    affine: Option<(Var, Var)>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
    act: Activation,
) -> Result<Var> {
    const OP: &str = "batch_norm_eval";
    let l = layout(tape, OP, x)?;
    check_eps(OP, eps)?;
    check_channels(OP, "running_mean", running_mean.shape(), l.c)?;
    check_channels(OP, "running_var", running_var.shape(), l.c)?;
    common_device(OP, &[tape.value(x), running_mean, running_var])?;
    let affine = affine_values(tape, OP, x, affine, l.c)?;
    let norm = match running_var.storage() {
        Data::Cpu(var) => Norm::Cpu(Normalizer {
            mean: running_mean.to_vec(),
            inv_std: inv_std(var.iter().map(|&v| v as f64), eps),
        }),
        Data::Gpu(exec, var) => {
            let mean = buffer(running_mean);
            let c = g::eval_coefficients(exec, mean, var, eps, affine_buffers(&affine))?;
            let x = buffer(tape.value(x));
            Norm::Gpu(Box::new(GpuNorm {
                y: g::scale_shift(exec, x, &l, &c.scale, Some(&c.shift), act)?,
                mean: running_mean.clone(),
                inv_std: c.inv_std,
                scale: c.scale,
            }))
        }
    };
    normalize(tape, OP, x, l, affine, norm, Mode { train: false, act })
}
