//! The tape (a Wengert list): reverse-mode automatic differentiation in one screen.
//!
//! Every op that sees an input needing a gradient pushes a [`Node`] holding its input variables and
//! a `backward` closure that has captured exactly the tensors it needs. Most ops have one output;
//! a few compute several results in one go (a search edge's depthwise convolutions, one launch
//! for all) and record them with [`Tape::record_many`]. Because nodes are pushed in the order they
//! run, the tape is already topologically sorted: [`Tape::backward`] walks it in reverse, hands
//! each closure the gradients of its outputs, and adds (`+=`) what comes back into the gradients
//! of the inputs. Each closure is consumed as it runs, so what it saved is freed at once.
//! DARTS needs first derivatives only (its second-order term is a finite difference), so there is
//! no double backward.
//!
//! A variable read by many ops (a DARTS state feeds up to twenty candidate ops) receives as many
//! gradient contributions. Rather than adding each as it arrives, one launch per contribution, the
//! tape keeps up to [`SUM_TERMS`] of them and adds them in one pass ([`Tensor::sum_of`], in arrival
//! order, so with the bits of adding them one by one).

use std::time::Instant;

use crate::profile;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A handle to a value recorded on a [`Tape`]. Cheap to copy; meaningful only on its own tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(usize);

impl Var {
    /// The position of this variable on its tape.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Given the gradient of an op's output and which inputs need a gradient, returns one gradient per
/// input (`None` where not needed). Runs at most once.
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

/// The [`BackwardFn`] of an op with several outputs: given the gradient of each output (`None`
/// for an output that nothing downstream used), returns one gradient per input.
pub type BackwardManyFn =
    Box<dyn FnOnce(&[Option<Tensor>], &[bool]) -> Result<Vec<Option<Tensor>>>>;

/// The most gradient contributions a variable holds before they are added up: one GPU launch
/// adds this many (`device::gpu::mixed::MAX_CANDIDATES`), against one launch each when added as
/// they arrive, at the cost of keeping up to this many tensors instead of one.
pub const SUM_TERMS: usize = crate::device::gpu::mixed::MAX_CANDIDATES;

/// The gradient of one variable while the backward runs: the contributions so far, not yet added
/// (the first may be the sum of earlier ones).
#[derive(Default)]
struct GradTerms(Vec<Tensor>);

impl GradTerms {
    /// Adds `grad` to the terms; when they reach [`SUM_TERMS`], replaces them by their sum.
    fn push(&mut self, grad: Tensor) -> Result<()> {
        self.0.push(grad);
        if self.0.len() == SUM_TERMS {
            let total = Tensor::sum_of(&self.0)?;
            self.0 = vec![total];
        }
        Ok(())
    }

    /// The gradient, once every contribution is in: the sum of the terms (which then replaces
    /// them), `None` without any.
    fn total(&mut self) -> Result<Option<Tensor>> {
        if self.0.len() > 1 {
            let total = Tensor::sum_of(&self.0)?;
            self.0 = vec![total];
        }
        Ok(self.0.first().cloned())
    }
}

/// How a node sends its outputs' gradients back to its inputs.
enum NodeBackward {
    /// An op with one output.
    One(BackwardFn),
    /// An op with several outputs (consecutive variables on the tape).
    Many(BackwardManyFn),
}

/// One recorded op: its name, its inputs, its outputs (consecutive variables) and how to send
/// their gradients back through it.
struct Node {
    op: &'static str,
    inputs: Vec<Var>,
    outputs: std::ops::Range<usize>,
    backward: Option<NodeBackward>,
}

/// A record of the ops of one forward pass, for computing gradients.
#[derive(Default)]
pub struct Tape {
    values: Vec<Tensor>,
    requires_grad: Vec<bool>,
    nodes: Vec<Node>,
    /// When the previous op was recorded (only while profiling; see `crate::profile`).
    last_record: Option<Instant>,
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Tape {
        Tape {
            last_record: profile::enabled().then(Instant::now),
            ..Tape::default()
        }
    }

    /// Puts a tensor on the tape that needs no gradient (input data, labels, frozen weights).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.push_value(value, false)
    }

    /// Puts a tensor on the tape whose gradient will be asked for (a parameter).
    pub fn leaf(&mut self, value: Tensor) -> Var {
        self.push_value(value, true)
    }

    fn push_value(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.values.push(value);
        self.requires_grad.push(requires_grad);
        Var(self.values.len() - 1)
    }

    /// The value of a variable.
    pub fn value(&self, var: Var) -> &Tensor {
        &self.values[var.0]
    }

    /// The shape of a variable's value.
    pub fn shape(&self, var: Var) -> &[usize] {
        self.values[var.0].shape()
    }

    /// Whether a gradient flows into this variable from some leaf.
    pub fn requires_grad(&self, var: Var) -> bool {
        self.requires_grad[var.0]
    }

    /// The number of ops recorded for backward.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Records the result of an op. When none of `inputs` needs a gradient the closure is dropped
    /// and the output is a constant; otherwise the node is kept for [`Tape::backward`].
    pub fn record(
        &mut self,
        op: &'static str,
        output: Tensor,
        inputs: &[Var],
        backward: impl FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let outputs = self.record_node(op, vec![output], inputs, || {
            NodeBackward::One(Box::new(backward))
        });
        Var(outputs.start)
    }

