//! The architect (`architect.py`): one update of the architecture parameters α per training step.
//!
//! DARTS solves the bilevel problem min_α L_val(w*(α), α) with w*(α) = argmin_w L_train(w, α).
//!
//! * **First order** (ξ = 0): g_α = ∇_α L_val(w, α).
//! * **Second order** (`--unrolled`): approximate w*(α) by one virtual momentum-SGD step
//!   w' = w − ξ·(μ·b + ∇_w L_train(w, α) + λ·w), where b is the optimizer's momentum buffer,
//!   ξ the current learning rate, μ the momentum and λ the weight decay. By the chain rule
//!   ∇_α L_val(w', α) = d_α − ξ · ∇²_{α,w} L_train(w, α) · v, with d_α = ∇_α L_val(w', α) and
//!   v = ∇_{w'} L_val(w', α). The Hessian-vector product is a central finite difference around w:
//!   ∇²_{α,w} L_train · v ≈ (∇_α L_train(w + εv, α) − ∇_α L_train(w − εv, α)) / 2ε with
//!   ε = 0.01 / ‖v‖.
//!
//! Then Adam (with its coupled weight decay) updates α. Every pass runs in training mode, and
//! as in the original the virtual step and both finite-difference passes update the model's
//! batch-norm running statistics while the pass on w' updates only the copy's. Unlike the
//! original, which perturbs w in place (w + εv − 2εv + εv), w is restored exactly.

use crate::autograd::Var;
use crate::nn::{Ctx, Gradients, ParamStore};
use crate::ops::softmax::cross_entropy;
use crate::optim::adam::Adam;
use crate::optim::optimizer::Optimizer;
use crate::optim::sgd::Sgd;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A network with architecture parameters α that the architect can differentiate: the CNN
/// search network, or any other supernet (the tests use a small smooth one).
pub trait Supernet {
    /// Class logits `[N, classes]` for `x`, given the α variables (one per α tensor).
    fn logits(&self, ctx: &mut Ctx, x: Var, alphas: &[Var]) -> Result<Var>;
}

/// A batch of images `[N, C, H, W]` with one class label per image.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub images: &'a Tensor,
    pub labels: &'a [usize],
}

/// What a forward/backward pass is asked to differentiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrt {
    /// Only α (the weights are constants).
    Alphas,
    /// Only the weights (α are constants).
    Weights,
    /// Both.
    Both,
}

/// The loss of one pass and the gradients asked for.
pub struct PassResult {
    /// The mean cross-entropy.
    pub loss: f32,
    /// Correctly classified images of the batch.
    pub correct: usize,
    /// ∂L/∂α, one per α tensor (zeros when α were constants).
    pub alpha_grads: Vec<Tensor>,
    /// ∂L/∂w per weight (empty unless the weights were differentiated).
    pub weight_grads: Gradients,
}

/// One training-mode forward and backward of the search network on `batch`.
pub fn loss_pass(
    net: &dyn Supernet,
    store: &mut ParamStore,
    alphas: &[Tensor],
    batch: Batch,
    wrt: Wrt,
) -> Result<PassResult> {
    let mut ctx = if wrt == Wrt::Alphas {
        Ctx::frozen(store, true)
    } else {
        Ctx::new(store, true)
    };
    let alpha_vars: Vec<Var> = alphas
        .iter()
        .map(|a| match wrt {
            Wrt::Weights => ctx.input(a.clone()),
            Wrt::Alphas | Wrt::Both => ctx.tape.leaf(a.clone()),
        })
        .collect();
    let x = ctx.input(batch.images.clone());
    let logits = net.logits(&mut ctx, x, &alpha_vars)?;
    let loss = cross_entropy(&mut ctx.tape, logits, batch.labels, 0.0)?;
    let (loss_tensor, logits) = (ctx.value(loss).clone(), ctx.value(logits).clone());
    // The backward is queued before the loss and the predictions are read: on a GPU, reading
    // them waits for the device, which then has the backward to work on meanwhile. A loss that
    // is not finite still stops the search before any update.
    let (weight_grads, alpha_grads) = ctx.backward_with(loss, &alpha_vars)?;
    let loss_value = loss_tensor.item()?;
    if !loss_value.is_finite() {
        return Err(Error::invalid(
            "search",
            format!("the loss is {loss_value}: training diverged"),
        ));
    }
    let predictions = crate::ops::softmax::argmax_rows(&logits)?;
    let correct = predictions
        .iter()
        .zip(batch.labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(PassResult {
        loss: loss_value,
        correct,
        alpha_grads,
        weight_grads,
    })
}

/// Settings of the architect; defaults are the original's CIFAR-10 search.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ArchitectConfig {
    /// Adam learning rate for α (3e-4).
    pub arch_learning_rate: f32,
    /// Adam's coupled L2 weight decay on α (1e-3).
    pub arch_weight_decay: f32,
    /// Second order (`--unrolled`) or first order.
    pub unrolled: bool,
    /// The weight optimizer's momentum μ, used by the virtual step (0.9).
    pub momentum: f32,
    /// The weight optimizer's weight decay λ, used by the virtual step (3e-4).
    pub weight_decay: f32,
}

