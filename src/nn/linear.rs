//! `Linear`: `y = x·Wᵀ + b` with PyTorch's weight layout `[out, in]`.

use crate::Result;
use crate::autograd::Var;
use crate::nn::{Ctx, ParamId, ParamStore, join_name, uniform_fan_in};
use crate::ops::matmul::linear;
use crate::rng::Rng;

/// A fully connected layer (`{name}.weight`, `{name}.bias`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: ParamId,
    bias: Option<ParamId>,
}

impl Linear {
    /// Registers a layer from `d_in` to `d_out` features with PyTorch's default initialisation.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        (d_in, d_out): (usize, usize),
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Linear> {
        let weight = store.add_param(
            join_name(name, "weight"),
            uniform_fan_in(&[d_out, d_in], d_in, rng)?,
        )?;
        let bias = if bias {
            Some(store.add_param(
                join_name(name, "bias"),
                uniform_fan_in(&[d_out], d_in, rng)?,
            )?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Applies the layer to `x: [N, d_in]`.
    pub fn forward(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        let w = ctx.param(self.weight);
        let b = self.bias.map(|b| ctx.param(b));
        linear(&mut ctx.tape, x, w, b)
    }
}
