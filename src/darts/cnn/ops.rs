//! The candidate operations of the DARTS CNN search space (`operations.py` of the original), built
//! from engine layers with the original's parameter names, so a `state_dict` maps one-to-one.
//!
//! Inside the search network every batch norm is `affine = false`, and the two pools are followed
//! by an extra `BN(C, affine = false)` (the original wraps them in `nn.Sequential(pool, BN)`).
//!
//! Four departures from the original's code, not from its math: the candidates read their input
//! through an [`EdgeInput`], which computes `ReLU(x)` once for every candidate that starts with
//! one, on every edge that reads the same state; the ReLU in the middle of a separable
//! convolution is applied by the batch norm before it, in the same op; a search edge hands its
//! candidates' final batch norms, with its weighted sum, to one op (`ops::mixed`); and its
//! candidates share ops where they can ([`forward_to_norms`]): its two pools are one op, and its
//! separable and dilated convolutions run stage by stage, several convolutions to an op.

use crate::autograd::Var;
use crate::darts::genotype::PRIMITIVES;
use crate::nn::{BatchNorm2d, Conv2d, Ctx, ParamStore, join_name};
use crate::ops::batchnorm::Activation;
use crate::ops::conv::{Conv2dParams, conv2d_many};
use crate::ops::elementwise::relu;
use crate::ops::pool::{avg_pool2d, max_and_avg_pool2d, max_pool2d};
use crate::ops::shape::{concat, slice, zero};
use crate::rng::Rng;
use crate::{Error, Result};

/// A state that mixed edges read, with its ReLU computed at most once. Five of the eight
/// candidates (the separable and dilated convolutions, and the strided skip's FactorizedReduce)
/// start with `ReLU(x)`, and every state feeds up to four edges: the original computes that ReLU
/// up to twenty times per state, and its backward keeps each result. Once gives the same values
/// and the same gradient (its terms summed in another order), with a fraction of the launches and
/// of the memory.
#[derive(Debug, Clone, Copy)]
pub struct EdgeInput {
    x: Var,
    relu: Option<Var>,
}

impl EdgeInput {
    /// The state `x`, its ReLU not computed yet.
    pub fn new(x: Var) -> EdgeInput {
        EdgeInput { x, relu: None }
    }

    /// The state itself.
    pub fn x(&self) -> Var {
        self.x
    }

    /// `ReLU(x)`, recorded on the tape the first time it is asked for.
    pub fn relu(&mut self, ctx: &mut Ctx) -> Result<Var> {
        match self.relu {
            Some(h) => Ok(h),
            None => {
                let h = relu(&mut ctx.tape, self.x)?;
                self.relu = Some(h);
                Ok(h)
            }
        }
    }
}

/// ReLU → Conv(k×k, stride, pad) → BN: the 1×1 preprocessing of cell inputs (`op.1`, `op.2`).
#[derive(Debug, Clone)]
pub struct ReluConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ReluConvBn {
    /// Registers `{name}.op.1` (conv, no bias) and `{name}.op.2` (BN).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        (c_in, c_out): (usize, usize),
        kernel: usize,
        params: Conv2dParams,
        affine: bool,
        rng: &mut Rng,
    ) -> Result<ReluConvBn> {
        Ok(ReluConvBn {
            conv: Conv2d::new(
                store,
                &join_name(name, "op.1"),
                (c_in, c_out),
                [kernel, kernel],
                params,
                false,
                rng,
            )?,
            bn: BatchNorm2d::new(store, &join_name(name, "op.2"), c_out, affine)?,
        })
    }

    /// Applies ReLU, the convolution and the batch norm.
    pub fn forward(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        let h = relu(&mut ctx.tape, x)?;
        let h = self.conv.forward(ctx, h)?;
        self.bn.forward(ctx, h)
    }
}

/// ReLU → depthwise conv (k×k, stride, pad, dilation) → pointwise 1×1 conv → BN. `DilConv` is one
/// such block with dilation 2; `SepConv` is two with dilation 1 (only the first strided).
#[derive(Debug, Clone)]
pub struct DwPwBlock {
    depthwise: Conv2d,
    pointwise: Conv2d,
    bn: BatchNorm2d,
}