impl Default for ArchitectConfig {
    fn default() -> Self {
        ArchitectConfig {
            arch_learning_rate: 3e-4,
            arch_weight_decay: 1e-3,
            unrolled: false,
            momentum: 0.9,
            weight_decay: 3e-4,
        }
    }
}

/// Updates α with Adam (betas 0.5, 0.999) from first- or second-order gradients.
pub struct Architect {
    config: ArchitectConfig,
    adam: Adam,
}

/// The finite-difference radius r of ε = r / ‖v‖.
const HVP_RADIUS: f64 = 0.01;

impl Architect {
    /// A fresh architect (Adam state empty).
    pub fn new(config: ArchitectConfig) -> Architect {
        Architect {
            config,
            adam: Adam::new(
                config.arch_learning_rate,
                (0.5, 0.999),
                1e-8,
                config.arch_weight_decay,
            ),
        }
    }

    /// Adam's state, for checkpoints.
    pub fn optimizer(&self) -> &Adam {
        &self.adam
    }

    /// Adam's state, for restoring checkpoints.
    pub fn optimizer_mut(&mut self) -> &mut Adam {
        &mut self.adam
    }

    /// The gradient of the validation loss with respect to α: first order, or the unrolled
    /// second-order approximation (see the module docs). `lr` is the current weight learning rate
    /// ξ and `sgd` the weight optimizer whose momentum buffers the virtual step reads (in the order
    /// of `store.trainable_ids()`). Returns the validation loss and one gradient per α tensor.
    #[allow(clippy::too_many_arguments)]
    pub fn alpha_gradient(
        &self,
        net: &dyn Supernet,
        store: &mut ParamStore,
        alphas: &[Tensor],
        train: Batch,
        val: Batch,
        lr: f32,
        sgd: &Sgd,
    ) -> Result<(f32, Vec<Tensor>)> {
        if !self.config.unrolled {
            let pass = loss_pass(net, store, alphas, val, Wrt::Alphas)?;
            return Ok((pass.loss, pass.alpha_grads));
        }
        let ids = store.trainable_ids();
        // 1. The virtual step w' = w − ξ(μb + g + λw), on the model (its BN statistics update).
        let g = loss_pass(net, store, alphas, train, Wrt::Weights)?.weight_grads;
        let mut unrolled = store.clone();
        for (i, &id) in ids.iter().enumerate() {
            let w = store.get(id);
            let grad = g.get(id).cloned().map_or_else(|| w.zeros_like(), Ok)?;
            // μb + g, then w − ξ(step + λw): each product rounded on its own, on any device.
            let step = match sgd.momentum_buffer(i) {
                Some(b) => b.lincomb(self.config.momentum, &grad, 1.0)?,
                None => grad,
            };
            let decayed = step.lincomb(1.0, w, self.config.weight_decay)?;
            let next = w.lincomb(1.0, &decayed, -lr)?;
            unrolled.set(id, next)?;
        }
        // 2. d_α and v on the unrolled copy (its BN statistics are discarded with it).
        let pass = loss_pass(net, &mut unrolled, alphas, val, Wrt::Both)?;
        let v = pass.weight_grads.aligned(&unrolled, &ids)?;
        let norm = f64::from(Tensor::global_norm(&v)?);
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(Error::invalid(
                "architect",
                format!("the unrolled gradient norm is {norm}"),
            ));
        }
        let eps = (HVP_RADIUS / norm) as f32;
        // 3. ∇_α L_train at w ± εv, each pass updating the model's BN statistics in turn.
        let alpha_grad_at = |sign: f32, store: &mut ParamStore| -> Result<Vec<Tensor>> {
            let mut perturbed = store.clone();
            for (&id, v) in ids.iter().zip(&v) {
                perturbed.set(id, store.get(id).lincomb(1.0, v, sign * eps)?)?;
            }
            let grads = loss_pass(net, &mut perturbed, alphas, train, Wrt::Alphas)?.alpha_grads;
            for id in store
                .ids()
                .filter(|&id| !store.is_trainable(id))
                .collect::<Vec<_>>()
            {
                store.set(id, perturbed.get(id).clone())?;
            }
            Ok(grads)
        };
        let plus = alpha_grad_at(1.0, store)?;
        let minus = alpha_grad_at(-1.0, store)?;
        // 4. g_α = d_α − ξ · (g⁺ − g⁻) / 2ε.
        let result = pass
            .alpha_grads
            .iter()
            .zip(plus.iter().zip(&minus))
            .map(|(d, (p, m))| {
                let hvp = p.lincomb(1.0, m, -1.0)?.scaled(1.0 / (2.0 * eps))?;
                d.lincomb(1.0, &hvp, -lr)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((pass.loss, result))
    }

    /// One architect step: the α gradient (first or second order) and an Adam update of α.
    /// Returns the validation loss.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        net: &dyn Supernet,
        store: &mut ParamStore,
        alphas: &mut [Tensor],
        train: Batch,
        val: Batch,
        lr: f32,
        sgd: &Sgd,
    ) -> Result<f32> {
        let (loss, grads) = self.alpha_gradient(net, store, alphas, train, val, lr, sgd)?;
        self.adam.step(alphas, &grads)?;
        Ok(loss)
    }
}
