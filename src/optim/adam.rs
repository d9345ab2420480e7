//! Adam with coupled L2 weight decay, as `torch.optim.Adam` (not AdamW, no AMSGrad).

use super::optimizer::{
    NamedState, Optimizer, check_grads, check_non_negative, check_state, count_from_tensor,
    count_to_tensor,
};
use crate::device::cpu::optim as cpu;
use crate::device::gpu::optim::{self as gpu, AdamParams};
use crate::ops::{buffer, common_device};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Adam: at step `t`, `g ← g + wd·w`, `m ← β₁·m + (1−β₁)·g`, `v ← β₂·v + (1−β₂)·g²`, then
/// `w ← w − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)` (bias-corrected moments, as PyTorch computes it).
#[derive(Debug, Clone)]
pub struct Adam {
    lr: f32,
    betas: (f32, f32),
    eps: f32,
    weight_decay: f32,
    /// Steps taken so far.
    step: u64,
    /// First-moment estimates `m`, one per parameter once stepping has begun.
    exp_avg: Vec<Tensor>,
    /// Second-moment estimates `v`.
    exp_avg_sq: Vec<Tensor>,
}

impl Adam {
    /// Adam with learning rate `lr`, moment decay rates `betas = (β₁, β₂)` in [0, 1), `eps` added
    /// to the denominator and L2 weight decay `wd` added to the gradient. The hyperparameters are
    /// checked at each step.
    pub fn new(lr: f32, betas: (f32, f32), eps: f32, weight_decay: f32) -> Adam {
        Adam {
            lr,
            betas,
            eps,
            weight_decay,
            step: 0,
            exp_avg: Vec::new(),
            exp_avg_sq: Vec::new(),
        }
    }

    fn check_hyperparameters(&self, op: &'static str) -> Result<()> {
        check_non_negative(op, "the learning rate", self.lr)?;
        check_non_negative(op, "eps", self.eps)?;
        check_non_negative(op, "the weight decay", self.weight_decay)?;
        for beta in [self.betas.0, self.betas.1] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(
                    op,
                    format!("the betas must lie in [0, 1), got {beta}"),
                ));
            }
        }
        Ok(())
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()> {
        const OP: &str = "Adam::step";
        check_grads(OP, params, grads)?;
        self.check_hyperparameters(OP)?;
        if self.step == 0 {
            self.exp_avg = params
                .iter()
                .map(Tensor::zeros_like)
                .collect::<Result<_>>()?;
            self.exp_avg_sq = self.exp_avg.clone();
        } else {
            check_state(OP, "first moment", &self.exp_avg, params)?;
            check_state(OP, "second moment", &self.exp_avg_sq, params)?;
        }
        self.step += 1;
        let hyper = AdamParams {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
        };
        let step = self.step;
        for ((w, g), (m, v)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut()))
        {
            common_device(OP, &[w, g, m, v])?;
            match w.device().executor()? {
                None => cpu::adam_step(
                    &hyper,
                    step,
                    w.host_mut()?,
                    g.data(),
                    m.host_mut()?,
                    v.host_mut()?,
                ),
                Some(exec) => gpu::adam_step(
                    exec,
                    &hyper,
                    step,
                    w.device_mut()?,
                    buffer(g),
                    m.device_mut()?,
                    v.device_mut()?,
                )?,
            }
        }
        Ok(())
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    /// `step` (see [`count_to_tensor`]), and `exp_avg.i`, `exp_avg_sq.i` for every parameter `i`.
    fn state(&self) -> Vec<(String, Tensor)> {
        if self.step == 0 {
            return Vec::new();
        }
        let mut state = vec![("step".to_string(), count_to_tensor(self.step))];
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            state.push((format!("exp_avg.{i}"), m.clone()));
            state.push((format!("exp_avg_sq.{i}"), v.clone()));
        }
        state
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        const OP: &str = "Adam::load_state";
        let mut state = NamedState::new(OP, state)?;
        let step = state.take("step");
        let exp_avg = state.take_list("exp_avg");
        let exp_avg_sq = state.take_list("exp_avg_sq");
        state.finish()?;
        let step = match step {
            Some(t) => count_from_tensor(OP, &t)?,
            None => 0,
        };
        if exp_avg.len() != exp_avg_sq.len() || (step == 0 && !exp_avg.is_empty()) {
            return Err(Error::invalid(
                OP,
                format!(
                    "inconsistent state: step {step} with {} first and {} second moments",
                    exp_avg.len(),
                    exp_avg_sq.len()
                ),
            ));
        }
        check_state(OP, "second moment", &exp_avg_sq, &exp_avg)?;
        self.step = step;
        self.exp_avg = exp_avg;
        self.exp_avg_sq = exp_avg_sq;
        Ok(())
    }
}
