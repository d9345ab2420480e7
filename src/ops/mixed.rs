//! The end of a DARTS search edge as one op: the batch norms that close its candidates and the
//! weighted sum of their outputs, `y = Σₛ w[at + s] · tₛ` with `tₛ = BN(xₛ)` (training mode, no
//! affine parameters, as every batch norm of the search cells) or `tₛ = xₛ` (the identity).
//!
//! The values are those of the ops one by one ([`batch_norm_train`](super::batchnorm::
//! batch_norm_train) for each normalised candidate, then [`weighted_sum_at`](super::elementwise::
//! weighted_sum_at)), bit for bit. The backward is where they differ. With `g = w[at + s] · dy`
//! the gradient at `tₛ`, the batch norm's rule (derived in `ops::batchnorm`) gives
//! `dxₛ = inv_stdₛ · (g − mean(g) − x̂ₛ · mean(g · x̂ₛ))` per channel, and `x̂ₛ` is `tₛ` itself:
//! so the backward reads `tₛ` (which the weights' gradient `Σ dy · tₛ` reads anyway) and `1/σ`,
//! not `xₛ` and the mean, and on a GPU computes every `dxₛ` in two launches, where the ops one by
//! one take a scale and two launches per batch norm (thirteen for a DARTS edge of six). The
//! input gradients differ from theirs by rounding alone (`tₛ` is `x̂ₛ` rounded once more).

use crate::autograd::{Tape, Var};
use crate::device::cpu::batchnorm::ChannelLayout;
use crate::device::cpu::{batchnorm as k, elementwise as cpu_elementwise};
use crate::device::gpu::batchnorm as g;
use crate::device::gpu::mixed::{MAX_CANDIDATES, WeightRun};
use crate::ops::batchnorm::{RunningStats, layout_of, train_normalized_many};
use crate::ops::buffer;
use crate::ops::elementwise::{check_mixed, mixed_backward_weights, mixed_forward};
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

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
}

impl MixedTerm<'_> {
    /// The candidate's variable.
    fn var(&self) -> Var {
        match *self {
            MixedTerm::Plain(x) | MixedTerm::Normalized(x, _) => x,
        }
    }
}

/// `Σₛ weights[at + s] · tₛ` over 1 to [`MAX_CANDIDATES`] `terms` of one shape (`[N, C, H, W]` or
/// `[N, C]`), `tₛ` the batch norm of a [`MixedTerm::Normalized`] candidate (with `eps`) or a
/// [`MixedTerm::Plain`] one as it is; the weights are read in place, as
/// [`weighted_sum_at`](super::elementwise::weighted_sum_at) reads them. Also returns, per term,
/// the new running `(mean, var)` of a normalised term given running statistics. The gradient flows
/// to every candidate and to the weights (see the module comment).
pub fn normalized_weighted_sum_at(
    tape: &mut Tape,
    terms: &[MixedTerm<'_>],
    weights: Var,
    at: usize,
    eps: f32,
) -> Result<(Var, Vec<NewRunning>)> {
    const OP: &str = "normalized_weighted_sum";
    let xs: Vec<Var> = terms.iter().map(MixedTerm::var).collect();
    let w = check_mixed(tape, OP, &xs, weights, at)?;
    if xs.len() > MAX_CANDIDATES {
        return Err(Error::WrongInputCount {
            op: OP,
            expected: format!("at most {MAX_CANDIDATES}"),
            got: xs.len(),
        });
    }
    let l = layout_of(OP, tape.shape(xs[0]))?;
    // The normalised terms' batch norms, all at once (one launch for their statistics on a GPU).
    let (normalized, running): (Vec<&Tensor>, Vec<Option<RunningStats<'_>>>) = (terms.iter())
        .filter_map(|term| match *term {
            MixedTerm::Normalized(x, running) => Some((tape.value(x), running)),
            MixedTerm::Plain(_) => None,
        })
        .unzip();
    let mut normalized = train_normalized_many(OP, &normalized, eps, &running)?.into_iter();
    let mut ts = Vec::with_capacity(terms.len());
    let mut inv_stds = Vec::with_capacity(terms.len());
    let mut new_running = Vec::with_capacity(terms.len());
    for term in terms {
        match *term {
            MixedTerm::Plain(x) => {
                ts.push(tape.value(x).clone());
                inv_stds.push(None);
                new_running.push(None);
            }
            MixedTerm::Normalized(..) => {
                let n = normalized.next().expect("one result per normalised term");
                ts.push(n.y);
                inv_stds.push(Some(n.inv_std));
                new_running.push(n.running);
            }
        }
    }
    let y = mixed_forward(&ts, &w, at)?;
    let mut inputs = xs;
    inputs.push(weights);
    let y = tape.record(OP, y, &inputs, move |dy, needs| {
        let count = ts.len();
        let mut grads = input_grads(dy, &ts, &inv_stds, &w, at, &l, &needs[..count])?;
        grads.push(match needs[count] {
            true => Some(mixed_backward_weights(dy, &ts, &w, at)?),
            false => None,
        });
        Ok(grads)
    });
    Ok((y, new_running))
}

/// The candidates' gradients where `needs` them, on the inputs' device: a normalised term's
/// through its batch norm (`inv_std` given), a plain term's `w[at + s] · dy`.
fn input_grads(
    dy: &Tensor,
    ts: &[Tensor],
    inv_stds: &[Option<Tensor>],
    w: &Tensor,
    at: usize,
    l: &ChannelLayout,
    needs: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    match (dy.storage(), w.storage()) {
        (Data::Cpu(d), Data::Cpu(wd)) => (ts.iter().zip(inv_stds).zip(needs).enumerate())
            .map(|(s, ((t, inv_std), &need))| {
                if !need {
                    return Ok(None);
                }
                let weight = wd[at + s];
                let dx = match inv_std {
                    Some(inv_std) => {
                        k::mixed_normalized_backward(d, weight, t.data(), inv_std.data(), l)
                    }
                    None => cpu_elementwise::scale(d, weight),
                };
                Ok(Some(Tensor::from_vec(dx, dy.shape())?))
            })
            .collect(),
        (Data::Gpu(exec, d), Data::Gpu(_, wb)) => {
            let terms: Vec<g::MixedTerm<'_>> = ts
                .iter()
                .zip(inv_stds)
                .map(|(t, inv_std)| g::MixedTerm {
                    t: buffer(t),
                    inv_std: inv_std.as_ref().map(buffer),
                })
                .collect();
            let run = WeightRun {
                weights: wb,
                offset: at,
            };
            g::mixed_input_backward(exec, d, run, &terms, l, needs)?
                .into_iter()
                .map(|dx| {
                    dx.map(|b| Tensor::from_buffer(b, dy.shape(), dy.device()))
                        .transpose()
                })
                .collect()
        }
        _ => Err(Error::invalid(
            "normalized_weighted_sum backward",
            format!("dy on {} and the weights on {}", dy.device(), w.device()),
        )),
    }
}
