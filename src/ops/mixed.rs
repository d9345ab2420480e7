//! The end of a DARTS search edge as one op: the batch norms that close its candidates and the
//! weighted sum of their outputs, `y = Σₛ w[at + s] · tₛ` with `tₛ = BN(xₛ)` (training mode, no
//! affine parameters, as every batch norm of the search cells) or `tₛ = xₛ` (the identity).
//!
//! The values are those of the ops one by one ([`batch_norm_train`](super::batchnorm::
//! batch_norm_train) for each normalised candidate, then [`weighted_sum_at`](super::elementwise::
//! weighted_sum_at)), bit for bit, and so are the running statistics. The difference is what is
//! stored and launched. The op never keeps a `tₛ`: it keeps each batch norm's mean and `1/σ` per
//! channel (`[K, 2, C]` statistics) and recomputes `tₛ` from `xₛ` where the backward needs it, with
//! the forward's own float operations. On a GPU the forward is two launches for the whole edge
//! (the statistics of every batch norm, then one launch that normalises and sums), where the ops
//! one by one take seven and write, read back and keep six tensors the size of the output. With
//! `g = w[at + s] · dy` the gradient at `tₛ`, the batch norm's rule (derived in `ops::batchnorm`)
//! gives `dxₛ = inv_stdₛ · (g − mean(g) − tₛ · mean(g · tₛ))` per channel: two launches for every
//! `dxₛ`, where the ops one by one take a scale and two launches per batch norm (thirteen for a
//! DARTS edge of six). The input gradients differ from theirs by rounding alone.
//!
//! In eval mode (the validation passes of a search) the batch norms normalise with their running
//! statistics: the forward is one launch for the edge instead of thirteen (two per batch norm,
//! one for the sum), and `dxₛ = inv_stdₛ · g`.

use crate::autograd::{Tape, Var};
use crate::device::cpu::batchnorm::{ChannelLayout, TermStats};
use crate::device::cpu::{batchnorm as k, dot_f64, elementwise as cpu_elementwise};
use crate::device::gpu::mixed::{MAX_CANDIDATES, WeightRun};
use crate::device::gpu::{DeviceBuffer, Executor, batchnorm as g};
use crate::ops::batchnorm::{
    RunningStats, check_eps, check_running, check_train_count, inv_std, layout_of,
    train_normalizer_cpu,
};
use crate::ops::buffer;
use crate::ops::elementwise::check_mixed;
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

const OP: &str = "normalized_weighted_sum";

/// The new running `(mean, var)` of one term of [`normalized_weighted_sum_at`]: `None` for a plain
/// term, or a normalised one given no running statistics.
pub type NewRunning = Option<(Tensor, Tensor)>;

/// One candidate of [`normalized_weighted_sum_at`].
#[derive(Debug, Clone, Copy)]
pub enum MixedTerm<'a> {
    /// A candidate's output, summed as it is.
    Plain(Var),
    /// A candidate's output before its batch norm (training mode, no affine parameters), with
    /// the running statistics to fold the batch's into, if any.
    Normalized(Var, Option<RunningStats<'a>>),
    /// A candidate's output before its batch norm in eval mode (no affine parameters), which
    /// normalises with the running statistics (`[C]` each, on the candidate's device).
    Eval {
        /// The candidate's output.
        x: Var,
        /// The running mean.
        mean: &'a Tensor,
        /// The running variance.
        var: &'a Tensor,
    },
}

impl MixedTerm<'_> {
    /// The candidate's variable.
    fn var(&self) -> Var {
        match *self {
            MixedTerm::Plain(x) | MixedTerm::Normalized(x, _) | MixedTerm::Eval { x, .. } => x,
        }
    }
}

