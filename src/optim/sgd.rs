//! Stochastic gradient descent with momentum and L2 weight decay, as `torch.optim.SGD` (dampening
//! 0, no Nesterov).

use super::optimizer::{NamedState, Optimizer, check_grads, check_non_negative, check_state};
use crate::Result;
use crate::device::cpu::optim as cpu;
use crate::device::gpu::optim::{self as gpu, SgdParams};
use crate::ops::{buffer, common_device};
use crate::tensor::Tensor;

/// SGD: `d = g + wd·w`; with momentum `b = μ·b + d` (`b = d` on the first step, as PyTorch) and
/// `d = b`; then `w ← w − lr·d`.
#[derive(Debug, Clone)]
pub struct Sgd {
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    /// One momentum buffer per parameter once the first step with momentum has run.
    buffers: Vec<Tensor>,
}

impl Sgd {
    /// SGD with learning rate `lr`, momentum `μ` (0 for none) and L2 weight decay `wd`. The
    /// hyperparameters are checked at each step.
    pub fn new(lr: f32, momentum: f32, weight_decay: f32) -> Sgd {
        Sgd {
            lr,
            momentum,
            weight_decay,
            buffers: Vec::new(),
        }
    }

    /// The momentum factor `μ`.
    pub fn momentum(&self) -> f32 {
        self.momentum
    }

    /// The weight-decay factor `wd`.
    pub fn weight_decay(&self) -> f32 {
        self.weight_decay
    }

    /// The momentum buffer of parameter `i`; `None` before the first step or without momentum.
    /// (The DARTS architect reads it for its virtual step `w − ξ·(μ·b + g + wd·w)`.)
    pub fn momentum_buffer(&self, i: usize) -> Option<&Tensor> {
        self.buffers.get(i)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()> {
        const OP: &str = "Sgd::step";
        check_grads(OP, params, grads)?;
        check_non_negative(OP, "the learning rate", self.lr)?;
        check_non_negative(OP, "the momentum", self.momentum)?;
        check_non_negative(OP, "the weight decay", self.weight_decay)?;
        let hyper = SgdParams {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        };
        let first = self.buffers.is_empty();
        if hyper.momentum != 0.0 {
            if first {
                self.buffers = params
                    .iter()
                    .map(Tensor::zeros_like)
                    .collect::<Result<_>>()?;
            } else {
                check_state(OP, "momentum buffer", &self.buffers, params)?;
            }
        }
        let tensors: Vec<&Tensor> = params.iter().chain(grads).chain(&self.buffers).collect();
        let Some(exec) = common_device(OP, &tensors)?.executor()? else {
            for (i, (w, g)) in params.iter_mut().zip(grads).enumerate() {
                let b = self.buffers.get_mut(i).map(Tensor::host_mut).transpose()?;
                cpu::sgd_step(&hyper, w.host_mut()?, g.data(), b, first);
            }
            return Ok(());
        };
        // On a GPU, every parameter in one launch.
        let mut w = params
            .iter_mut()
            .map(Tensor::device_mut)
            .collect::<Result<Vec<_>>>()?;
        let g: Vec<_> = grads.iter().map(buffer).collect();
        let mut b = self
            .buffers
            .iter_mut()
            .map(Tensor::device_mut)
            .collect::<Result<Vec<_>>>()?;
        let b = (hyper.momentum != 0.0).then_some(&mut b[..]);
        gpu::sgd_step(exec, &hyper, &mut w, &g, b, first)?;
        Ok(())
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    /// `momentum.i` for every parameter `i`.
    fn state(&self) -> Vec<(String, Tensor)> {
        let buffers = self.buffers.iter().enumerate();
        buffers
            .map(|(i, b)| (format!("momentum.{i}"), b.clone()))
            .collect()
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        let mut state = NamedState::new("Sgd::load_state", state)?;
        let buffers = state.take_list("momentum");
        state.finish()?;
        self.buffers = buffers;
        Ok(())
    }
}
