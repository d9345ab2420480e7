//! `Embedding`: a lookup table of `vocab` rows of `dim` features.

use crate::Result;
use crate::autograd::Var;
use crate::nn::{Ctx, ParamId, ParamStore, join_name};
use crate::ops::matmul::embedding;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// An embedding table (`{name}.weight`, shape `[vocab, dim]`).
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: ParamId,
}

impl Embedding {
    /// Registers a table initialised N(0, 1), PyTorch's default.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        vocab: usize,
        dim: usize,
        rng: &mut Rng,
    ) -> Result<Embedding> {
        let w = Tensor::normal(&[vocab, dim], 0.0, 1.0, rng)?;
        Ok(Embedding {
            weight: store.add_param(join_name(name, "weight"), w)?,
        })
    }

    /// The rows for `ids`: `[ids.len(), dim]`.
    pub fn forward(&self, ctx: &mut Ctx, ids: &[usize]) -> Result<Var> {
        let w = ctx.param(self.weight);
        embedding(&mut ctx.tape, w, ids)
    }
}