    /// Records the results of an op with several outputs, like [`Tape::record`]: the closure gets
    /// the gradient of each output that received one.
    pub fn record_many(
        &mut self,
        op: &'static str,
        outputs: Vec<Tensor>,
        inputs: &[Var],
        backward: impl FnOnce(&[Option<Tensor>], &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Vec<Var> {
        let outputs = self.record_node(op, outputs, inputs, || {
            NodeBackward::Many(Box::new(backward))
        });
        outputs.map(Var).collect()
    }

    /// Puts `outputs` on the tape, and a node with the closure that `backward` makes when an
    /// input needs a gradient; returns the outputs' positions.
    fn record_node(
        &mut self,
        op: &'static str,
        outputs: Vec<Tensor>,
        inputs: &[Var],
        backward: impl FnOnce() -> NodeBackward,
    ) -> std::ops::Range<usize> {
        if let Some(last) = self.last_record {
            let now = Instant::now();
            profile::forward(op, now - last);
            self.last_record = Some(now);
        }
        let needs_grad = inputs.iter().any(|v| self.requires_grad[v.0]);
        let first = self.values.len();
        for output in outputs {
            self.push_value(output, needs_grad);
        }
        let outputs = first..self.values.len();
        if needs_grad {
            self.nodes.push(Node {
                op,
                inputs: inputs.to_vec(),
                outputs: outputs.clone(),
                backward: Some(backward()),
            });
        }
        outputs
    }

    /// Gradients of the scalar `loss` with respect to each of `wrt` (zeros for a variable the loss
    /// does not depend on). Consumes the recorded backward closures: call it once per tape.
    pub fn backward(&mut self, loss: Var, wrt: &[Var]) -> Result<Vec<Tensor>> {
        self.check_var(loss)?;
        if self.values[loss.0].numel() != 1 {
            return Err(Error::shape(
                "Tape::backward",
                "a one-element loss",
                self.values[loss.0].shape(),
            ));
        }
        let loss_value = &self.values[loss.0];
        let seed = Tensor::full_on(loss_value.shape(), 1.0, loss_value.device())?;
        self.backward_from(loss, seed, wrt)
    }

    /// Vector-Jacobian product: the gradients of `Σ output ⊙ seed` with respect to `wrt`.
    pub fn backward_from(&mut self, output: Var, seed: Tensor, wrt: &[Var]) -> Result<Vec<Tensor>> {
        self.check_var(output)?;
        for &v in wrt {
            self.check_var(v)?;
        }
        if seed.device() != self.values[output.0].device() {
            return Err(Error::invalid(
                "Tape::backward_from",
                format!(
                    "the seed is on {} but the output on {}",
                    seed.device(),
                    self.values[output.0].device()
                ),
            ));
        }
        if seed.shape() != self.values[output.0].shape() {
            return Err(Error::shape(
                "Tape::backward_from",
                format!("seed of the output's shape {:?}", self.shape(output)),
                seed.shape(),
            ));
        }
        let mut grads: Vec<GradTerms> = std::iter::repeat_with(GradTerms::default)
            .take(self.values.len())
            .collect();
        grads[output.0].push(seed)?;
        for node in self.nodes.iter_mut().rev() {
            let grads_out = (node.outputs.clone())
                .map(|v| std::mem::take(&mut grads[v]).total())
                .collect::<Result<Vec<_>>>()?;
            if grads_out.iter().all(Option::is_none) {
                continue;
            }
            let Some(backward) = node.backward.take() else {
                return Err(Error::invalid(
                    "Tape::backward",
                    "this tape's backward has already run",
                ));
            };
            let needs: Vec<bool> = node
                .inputs
                .iter()
                .map(|v| self.requires_grad[v.0])
                .collect();
            let input_grads = profile::backward(node.op, || match backward {
                NodeBackward::One(f) => match &grads_out[..] {
                    [Some(grad)] => f(grad, &needs),
                    _ => Err(Error::invalid(
                        "Tape::backward",
                        format!("`{}` has one output, without its gradient", node.op),
                    )),
                },
                NodeBackward::Many(f) => f(&grads_out, &needs),
            })?;
            if input_grads.len() != node.inputs.len() {
                return Err(Error::WrongInputCount {
                    op: node.op,
                    expected: format!("{} input gradients", node.inputs.len()),
                    got: input_grads.len(),
                });
            }
            // Last input first: an op that reads one variable several times (a group of ops on
            // one input) sends its gradients in the order in which the ops one by one would have
            // sent them, the last recorded first, so their sum has the same bits.
            for (input, grad) in node.inputs.iter().zip(input_grads).rev() {
                let Some(grad) = grad else { continue };
                if !self.requires_grad[input.0] {
                    continue;
                }
                if grad.shape() != self.values[input.0].shape() {
                    return Err(Error::shape(
                        node.op,
                        format!("input gradient of shape {:?}", self.values[input.0].shape()),
                        grad.shape(),
                    ));
                }
                grads[input.0].push(grad)?;
            }
            // The outputs' gradients (taken above) and the closure's saved tensors are dropped here.
        }
        wrt.iter()
            .map(|v| match grads[v.0].total()? {
                Some(g) => Ok(g),
                None => self.values[v.0].zeros_like(),
            })
            .collect()
    }

    fn check_var(&self, var: Var) -> Result<()> {
        if var.0 < self.values.len() {
            Ok(())
        } else {
            Err(Error::UnknownVar(var.0))
        }
    }
}
