//! The optimizer interface, and the bookkeeping every optimizer shares: argument checks, in-place
//! updates and named state for checkpoints.

use std::collections::HashMap;

use crate::tensor::Tensor;
use crate::{Error, Result};

/// A first-order optimizer with PyTorch semantics. It updates a list of parameter tensors in place
/// from their gradients; the list must come in the same order on every call, since the state
/// (momentum buffers, moment estimates, averages) is kept per position.
pub trait Optimizer {
    /// One update of every `params[i]` from `grads[i]` (equal counts, equal shapes).
    fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f32;
    /// Sets the learning rate (a schedule calls this once per epoch).
    fn set_lr(&mut self, lr: f32);
    /// The optimizer's state as named tensors (e.g. `momentum.3`), for checkpoints. Empty before
    /// the first step. Hyperparameters are not included.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Replaces the state with one that [`Optimizer::state`] returned, so that the next step
    /// continues exactly where the saved optimizer left off. Shapes are checked at that step.
    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()>;
}

/// Checks that there is one gradient per parameter, of the parameter's shape.
pub(crate) fn check_grads(op: &'static str, params: &[Tensor], grads: &[Tensor]) -> Result<()> {
    if params.len() != grads.len() {
        return Err(Error::WrongInputCount {
            op,
            expected: format!("{} gradients (one per parameter)", params.len()),
            got: grads.len(),
        });
    }
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        if p.shape() != g.shape() {
            return Err(Error::shape(
                op,
                format!("{:?} for the gradient of parameter {i}", p.shape()),
                g.shape(),
            ));
        }
    }
    Ok(())
}

/// Checks that per-position state (`what`, e.g. "momentum buffer") fits the parameters: one
/// tensor of the parameter's shape per parameter.
pub(crate) fn check_state(
    op: &'static str,
    what: &str,
    state: &[Tensor],
    params: &[Tensor],
) -> Result<()> {
    if state.len() != params.len() {
        return Err(Error::invalid(
            op,
            format!(
                "the optimizer holds {} {what}s but got {} parameters",
                state.len(),
                params.len()
            ),
        ));
    }
    for (i, (s, p)) in state.iter().zip(params).enumerate() {
        if s.shape() != p.shape() {
            return Err(Error::shape(
                op,
                format!("{:?} (the {what} of parameter {i})", s.shape()),
                p.shape(),
            ));
        }
    }
    Ok(())
}

/// Checks that a hyperparameter is finite and at least 0.
pub(crate) fn check_non_negative(op: &'static str, name: &str, value: f32) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{name} must be finite and non-negative, got {value}"),
        ))
    }
}

/// A step count as a tensor of shape `[2]`: its high and low 24-bit halves, each exact in f32, so
/// counts below 2⁴⁸ round-trip exactly.
pub(crate) fn count_to_tensor(count: u64) -> Tensor {
    let halves = vec![(count >> 24) as f32, (count & 0xFF_FFFF) as f32];
    Tensor::from_vec(halves, &[2]).expect("two values for shape [2]")
}

/// The inverse of [`count_to_tensor`]; `op` names the caller for the error.
pub(crate) fn count_from_tensor(op: &'static str, t: &Tensor) -> Result<u64> {
    let valid = |v: f32| v.fract() == 0.0 && (0.0..16_777_216.0).contains(&v);
    match *t.to_host()?.data() {
        [hi, lo] if t.shape() == [2] && valid(hi) && valid(lo) => {
            Ok(((hi as u64) << 24) | lo as u64)
        }
        _ => Err(Error::invalid(
            op,
            format!(
                "a step count must be two 24-bit integers of shape [2], got shape {:?}",
                t.shape()
            ),
        )),
    }
}

/// Named state being read back by `load_state`: entries are taken out by name, and whatever is
/// left at the end is an error, so a misspelt or stray name never passes silently.
pub(crate) struct NamedState {
    op: &'static str,
    entries: HashMap<String, Tensor>,
}

impl NamedState {
    /// Collects the entries, rejecting duplicate names.
    pub(crate) fn new(op: &'static str, state: Vec<(String, Tensor)>) -> Result<NamedState> {
        let mut entries = HashMap::with_capacity(state.len());
        for (name, tensor) in state {
            if entries.contains_key(&name) {
                return Err(Error::invalid(op, format!("state `{name}` appears twice")));
            }
            entries.insert(name, tensor);
        }
        Ok(NamedState { op, entries })
    }

    /// Takes `name`, if present.
    pub(crate) fn take(&mut self, name: &str) -> Option<Tensor> {
        self.entries.remove(name)
    }

    /// Takes `prefix.0`, `prefix.1`, … up to the first missing index (a later index is then left
    /// over and rejected by [`NamedState::finish`]).
    pub(crate) fn take_list(&mut self, prefix: &str) -> Vec<Tensor> {
        (0..)
            .map_while(|i| self.entries.remove(&format!("{prefix}.{i}")))
            .collect()
    }

    /// Succeeds when every entry has been taken; otherwise names the first leftover.
    pub(crate) fn finish(self) -> Result<()> {
        match self.entries.keys().min() {
            None => Ok(()),
            Some(name) => Err(Error::invalid(
                self.op,
                format!("unexpected state `{name}` (unknown name or a gap in the indices)"),
            )),
        }
    }
}