/// `Σₛ weights[at + s] · tₛ` over 1 to [`MAX_CANDIDATES`] `terms` of one shape (`[N, C, H, W]` or
/// `[N, C]`), `tₛ` the batch norm (with `eps`) of a [`MixedTerm::Normalized`] candidate (training
/// mode) or of a [`MixedTerm::Eval`] one (eval mode; the two do not mix), or a
/// [`MixedTerm::Plain`] one as it is; the weights are read in place, as
/// [`weighted_sum_at`](super::elementwise::weighted_sum_at) reads them. Also returns, per term,
/// the new running `(mean, var)` of a training-mode term given running statistics. The gradient
/// flows to every candidate and to the weights (see the module comment).
pub fn normalized_weighted_sum_at(
    tape: &mut Tape,
    terms: &[MixedTerm<'_>],
    weights: Var,
    at: usize,
    eps: f32,
) -> Result<(Var, Vec<NewRunning>)> {
    let xs: Vec<Var> = terms.iter().map(MixedTerm::var).collect();
    let w = check_mixed(tape, OP, &xs, weights, at)?;
    if xs.len() > MAX_CANDIDATES {
        return Err(Error::WrongInputCount {
            op: OP,
            expected: format!("at most {MAX_CANDIDATES}"),
            got: xs.len(),
        });
    }
    let shape = tape.shape(xs[0]).to_vec();
    let l = layout_of(OP, &shape)?;
    let normalized = normalized_flags(terms);
    let train = check_modes(tape, terms, &shape, &l, eps)?;
    let values: Vec<Tensor> = xs.iter().map(|&x| tape.value(x).clone()).collect();
    let Forward { y, stats, running } = match w.storage() {
        Data::Cpu(wd) => forward_cpu(terms, &values, &wd[at..], &l, eps)?,
        Data::Gpu(exec, wb) => forward_gpu(exec, terms, &values, wb, at, &l, eps)?,
    };
    let mut inputs = xs;
    inputs.push(weights);
    let y = tape.record(OP, y, &inputs, move |dy, needs| {
        let terms = Terms {
            xs: &values,
            normalized: &normalized,
            stats: &stats,
            train,
            l,
        };
        match (dy.storage(), w.storage()) {
            (Data::Cpu(d), Data::Cpu(_)) => backward_cpu(dy, d, terms, &w, at, needs),
            (Data::Gpu(exec, d), Data::Gpu(_, wb)) => {
                let run = WeightRun {
                    weights: wb,
                    offset: at,
                };
                backward_gpu(exec, dy, d, terms, &w, run, needs)
            }
            _ => Err(Error::invalid(
                "normalized_weighted_sum backward",
                format!("dy on {} and the weights on {}", dy.device(), w.device()),
            )),
        }
    });
    Ok((y, running))
}

/// Checks what the batch norms of `terms` need (laid out as `l`, of `shape`): a valid `eps`,
/// more than one value per channel in training, running statistics that fit the channels and
/// the device; and that training and eval-mode terms do not mix. Returns whether they train.
fn check_modes(
    tape: &Tape,
    terms: &[MixedTerm<'_>],
    shape: &[usize],
    l: &ChannelLayout,
    eps: f32,
) -> Result<bool> {
    let train = terms.iter().any(|t| matches!(t, MixedTerm::Normalized(..)));
    if train && terms.iter().any(|t| matches!(t, MixedTerm::Eval { .. })) {
        return Err(Error::invalid(
            OP,
            "training and eval-mode candidates together",
        ));
    }
    if terms.iter().any(|t| !matches!(t, MixedTerm::Plain(_))) {
        check_eps(OP, eps)?;
    }
    if train {
        check_train_count(OP, shape, l)?;
    }
    for term in terms {
        let (x, running) = match *term {
            MixedTerm::Normalized(x, Some(running)) => (x, running),
            MixedTerm::Eval { x, mean, var } => (
                x,
                RunningStats {
                    mean,
                    var,
                    momentum: 0.0,
                },
            ),
            _ => continue,
        };
        check_running(OP, tape.value(x), &running, l.c)?;
    }
    Ok(train)
}

/// What the forward hands on: the sum, the statistics the backward recomputes the terms from, and
/// the new running statistics.
struct Forward {
    y: Tensor,
    /// `[K, 2, C]`: per term, the mean and `1/σ` of each channel (zeros for a plain term).
    stats: Tensor,
    running: Vec<NewRunning>,
}

/// The forward on the CPU reference: each normalised term's statistics by the batch norm's own
/// arithmetic (the batch's in training, the running ones in eval mode), then one pass that
/// normalises and sums (`device::cpu::batchnorm::
/// mixed_normalized_sum`).
fn forward_cpu(
    terms: &[MixedTerm<'_>],
    values: &[Tensor],
    w: &[f32],
    l: &ChannelLayout,
    eps: f32,
) -> Result<Forward> {
    let c = l.c;
    let mut stats = vec![0.0; 2 * c * terms.len()];
    let mut running = Vec::with_capacity(terms.len());
    for ((term, x), rows) in terms.iter().zip(values).zip(stats.chunks_mut(2 * c)) {
        running.push(match *term {
            MixedTerm::Plain(_) => None,
            MixedTerm::Normalized(_, r) => {
                let (norm, new) = train_normalizer_cpu(OP, x, l, eps, r)?;
                rows[..c].copy_from_slice(&norm.mean);
                rows[c..].copy_from_slice(&norm.inv_std);
                new
            }
            MixedTerm::Eval { mean, var, .. } => {
                rows[..c].copy_from_slice(mean.data());
                let var = var.data().iter().map(|&v| v as f64);
                rows[c..].copy_from_slice(&inv_std(var, eps));
                None
            }
        });
    }
    let normalized: Vec<bool> = normalized_flags(terms);
    let xs: Vec<&[f32]> = values.iter().map(Tensor::data).collect();
    let y = k::mixed_normalized_sum(&xs, w, &term_stats(&stats, &normalized, c), l);
    Ok(Forward {
        y: Tensor::from_vec(y, values[0].shape())?,
        stats: Tensor::from_vec(stats, &[terms.len(), 2, c])?,
        running,
    })
}

/// Whether each term is batch-normalised.
fn normalized_flags(terms: &[MixedTerm<'_>]) -> Vec<bool> {
    (terms.iter())
        .map(|term| !matches!(term, MixedTerm::Plain(_)))
        .collect()
}

/// Each term's statistics in `stats` (`[K, 2, C]`), for the normalised ones.
fn term_stats<'a>(stats: &'a [f32], normalized: &[bool], c: usize) -> Vec<Option<TermStats<'a>>> {
    (stats.chunks(2 * c).zip(normalized))
        .map(|(rows, &norm)| {
            norm.then(|| {
                let (mean, inv_std) = rows.split_at(c);
                TermStats { mean, inv_std }
            })
        })
        .collect()
}

/// The forward on a GPU executor (`gpu::batchnorm::mixed_sum_forward`): two launches, no term
/// written.
fn forward_gpu(
    exec: &'static dyn Executor,
    terms: &[MixedTerm<'_>],
    values: &[Tensor],
    weights: &DeviceBuffer<f32>,
    at: usize,
    l: &ChannelLayout,
    eps: f32,
) -> Result<Forward> {
    let device = values[0].device();
    let inputs: Vec<g::MixedInput<'_>> = (terms.iter().zip(values))
        .map(|(term, x)| match *term {
            MixedTerm::Plain(_) => g::MixedInput::Plain(buffer(x)),
            MixedTerm::Normalized(_, r) => g::MixedInput::Normalized(
                buffer(x),
                r.map(|r| g::Running {
                    mean: buffer(r.mean),
                    var: buffer(r.var),
                    momentum: r.momentum,
                }),
            ),
            MixedTerm::Eval { mean, var, .. } => g::MixedInput::Eval {
                x: buffer(x),
                mean: buffer(mean),
                var: buffer(var),
            },
        })
        .collect();
    let run = WeightRun {
        weights,
        offset: at,
    };
    let out = g::mixed_sum_forward(exec, &inputs, run, l, eps)?;
    let channels = |b| Tensor::from_buffer(b, &[l.c], device);
    Ok(Forward {
        y: Tensor::from_buffer(out.y, values[0].shape(), device)?,
        stats: Tensor::from_buffer(out.stats, &[terms.len(), 2, l.c], device)?,
        running: (out.running.into_iter())
            .map(|r| r.map(|(m, v)| Ok((channels(m)?, channels(v)?))).transpose())
            .collect::<Result<_>>()?,
    })
}

/// The backward's view of the op's inputs.
#[derive(Clone, Copy)]
struct Terms<'a> {
    /// Each candidate's input.
    xs: &'a [Tensor],
    /// Whether each is batch-normalised.
    normalized: &'a [bool],
    /// The forward's `[K, 2, C]` statistics.
    stats: &'a Tensor,
    /// Whether they are the batch's (training) or the running ones (eval mode).
    train: bool,
    l: ChannelLayout,
}

/// The gradients (each candidate's where `needs` it, then the weights') on the CPU reference,
/// each normalised term recomputed from its input where it is needed, never stored.
fn backward_cpu(
    dy: &Tensor,
    d: &[f32],
    terms: Terms<'_>,
    w: &Tensor,
    at: usize,
    needs: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    let Terms {
        xs,
        normalized,
        stats,
        train,
        l,
    } = terms;
    let run = &w.data()[at..];
    let need_weights = needs[xs.len()];
    let mut dw = vec![0.0; w.numel()];
    let mut grads = Vec::with_capacity(needs.len());
    let all_stats = term_stats(stats.data(), normalized, l.c);
    for (s, (x, st)) in xs.iter().zip(all_stats).enumerate() {
        let dx = match (needs[s], st) {
            (false, _) => None,
            (true, Some(st)) if train => {
                Some(k::mixed_normalized_backward(d, run[s], x.data(), st, &l))
            }
            (true, Some(st)) => Some(k::mixed_eval_backward(d, run[s], st.inv_std, &l)),
            (true, None) => Some(cpu_elementwise::scale(d, run[s])),
        };
        grads.push(dx.map(|dx| Tensor::from_vec(dx, dy.shape())).transpose()?);
        if need_weights {
            dw[at + s] = match st {
                Some(st) => k::normalized_dot(d, x.data(), st, &l),
                None => dot_f64(d, x.data()),
            } as f32;
        }
    }
    grads.push(
        need_weights
            .then(|| Tensor::from_vec(dw, w.shape()))
            .transpose()?,
    );
    Ok(grads)
}

/// The gradients on a GPU executor: two launches for the candidates'
/// (`gpu::batchnorm::mixed_input_backward`), two for the weights'.
fn backward_gpu(
    exec: &'static dyn Executor,
    dy: &Tensor,
    d: &DeviceBuffer<f32>,
    terms: Terms<'_>,
    w: &Tensor,
    run: WeightRun<'_>,
    needs: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    let xs: Vec<&DeviceBuffer<f32>> = terms.xs.iter().map(buffer).collect();
    let device_terms = g::MixedTerms {
        xs: &xs,
        normalized: terms.normalized,
        stats: buffer(terms.stats),
        train: terms.train,
    };
    let count = xs.len();
    let l = &terms.l;
    let mut grads = (g::mixed_input_backward(exec, d, run, device_terms, l, &needs[..count])?)
        .into_iter()
        .map(|dx| {
            dx.map(|b| Tensor::from_buffer(b, dy.shape(), dy.device()))
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    grads.push(match needs[count] {
        true => Some(Tensor::from_buffer(
            g::mixed_weight_backward(exec, d, run, device_terms, l)?,
            w.shape(),
            dy.device(),
        )?),
        false => None,
    });
    Ok(grads)
}
