//! `Conv2d`: a 2-D convolution layer (weight `[Cout, Cin/groups, kh, kw]`, optional bias).

use crate::autograd::Var;
use crate::nn::{Ctx, ParamId, ParamStore, join_name, uniform_fan_in};
use crate::ops::conv::{Conv2dArgs, Conv2dParams, conv2d};
use crate::rng::Rng;
use crate::{Error, Result};

/// A convolution layer whose parameters live in a [`ParamStore`] as `{name}.weight` and `{name}.bias`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: ParamId,
    bias: Option<ParamId>,
    params: Conv2dParams,
}

impl Conv2d {
    /// Registers a `kernel[0]×kernel[1]` convolution from `c_in` to `c_out` channels with
    /// PyTorch's default initialisation (fan_in = c_in/groups · kh · kw).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        (c_in, c_out): (usize, usize),
        kernel: [usize; 2],
        params: Conv2dParams,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        if params.groups == 0 || c_in % params.groups != 0 || c_out % params.groups != 0 {
            return Err(Error::invalid(
                "Conv2d::new",
                format!(
                    "groups {} must divide c_in {c_in} and c_out {c_out}",
                    params.groups
                ),
            ));
        }
        let fan_in = c_in / params.groups * kernel[0] * kernel[1];
        let w = uniform_fan_in(
            &[c_out, c_in / params.groups, kernel[0], kernel[1]],
            fan_in,
            rng,
        )?;
        let weight = store.add_param(join_name(name, "weight"), w)?;
        let bias = if bias {
            let b = uniform_fan_in(&[c_out], fan_in, rng)?;
            Some(store.add_param(join_name(name, "bias"), b)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            params,
        })
    }

    /// Applies the convolution to `x: [N, Cin, H, W]`.
    pub fn forward(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        let w = ctx.param(self.weight);
        let b = self.bias.map(|b| ctx.param(b));
        conv2d(&mut ctx.tape, x, w, b, self.params)
    }

    /// This convolution of `x`, for [`ops::conv::conv2d_many`](crate::ops::conv::conv2d_many) to
    /// run with others of its shape: its weight put on the tape, and its parameters. Fails if the
    /// layer has a bias, which that op does not take.
    pub fn args(&self, ctx: &mut Ctx, x: Var) -> Result<Conv2dArgs> {
        if self.bias.is_some() {
            return Err(Error::invalid(
                "Conv2d::args",
                "a convolution with a bias cannot join a group of convolutions",
            ));
        }
        Ok(Conv2dArgs {
            x,
            weight: ctx.param(self.weight),
            params: self.params,
        })
    }
}
