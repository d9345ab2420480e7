//! `Ctx`: one forward pass of a model. It owns the tape, puts each parameter on it the first time
//! a layer asks for it, lets batch norm update its running buffers, and turns the loss into
//! gradients per parameter.

use crate::Result;
use crate::autograd::{Tape, Var};
use crate::nn::params::{ParamId, ParamStore};
use crate::tensor::Tensor;

/// The state of one forward pass over the parameters of a [`ParamStore`].
pub struct Ctx<'s> {
    /// The tape the ops record on.
    pub tape: Tape,
    store: &'s mut ParamStore,
    bound: Vec<Option<Var>>,
    training: bool,
    frozen: bool,
}

/// Gradients of a loss with respect to the parameters a forward pass used, indexed by parameter.
#[derive(Debug, Clone, Default)]
pub struct Gradients {
    by_index: Vec<Option<Tensor>>,
}

impl Gradients {
    /// The gradient of one parameter, if the forward pass used it.
    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.by_index.get(id.index()).and_then(Option::as_ref)
    }

    /// The gradients for `ids` in that order, zeros for a parameter the pass did not use
    /// (the layout optimizers take).
    pub fn aligned(&self, store: &ParamStore, ids: &[ParamId]) -> Result<Vec<Tensor>> {
        ids.iter()
            .map(|&id| match self.get(id) {
                Some(g) => Ok(g.clone()),
                None => store.get(id).zeros_like(),
            })
            .collect()
    }
}

impl<'s> Ctx<'s> {
    /// A forward pass in training mode (`training = true`: batch statistics, dropout on) or eval mode.
    pub fn new(store: &'s mut ParamStore, training: bool) -> Ctx<'s> {
        let n = store.ids().count();
        Ctx {
            tape: Tape::new(),
            store,
            bound: vec![None; n],
            training,
            frozen: false,
        }
    }

    /// A forward pass that treats every parameter as a constant: no weight gradient is computed,
    /// which is what the DARTS architect wants when it needs only ∂L/∂α.
    pub fn frozen(store: &'s mut ParamStore, training: bool) -> Ctx<'s> {
        Ctx {
            frozen: true,
            ..Ctx::new(store, training)
        }
    }

    /// Whether this pass is in training mode.
    pub fn training(&self) -> bool {
        self.training
    }

    /// The parameter as a variable on the tape: a leaf if trainable (and the pass is not frozen),
    /// a constant otherwise.
    pub fn param(&mut self, id: ParamId) -> Var {
        if let Some(var) = self.bound[id.index()] {
            return var;
        }
        let value = self.store.get(id).clone();
        let var = if self.store.is_trainable(id) && !self.frozen {
            self.tape.leaf(value)
        } else {
            self.tape.constant(value)
        };
        self.bound[id.index()] = Some(var);
        var
    }

    /// Input data as a constant on the tape.
    pub fn input(&mut self, value: Tensor) -> Var {
        self.tape.constant(value)
    }

    /// The current value of a buffer (or parameter).
    pub fn buffer(&self, id: ParamId) -> &Tensor {
        self.store.get(id)
    }

    /// Replaces a buffer's value (batch norm's running statistics).
    pub fn set_buffer(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        self.store.set(id, value)
    }

    /// The value of a variable.
    pub fn value(&self, var: Var) -> &Tensor {
        self.tape.value(var)
    }

    /// Gradients of the scalar `loss` for every trainable parameter this pass used.
    pub fn backward(&mut self, loss: Var) -> Result<Gradients> {
        Ok(self.backward_with(loss, &[])?.0)
    }

    /// Like [`Ctx::backward`], and also the gradients for `extra` variables that are not in the
    /// store (DARTS' architecture parameters), from the same reverse pass.
    pub fn backward_with(&mut self, loss: Var, extra: &[Var]) -> Result<(Gradients, Vec<Tensor>)> {
        let used: Vec<(usize, Var)> = self
            .bound
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .filter(|&(_, v)| self.tape.requires_grad(v))
            .collect();
        let mut vars: Vec<Var> = used.iter().map(|&(_, v)| v).collect();
        vars.extend_from_slice(extra);
        let mut grads = self.tape.backward(loss, &vars)?;
        let extra_grads = grads.split_off(used.len());
        let mut by_index = vec![None; self.bound.len()];
        for ((i, _), g) in used.into_iter().zip(grads) {
            by_index[i] = Some(g);
        }
        Ok((Gradients { by_index }, extra_grads))
    }
}