impl DwPwBlock {
    /// Registers the block's layers at `{name}.op.{first}`, `.{first+1}`, `.{first+2}` (the
    /// positions inside the original's `nn.Sequential`, where index `first − 1` is the ReLU).
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &mut ParamStore,
        name: &str,
        first: usize,
        (c_in, c_out): (usize, usize),
        kernel: usize,
        params: Conv2dParams,
        affine: bool,
        rng: &mut Rng,
    ) -> Result<DwPwBlock> {
        let at = |i: usize| join_name(name, &format!("op.{}", first + i));
        Ok(DwPwBlock {
            depthwise: Conv2d::new(
                store,
                &at(0),
                (c_in, c_in),
                [kernel, kernel],
                params.groups(c_in),
                false,
                rng,
            )?,
            pointwise: Conv2d::new(
                store,
                &at(1),
                (c_in, c_out),
                [1, 1],
                Conv2dParams::default(),
                false,
                rng,
            )?,
            bn: BatchNorm2d::new(store, &at(2), c_out, affine)?,
        })
    }
}

/// FactorizedReduce: halves H and W with two stride-2 1×1 convs, the second on the input shifted
/// by one pixel (`x[:, :, 1:, 1:]`), concatenated along channels, then BN. Requires even H and W.
#[derive(Debug, Clone)]
pub struct FactorizedReduce {
    conv_1: Conv2d,
    conv_2: Conv2d,
    bn: BatchNorm2d,
}

impl FactorizedReduce {
    /// Registers `{name}.conv_1`, `{name}.conv_2` (C_in → C_out/2 each) and `{name}.bn`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        (c_in, c_out): (usize, usize),
        affine: bool,
        rng: &mut Rng,
    ) -> Result<FactorizedReduce> {
        if c_out % 2 != 0 {
            return Err(Error::invalid(
                "FactorizedReduce",
                format!("output channels {c_out} must be even"),
            ));
        }
        let half = (c_in, c_out / 2);
        let s2 = Conv2dParams::new(2, 0);
        Ok(FactorizedReduce {
            conv_1: Conv2d::new(
                store,
                &join_name(name, "conv_1"),
                half,
                [1, 1],
                s2,
                false,
                rng,
            )?,
            conv_2: Conv2d::new(
                store,
                &join_name(name, "conv_2"),
                half,
                [1, 1],
                s2,
                false,
                rng,
            )?,
            bn: BatchNorm2d::new(store, &join_name(name, "bn"), c_out, affine)?,
        })
    }

    /// Applies the reduction (ReLU first) to `x: [N, C_in, H, W]` with H and W even.
    pub fn forward(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        let x = relu(&mut ctx.tape, x)?;
        self.forward_after_relu(ctx, x)
    }

    /// Applies the reduction to `x`, the input after the ReLU.
    fn forward_after_relu(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        let joined = self.convolutions_after_relu(ctx, x)?;
        self.bn.forward(ctx, joined)
    }

    /// The two convolutions of `x`, the input after the ReLU, concatenated: the reduction
    /// without its batch norm.
    fn convolutions_after_relu(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        let [n, c, h, w] = crate::ops::nchw(&ctx.tape, "FactorizedReduce", x)?;
        if h % 2 != 0 || w % 2 != 0 || h < 2 || w < 2 {
            return Err(Error::shape(
                "FactorizedReduce",
                "even height and width",
                &[n, c, h, w],
            ));
        }
        let a = self.conv_1.forward(ctx, x)?;
        let shifted = slice(&mut ctx.tape, x, &[0..n, 0..c, 1..h, 1..w])?;
        let b = self.conv_2.forward(ctx, shifted)?;
        concat(&mut ctx.tape, &[a, b], 1)
    }
}

/// One candidate operation of a mixed edge, in the order of [`PRIMITIVES`].
#[derive(Debug, Clone)]
pub enum Candidate {
    /// `none`: zeros (subsampled when strided).
    Zero { stride: usize },
    /// `max_pool_3x3` followed by BN(affine = false) in the search network.
    MaxPool { stride: usize, bn: BatchNorm2d },
    /// `avg_pool_3x3` (padding not counted) followed by BN(affine = false).
    AvgPool { stride: usize, bn: BatchNorm2d },
    /// `skip_connect` with stride 1.
    Identity,
    /// `skip_connect` with stride 2.
    Reduce(FactorizedReduce),
    /// `sep_conv_*`: two ReLU-dw-pw-BN blocks.
    SepConv([DwPwBlock; 2]),
    /// `dil_conv_*`: one ReLU-dw(dilation 2)-pw-BN block.
    DilConv([DwPwBlock; 1]),
}

