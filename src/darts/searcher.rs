//! One iteration of the original's search loop (`train_search.py`): an architect step on α from a
//! validation batch, then a clipped momentum-SGD step on the weights from a training batch.

use crate::Result;
use crate::darts::architect::{Architect, Batch, Supernet, Wrt, loss_pass};
use crate::nn::ParamStore;
use crate::optim::sgd::Sgd;
use crate::profile;
use crate::tensor::Tensor;
use crate::train::optimizer_step;

/// Everything a search step changes: the weights, α, and the two optimizers.
pub struct Searcher {
    /// The network's weights and BN buffers.
    pub store: ParamStore,
    /// The architecture parameters.
    pub alphas: Vec<Tensor>,
    /// The weight optimizer (its momentum buffers also feed the second-order virtual step).
    pub sgd: Sgd,
    /// The architecture optimizer.
    pub architect: Architect,
}

/// What one step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Cross-entropy of the training batch (before the weight update).
    pub train_loss: f32,
    /// Correct predictions on the training batch.
    pub train_correct: usize,
    /// Cross-entropy of the validation batch seen by the architect.
    pub val_loss: f32,
}

impl Searcher {
    /// One search step at weight learning rate `lr` (also the ξ of the unrolled step), with the
    /// weight gradients clipped to global norm `grad_clip`.
    pub fn step(
        &mut self,
        net: &dyn Supernet,
        train: Batch,
        val: Batch,
        lr: f32,
        grad_clip: f32,
    ) -> Result<StepOutcome> {
        let val_loss = profile::phase("architect step", || {
            let Searcher {
                store,
                alphas,
                sgd,
                architect,
            } = self;
            architect.step(net, store, alphas, train, val, lr, sgd)
        })?;
        let pass = profile::phase("weight forward+backward", || {
            loss_pass(net, &mut self.store, &self.alphas, train, Wrt::Weights)
        })?;
        let ids = self.store.trainable_ids();
        profile::phase("weight update", || {
            optimizer_step(
                &mut self.store,
                &mut self.sgd,
                &ids,
                &pass.weight_grads,
                Some(grad_clip),
            )
        })?;
        Ok(StepOutcome {
            train_loss: pass.loss,
            train_correct: pass.correct,
            val_loss,
        })
    }
}
