//! `BatchNorm2d` with PyTorch's defaults (eps 1e-5, momentum 0.1, weight 1, bias 0).

use crate::Result;
use crate::autograd::Var;
use crate::nn::{Ctx, ParamId, ParamStore, join_name};
use crate::ops::batchnorm::{Activation, RunningStats, batch_norm_eval, batch_norm_train};
use crate::ops::elementwise::weighted_sum_at;
use crate::ops::mixed::{MixedTerm, normalized_weighted_sum_at};
use crate::tensor::Tensor;

/// PyTorch's BatchNorm2d epsilon.
pub const BN_EPS: f32 = 1e-5;
/// PyTorch's BatchNorm2d momentum: running ← 0.9·running + 0.1·batch.
pub const BN_MOMENTUM: f32 = 0.1;

/// Batch normalisation over (N, H, W) per channel, with running statistics for eval mode.
/// Entries: `{name}.weight`, `{name}.bias` (when affine), `{name}.running_mean`, `{name}.running_var`.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    affine: Option<(ParamId, ParamId)>,
    running_mean: ParamId,
    running_var: ParamId,
}

impl BatchNorm2d {
    /// Registers a batch norm over `channels` channels, affine or not (the DARTS search cells use
    /// `affine = false`).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        channels: usize,
        affine: bool,
    ) -> Result<BatchNorm2d> {
        let affine = if affine {
            let gamma =
                store.add_param(join_name(name, "weight"), Tensor::full(&[channels], 1.0)?)?;
            let beta = store.add_param(join_name(name, "bias"), Tensor::zeros(&[channels])?)?;
            Some((gamma, beta))
        } else {
            None
        };
        Ok(BatchNorm2d {
            affine,
            running_mean: store
                .add_buffer(join_name(name, "running_mean"), Tensor::zeros(&[channels])?)?,
            running_var: store.add_buffer(
                join_name(name, "running_var"),
                Tensor::full(&[channels], 1.0)?,
            )?,
        })
    }

    /// Training mode: normalise with batch statistics and fold them into the running buffers.
    /// Eval mode: normalise with the running buffers.
    pub fn forward(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        self.forward_then(ctx, x, Activation::Identity)
    }

    /// [`forward`](Self::forward), then `act`, in the same op (one pass over the data, one
    /// tensor kept for the backward).
    pub fn forward_then(&self, ctx: &mut Ctx, x: Var, act: Activation) -> Result<Var> {
        let affine = self.affine.map(|(g, b)| (ctx.param(g), ctx.param(b)));
        let mean = ctx.buffer(self.running_mean).clone();
        let var = ctx.buffer(self.running_var).clone();
        if ctx.training() {
            let running = RunningStats {
                mean: &mean,
                var: &var,
                momentum: BN_MOMENTUM,
            };
            let (y, new_running) =
                batch_norm_train(&mut ctx.tape, x, affine, BN_EPS, Some(running), act)?;
            let (mean, var) = new_running.expect("running statistics were given");
            ctx.set_buffer(self.running_mean, mean)?;
            ctx.set_buffer(self.running_var, var)?;
            Ok(y)
        } else {
            batch_norm_eval(&mut ctx.tape, x, affine, &mean, &var, BN_EPS, act)
        }
    }
}

/// The DARTS mixed op over candidates that each end in a batch norm or in none:
/// `Σₛ weights[at + s] · tₛ` with `tₛ = bn(xₛ)` for each `(xₛ, Some(bn))` of `terms` and `tₛ = xₛ`
/// for each `(xₛ, None)`, the weights read in place. With batch norms without affine parameters
/// (every one in the search cells) this is one op ([`normalized_weighted_sum_at`]), which takes
/// two launches for all the batch norms and the sum on a GPU each way in training (one in eval
/// mode), keeps none of the normalised outputs, and in training folds each batch's statistics
/// into its norm's running buffers; otherwise each batch norm runs, then [`weighted_sum_at`]. The
/// values are the same either way.
pub fn normalized_mixed_sum(
    ctx: &mut Ctx,
    terms: &[(Var, Option<&BatchNorm2d>)],
    weights: Var,
    at: usize,
) -> Result<Var> {
    let affine_free = terms
        .iter()
        .all(|(_, bn)| bn.is_none_or(|bn| bn.affine.is_none()));
    if !affine_free {
        let ts = terms
            .iter()
            .map(|&(x, bn)| match bn {
                Some(bn) => bn.forward(ctx, x),
                None => Ok(x),
            })
            .collect::<Result<Vec<_>>>()?;
        return weighted_sum_at(&mut ctx.tape, &ts, weights, at);
    }
    let running: Vec<Option<(Tensor, Tensor)>> = terms
        .iter()
        .map(|(_, bn)| {
            bn.map(|bn| {
                let mean = ctx.buffer(bn.running_mean).clone();
                (mean, ctx.buffer(bn.running_var).clone())
            })
        })
        .collect();
    let training = ctx.training();
    let mixed: Vec<MixedTerm<'_>> = terms
        .iter()
        .zip(&running)
        .map(|(&(x, _), running)| match running {
            Some((mean, var)) if training => MixedTerm::Normalized(
                x,
                Some(RunningStats {
                    mean,
                    var,
                    momentum: BN_MOMENTUM,
                }),
            ),
            Some((mean, var)) => MixedTerm::Eval { x, mean, var },
            None => MixedTerm::Plain(x),
        })
        .collect();
    let (y, new_running) = normalized_weighted_sum_at(&mut ctx.tape, &mixed, weights, at, BN_EPS)?;
    for (&(_, bn), new) in terms.iter().zip(new_running) {
        if let (Some(bn), Some((mean, var))) = (bn, new) {
            ctx.set_buffer(bn.running_mean, mean)?;
            ctx.set_buffer(bn.running_var, var)?;
        }
    }
    Ok(y)
}
