//! Averaged SGD, as `torch.optim.ASGD`: SGD with a decaying step size that also keeps a running
//! average `ax` of the iterates (Polyak averaging). DARTS-RNN switches to it late in training and
//! evaluates with the averages.

use super::optimizer::{
    NamedState, Optimizer, check_grads, check_non_negative, check_state, count_from_tensor,
    count_to_tensor,
};
use crate::device::cpu::optim as cpu;
use crate::device::gpu::optim::{self as gpu, AsgdParams};
use crate::ops::{buffer, common_device};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// ASGD. At step `t` (from 1), with `η` and `μ` left by the previous step (`η = lr`, `μ = 1` at
/// first): `g ← g + wd·w`, `w ← w·(1 − λη) − η·g`, then `ax ← w` if `μ = 1`, else
/// `ax ← ax + μ·(w − ax)`; finally `η = lr / (1 + λ·lr·t)^α` and `μ = 1 / max(1, t − t₀)`.
#[derive(Debug, Clone)]
pub struct Asgd {
    lr: f32,
    lambd: f32,
    alpha: f32,
    t0: f32,
    weight_decay: f32,
    /// Steps taken so far.
    step: u64,
    /// The current step size `η` (stored in f32, as PyTorch does).
    eta: f32,
    /// The current averaging weight `μ`.
    mu: f32,
    /// The averages `ax`, one per parameter once stepping has begun.
    ax: Vec<Tensor>,
}

impl Asgd {
    /// ASGD with learning rate `lr`, decay term `lambd` (λ), power `alpha` (α) of the step-size
    /// decay, averaging start `t0` (t₀, in steps) and L2 weight decay. PyTorch's defaults are
    /// `(0.01, 1e-4, 0.75, 1e6, 0)`; DARTS-RNN uses `lambd = 0`, `t0 = 0`. The hyperparameters
    /// are checked at each step.
    pub fn new(lr: f32, lambd: f32, alpha: f32, t0: f32, weight_decay: f32) -> Asgd {
        Asgd {
            lr,
            lambd,
            alpha,
            t0,
            weight_decay,
            step: 0,
            eta: lr,
            mu: 1.0,
            ax: Vec::new(),
        }
    }

    /// The running averages `ax` of the parameters, in parameter order (empty before the first
    /// step): the weights to evaluate with.
    pub fn averaged(&self) -> &[Tensor] {
        &self.ax
    }
}

impl Optimizer for Asgd {
    fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()> {
        const OP: &str = "Asgd::step";
        check_grads(OP, params, grads)?;
        check_non_negative(OP, "the learning rate", self.lr)?;
        check_non_negative(OP, "lambd", self.lambd)?;
        check_non_negative(OP, "alpha", self.alpha)?;
        check_non_negative(OP, "t0", self.t0)?;
        check_non_negative(OP, "the weight decay", self.weight_decay)?;
        if self.step == 0 {
            self.ax = params
                .iter()
                .map(Tensor::zeros_like)
                .collect::<Result<_>>()?;
            self.eta = self.lr;
            self.mu = 1.0;
        } else {
            check_state(OP, "average", &self.ax, params)?;
        }
        self.step += 1;
        let hyper = AsgdParams {
            eta: self.eta,
            mu: self.mu,
            lambd: self.lambd,
            weight_decay: self.weight_decay,
        };
        for ((w, g), ax) in params.iter_mut().zip(grads).zip(self.ax.iter_mut()) {
            common_device(OP, &[w, g, ax])?;
            match w.device().executor()? {
                None => cpu::asgd_step(&hyper, w.host_mut()?, g.data(), ax.host_mut()?),
                Some(exec) => {
                    gpu::asgd_step(exec, &hyper, w.device_mut()?, buffer(g), ax.device_mut()?)?
                }
            }
        }
        let (t, lr) = (self.step as f64, self.lr as f64);
        self.eta = (lr / (1.0 + self.lambd as f64 * lr * t).powf(self.alpha as f64)) as f32;
        self.mu = (1.0 / (t - self.t0 as f64).max(1.0)) as f32;
        Ok(())
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    /// `step` (see [`count_to_tensor`]), `eta`, `mu` (scalars) and `ax.i` for every parameter `i`.
    fn state(&self) -> Vec<(String, Tensor)> {
        if self.step == 0 {
            return Vec::new();
        }
        let mut state = vec![
            ("step".to_string(), count_to_tensor(self.step)),
            ("eta".to_string(), Tensor::scalar(self.eta)),
            ("mu".to_string(), Tensor::scalar(self.mu)),
        ];
        let averages = self.ax.iter().enumerate();
        state.extend(averages.map(|(i, ax)| (format!("ax.{i}"), ax.clone())));
        state
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        const OP: &str = "Asgd::load_state";
        let mut state = NamedState::new(OP, state)?;
        let scalars = [state.take("step"), state.take("eta"), state.take("mu")];
        let ax = state.take_list("ax");
        state.finish()?;
        match scalars {
            [None, None, None] if ax.is_empty() => {
                self.step = 0;
                self.ax = Vec::new();
                Ok(())
            }
            [Some(step), Some(eta), Some(mu)] => {
                let (step, eta, mu) = (count_from_tensor(OP, &step)?, eta.item()?, mu.item()?);
                (self.step, self.eta, self.mu, self.ax) = (step, eta, mu, ax);
                Ok(())
            }
            _ => Err(Error::invalid(
                OP,
                "the state needs all of `step`, `eta` and `mu`, or nothing at all",
            )),
        }
    }
}