impl Candidate {
    /// Builds the primitive `name` on `c` channels with `stride` under the parameter prefix `name_prefix`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        primitive: &str,
        c: usize,
        stride: usize,
        affine: bool,
        rng: &mut Rng,
    ) -> Result<Candidate> {
        let sep = |store: &mut ParamStore, rng: &mut Rng, k: usize| -> Result<Candidate> {
            let pad = k / 2;
            Ok(Candidate::SepConv([
                DwPwBlock::new(
                    store,
                    prefix,
                    1,
                    (c, c),
                    k,
                    Conv2dParams::new(stride, pad),
                    affine,
                    rng,
                )?,
                DwPwBlock::new(
                    store,
                    prefix,
                    5,
                    (c, c),
                    k,
                    Conv2dParams::new(1, pad),
                    affine,
                    rng,
                )?,
            ]))
        };
        let dil = |store: &mut ParamStore, rng: &mut Rng, k: usize| -> Result<Candidate> {
            let params = Conv2dParams::new(stride, k - 1).dilation(2);
            Ok(Candidate::DilConv([DwPwBlock::new(
                store,
                prefix,
                1,
                (c, c),
                k,
                params,
                affine,
                rng,
            )?]))
        };
        // In the search network the pools are `nn.Sequential(pool, BN)`: the BN sits at index 1.
        let pool_bn =
            |store: &mut ParamStore| BatchNorm2d::new(store, &join_name(prefix, "1"), c, false);
        match primitive {
            "none" => Ok(Candidate::Zero { stride }),
            "max_pool_3x3" => Ok(Candidate::MaxPool {
                stride,
                bn: pool_bn(store)?,
            }),
            "avg_pool_3x3" => Ok(Candidate::AvgPool {
                stride,
                bn: pool_bn(store)?,
            }),
            "skip_connect" if stride == 1 => Ok(Candidate::Identity),
            "skip_connect" => Ok(Candidate::Reduce(FactorizedReduce::new(
                store,
                prefix,
                (c, c),
                affine,
                rng,
            )?)),
            "sep_conv_3x3" => sep(store, rng, 3),
            "sep_conv_5x5" => sep(store, rng, 5),
            "dil_conv_3x3" => dil(store, rng, 3),
            "dil_conv_5x5" => dil(store, rng, 5),
            other => Err(Error::invalid(
                "Candidate::new",
                format!(
                    "unknown primitive `{other}` (known: {})",
                    PRIMITIVES.join(", ")
                ),
            )),
        }
    }

    /// Applies the operation to `input`, taking its ReLU from there where it starts with one.
    pub fn forward(&self, ctx: &mut Ctx, input: &mut EdgeInput) -> Result<Var> {
        match forward_to_norms(ctx, std::slice::from_ref(self), input)?.pop() {
            Some((h, Some(bn))) => bn.forward(ctx, h),
            Some((x, None)) => Ok(x),
            None => Err(Error::invalid("Candidate::forward", "no output")),
        }
    }

    /// The chain of ReLU-dw-pw-BN blocks of a separable or dilated convolution; `None` for the
    /// other candidates.
    fn blocks(&self) -> Option<&[DwPwBlock]> {
        match self {
            Candidate::SepConv(blocks) => Some(blocks),
            Candidate::DilConv(blocks) => Some(blocks),
            _ => None,
        }
    }

    /// A candidate without blocks up to its final batch norm (see [`forward_to_norms`]).
    fn forward_plain_to_norm(
        &self,
        ctx: &mut Ctx,
        input: &mut EdgeInput,
    ) -> Result<(Var, Option<&BatchNorm2d>)> {
        let x = input.x();
        Ok(match self {
            Candidate::Zero { stride } => (zero(&mut ctx.tape, x, *stride)?, None),
            Candidate::MaxPool { stride, bn } => {
                (max_pool2d(&mut ctx.tape, x, 3, *stride, 1)?, Some(bn))
            }
            Candidate::AvgPool { stride, bn } => {
                (avg_pool2d(&mut ctx.tape, x, 3, *stride, 1)?, Some(bn))
            }
            Candidate::Identity => (x, None),
            Candidate::Reduce(reduce) => {
                let h = input.relu(ctx)?;
                (reduce.convolutions_after_relu(ctx, h)?, Some(&reduce.bn))
            }
            Candidate::SepConv(_) | Candidate::DilConv(_) => {
                return Err(Error::invalid(
                    "Candidate::forward_plain_to_norm",
                    "a convolution's blocks run in forward_to_norms",
                ));
            }
        })
    }
}

