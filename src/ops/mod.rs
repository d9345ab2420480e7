//! Ops: each family checks its arguments, runs the device kernel, and records on the tape how to
//! send the gradient back. The derivative rules sit beside the forward they belong to.

pub mod batchnorm;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod matmul;
pub mod pool;
pub mod reduce;
pub mod rnn;
pub mod shape;
pub mod softmax;

use crate::autograd::{Tape, Var};
use crate::{Error, Result};

/// Checks that two variables have equal shapes; `op` names the caller for the error.
pub fn same_shape(tape: &Tape, op: &'static str, a: Var, b: Var) -> Result<()> {
    if tape.shape(a) != tape.shape(b) {
        return Err(Error::shape(
            op,
            format!("{:?} (the first operand's shape)", tape.shape(a)),
            tape.shape(b),
        ));
    }
    Ok(())
}

/// Checks that a variable is 4-D (NCHW) and returns its dimensions.
pub fn nchw(tape: &Tape, op: &'static str, x: Var) -> Result<[usize; 4]> {
    match *tape.shape(x) {
        [n, c, h, w] => Ok([n, c, h, w]),
        ref other => Err(Error::shape(op, "4 dimensions (N, C, H, W)", other)),
    }
}