/// The max- and average-pooled `x` of a max-pool and an average-pool candidate of one stride among
/// `candidates`, as one op (`ops::pool::max_and_avg_pool2d`: one launch each way on a GPU
/// instead of two); `None` without such a pair.
fn paired_pools(ctx: &mut Ctx, candidates: &[Candidate], x: Var) -> Result<Option<[Var; 2]>> {
    let stride_of = |pool: fn(&Candidate) -> Option<usize>| candidates.iter().find_map(pool);
    let max = stride_of(|op| match op {
        Candidate::MaxPool { stride, .. } => Some(*stride),
        _ => None,
    });
    let avg = stride_of(|op| match op {
        Candidate::AvgPool { stride, .. } => Some(*stride),
        _ => None,
    });
    match (max, avg) {
        (Some(stride), Some(other)) if stride == other => {
            Ok(Some(max_and_avg_pool2d(&mut ctx.tape, x, 3, stride, 1)?))
        }
        _ => Ok(None),
    }
}

/// `candidates` applied to `input`, each up to its final batch norm: that norm's input, and the
/// norm (`None` for `none` and the identity, which end in none). [`Candidate::forward`] applies
/// it; a search edge hands all its candidates' to one op (`nn::batchnorm::normalized_mixed_sum`).
///
/// The candidates that can share launches do, with the values the ops one by one would give
/// them, bit for bit. A max-pool and an average-pool candidate of one stride run as one op. The
/// separable and dilated convolutions run stage by stage: the first depthwise convolutions of all
/// of them (which all read `ReLU(x)`) as one op, `ops::conv::conv2d_many` (one launch on a GPU
/// instead of four), their 1×1 convolutions as another, each separable convolution's batch norm
/// (with the next block's ReLU), then the second depthwise and 1×1 convolutions of the separable
/// ones likewise.
pub fn forward_to_norms<'c>(
    ctx: &mut Ctx,
    candidates: &'c [Candidate],
    input: &mut EdgeInput,
) -> Result<Vec<(Var, Option<&'c BatchNorm2d>)>> {
    let pools = paired_pools(ctx, candidates, input.x())?;
    let mut terms = Vec::with_capacity(candidates.len());
    for op in candidates {
        terms.push(match (op, pools) {
            (Candidate::MaxPool { bn, .. }, Some([max, _])) => Some((max, Some(bn))),
            (Candidate::AvgPool { bn, .. }, Some([_, avg])) => Some((avg, Some(bn))),
            _ => match op.blocks() {
                None => Some(op.forward_plain_to_norm(ctx, input)?),
                Some(_) => None,
            },
        });
    }
    let chains: Vec<(usize, &[DwPwBlock])> = (candidates.iter().enumerate())
        .filter_map(|(k, op)| Some((k, op.blocks()?)))
        .collect();
    if !chains.is_empty() {
        let mut heads = vec![input.relu(ctx)?; chains.len()];
        for stage in 0.. {
            let active: Vec<usize> = (0..chains.len())
                .filter(|&i| stage < chains[i].1.len())
                .collect();
            if active.is_empty() {
                break;
            }
            let blocks: Vec<&DwPwBlock> = active.iter().map(|&i| &chains[i].1[stage]).collect();
            let depthwise = (blocks.iter().zip(&active))
                .map(|(block, &i)| block.depthwise.args(ctx, heads[i]))
                .collect::<Result<Vec<_>>>()?;
            let hs = conv2d_many(&mut ctx.tape, &depthwise)?;
            let pointwise = (blocks.iter().zip(hs))
                .map(|(block, h)| block.pointwise.args(ctx, h))
                .collect::<Result<Vec<_>>>()?;
            let hs = conv2d_many(&mut ctx.tape, &pointwise)?;
            for ((&i, block), h) in active.iter().zip(blocks).zip(hs) {
                let (k, blocks) = chains[i];
                if stage + 1 < blocks.len() {
                    heads[i] = block.bn.forward_then(ctx, h, Activation::Relu)?;
                } else {
                    terms[k] = Some((h, Some(&block.bn)));
                }
            }
        }
    }
    terms
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::invalid("forward_to_norms", "a candidate was left without an output"))
}
