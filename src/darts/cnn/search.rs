//! The DARTS CNN search network (`model_search.py`): mixed edges, search cells and the supernet
//! with its architecture parameters α.

use crate::autograd::Var;
use crate::darts::architect::Supernet;
use crate::darts::cnn::ops::{
    Candidate, EdgeInput, FactorizedReduce, ReluConvBn, forward_to_norms,
};
use crate::darts::genotype::PRIMITIVES;
use crate::nn::batchnorm::normalized_mixed_sum;
use crate::nn::{BatchNorm2d, Conv2d, Ctx, Linear, ParamStore, join_name};
use crate::ops::conv::Conv2dParams;
use crate::ops::elementwise::add_all;
use crate::ops::pool::global_avg_pool;
use crate::ops::shape::concat;
use crate::ops::softmax::softmax;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The shape of a search network. Defaults are the original's CIFAR-10 search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchConfig {
    /// Image channels (3 for CIFAR-10, 1 for Fashion-MNIST).
    pub in_channels: usize,
    /// Initial channels C (16).
    pub init_channels: usize,
    /// Number of classes (10).
    pub num_classes: usize,
    /// Number of cells (8); reductions at ⌊L/3⌋ and ⌊2L/3⌋.
    pub layers: usize,
    /// Intermediate nodes per cell (4).
    pub steps: usize,
    /// How many of the last nodes are concatenated into the cell output (4).
    pub multiplier: usize,
    /// Stem width as a multiple of C (3).
    pub stem_multiplier: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            in_channels: 3,
            init_channels: 16,
            num_classes: 10,
            layers: 8,
            steps: 4,
            multiplier: 4,
            stem_multiplier: 3,
        }
    }
}

impl SearchConfig {
    /// Edges per cell: 2 + 3 + … + (steps + 1) (14 for 4 steps), the rows of each α matrix.
    pub fn num_edges(&self) -> usize {
        (0..self.steps).map(|i| i + 2).sum()
    }

    /// Whether cell `i` is a reduction cell.
    pub fn is_reduction(&self, i: usize) -> bool {
        i == self.layers / 3 || i == 2 * self.layers / 3
    }
}

/// The primitives a mixed edge computes: all but `none`, the first. Its output is zeros, so its
/// term of the weighted sum is zero, and so is its weight's gradient from that sum, whatever the
/// weight: leaving it out changes no value (the weight still gets its gradient through the
/// softmax) and saves making, and keeping for the backward, one tensor of zeros per edge.
const COMPUTED: std::ops::Range<usize> = 1..PRIMITIVES.len();

/// One mixed edge: every primitive applied to the input, summed with softmax(α) weights.
#[derive(Debug, Clone)]
pub struct MixedOp {
    /// The candidates of [`COMPUTED`], in order.
    candidates: Vec<Candidate>,
}

impl MixedOp {
    fn new(
        store: &mut ParamStore,
        prefix: &str,
        c: usize,
        stride: usize,
        rng: &mut Rng,
    ) -> Result<MixedOp> {
        debug_assert_eq!(PRIMITIVES[0], "none");
        let candidates = COMPUTED
            .map(|k| {
                Candidate::new(
                    store,
                    &join_name(prefix, &format!("_ops.{k}")),
                    PRIMITIVES[k],
                    c,
                    stride,
                    false,
                    rng,
                )
            })
            .collect::<Result<_>>()?;
        Ok(MixedOp { candidates })
    }

    /// `Σₖ w[k] · opₖ(x)` over the [`COMPUTED`] primitives, with `w` their softmax weights, read
    /// in place from row `edge` of the cell's `[edges, 8]` weights; `input` holds `x` and its ReLU,
    /// shared with the other edges that read `x`. The candidates' final batch norms run inside
    /// the weighted sum (`nn::batchnorm::normalized_mixed_sum`).
    pub fn forward(
        &self,
        ctx: &mut Ctx,
        input: &mut EdgeInput,
        weights: Var,
        edge: usize,
    ) -> Result<Var> {
        let terms = forward_to_norms(ctx, &self.candidates, input)?;
        let at = edge * PRIMITIVES.len() + COMPUTED.start;
        normalized_mixed_sum(ctx, &terms, weights, at)
    }
}

/// How a cell prepares its older input: halved by FactorizedReduce after a reduction cell.
#[derive(Debug, Clone)]
enum Preprocess {
    Reduce(FactorizedReduce),
    Plain(ReluConvBn),
}

/// A search cell: two preprocessed inputs, `steps` nodes each summing mixed edges from all
/// earlier states, and the last `multiplier` nodes concatenated.
#[derive(Debug, Clone)]
pub struct SearchCell {
    reduction: bool,
    preprocess0: Preprocess,
    preprocess1: ReluConvBn,
    edges: Vec<MixedOp>,
    steps: usize,
    multiplier: usize,
}

impl SearchCell {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &mut ParamStore,
        prefix: &str,
        config: &SearchConfig,
        (c_pp, c_p, c): (usize, usize, usize),
        reduction: bool,
        reduction_prev: bool,
        rng: &mut Rng,
    ) -> Result<SearchCell> {
        let pre0 = join_name(prefix, "preprocess0");
        let preprocess0 = if reduction_prev {
            Preprocess::Reduce(FactorizedReduce::new(store, &pre0, (c_pp, c), false, rng)?)
        } else {
            Preprocess::Plain(ReluConvBn::new(
                store,
                &pre0,
                (c_pp, c),
                1,
                Conv2dParams::default(),
                false,
                rng,
            )?)
        };
        let pre1 = join_name(prefix, "preprocess1");
        let preprocess1 = ReluConvBn::new(
            store,
            &pre1,
            (c_p, c),
            1,
            Conv2dParams::default(),
            false,
            rng,
        )?;
        let mut edges = Vec::with_capacity(config.num_edges());
        for i in 0..config.steps {
            for j in 0..i + 2 {
                let stride = if reduction && j < 2 { 2 } else { 1 };
                let name = join_name(prefix, &format!("_ops.{}", edges.len()));
                edges.push(MixedOp::new(store, &name, c, stride, rng)?);
            }
        }
        Ok(SearchCell {
            reduction,
            preprocess0,
            preprocess1,
            edges,
            steps: config.steps,
            multiplier: config.multiplier,
        })
    }

    /// The cell output from the two previous outputs and the softmax weights `[edges, 8]`.
    fn forward(&self, ctx: &mut Ctx, s0: Var, s1: Var, weights: Var) -> Result<Var> {
        let s0 = match &self.preprocess0 {
            Preprocess::Reduce(r) => r.forward(ctx, s0)?,
            Preprocess::Plain(p) => p.forward(ctx, s0)?,
        };
        let s1 = self.preprocess1.forward(ctx, s1)?;
        // Each state with its ReLU, computed once for all the edges that read it.
        let mut states = vec![EdgeInput::new(s0), EdgeInput::new(s1)];
        let mut edge = 0;
        for _ in 0..self.steps {
            let mut inputs = Vec::with_capacity(states.len());
            for state in &mut states {
                inputs.push(self.edges[edge].forward(ctx, state, weights, edge)?);
                edge += 1;
            }
            states.push(EdgeInput::new(add_all(&mut ctx.tape, &inputs)?));
        }
        let outputs: Vec<Var> = states[states.len() - self.multiplier..]
            .iter()
            .map(EdgeInput::x)
            .collect();
        concat(&mut ctx.tape, &outputs, 1)
    }
}

/// Fresh architecture parameters for `config`: `[α_normal, α_reduce]`, each an `[edges, 8]`
/// logit matrix initialised to 1e-3·N(0, 1) as the original code does (the paper says zeros).
pub fn init_alphas(config: &SearchConfig, rng: &mut Rng) -> Result<Vec<Tensor>> {
    let shape = [config.num_edges(), PRIMITIVES.len()];
    Ok(vec![
        Tensor::normal(&shape, 0.0, 1e-3, rng)?,
        Tensor::normal(&shape, 0.0, 1e-3, rng)?,
    ])
}

/// The supernet: stem, `layers` search cells sharing two α matrices, global pool and classifier.
#[derive(Debug, Clone)]
pub struct SearchNetwork {
    config: SearchConfig,
    stem_conv: Conv2d,
    stem_bn: BatchNorm2d,
    cells: Vec<SearchCell>,
    classifier: Linear,
}

impl SearchNetwork {
    /// Registers every weight of the network in `store` under the original's names.
    pub fn new(
        store: &mut ParamStore,
        config: SearchConfig,
        rng: &mut Rng,
    ) -> Result<SearchNetwork> {
        if config.steps == 0 || config.multiplier == 0 || config.multiplier > config.steps {
            return Err(Error::invalid(
                "SearchNetwork::new",
                format!(
                    "need 0 < multiplier ({}) <= steps ({})",
                    config.multiplier, config.steps
                ),
            ));
        }
        if config.layers == 0
            || config.init_channels == 0
            || config.num_classes == 0
            || config.in_channels == 0
        {
            return Err(Error::invalid(
                "SearchNetwork::new",
                "layers, channels and classes must be at least 1",
            ));
        }
        let c = config.init_channels;
        let c_stem = config.stem_multiplier * c;
        let stem_conv = Conv2d::new(
            store,
            "stem.0",
            (config.in_channels, c_stem),
            [3, 3],
            Conv2dParams::new(1, 1),
            false,
            rng,
        )?;
        // The original's stem BN keeps its affine parameters (the paper says all BN are non-affine).
        let stem_bn = BatchNorm2d::new(store, "stem.1", c_stem, true)?;
        let (mut c_pp, mut c_p, mut c_curr) = (c_stem, c_stem, c);
        let mut cells = Vec::with_capacity(config.layers);
        let mut reduction_prev = false;
        for i in 0..config.layers {
            let reduction = config.is_reduction(i);
            if reduction {
                c_curr *= 2;
            }
            let name = format!("cells.{i}");
            cells.push(SearchCell::new(
                store,
                &name,
                &config,
                (c_pp, c_p, c_curr),
                reduction,
                reduction_prev,
                rng,
            )?);
            reduction_prev = reduction;
            (c_pp, c_p) = (c_p, config.multiplier * c_curr);
        }
        let classifier = Linear::new(store, "classifier", (c_p, config.num_classes), true, rng)?;
        Ok(SearchNetwork {
            config,
            stem_conv,
            stem_bn,
            cells,
            classifier,
        })
    }

    /// The network's shape.
    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// Class logits `[N, classes]` for images `x` given the α variables (`[edges, 8]` each).
    pub fn forward(
        &self,
        ctx: &mut Ctx,
        x: Var,
        alpha_normal: Var,
        alpha_reduce: Var,
    ) -> Result<Var> {
        let weights_normal = softmax(&mut ctx.tape, alpha_normal, 1)?;
        let weights_reduce = softmax(&mut ctx.tape, alpha_reduce, 1)?;
        let stem = self.stem_conv.forward(ctx, x)?;
        let stem = self.stem_bn.forward(ctx, stem)?;
        let (mut s0, mut s1) = (stem, stem);
        for cell in &self.cells {
            let weights = if cell.reduction {
                weights_reduce
            } else {
                weights_normal
            };
            let out = cell.forward(ctx, s0, s1, weights)?;
            (s0, s1) = (s1, out);
        }
        let pooled = global_avg_pool(&mut ctx.tape, s1)?;
        self.classifier.forward(ctx, pooled)
    }

    /// Class logits `[N, classes]` for `images` in eval mode (running batch-norm statistics),
    /// with the weights of `store` and `alphas` (`[α_normal, α_reduce]`) as constants: a search's
    /// validation pass (the original's `infer`).
    pub fn infer(
        &self,
        store: &mut ParamStore,
        alphas: &[Tensor],
        images: Tensor,
    ) -> Result<Tensor> {
        let mut ctx = Ctx::frozen(store, false);
        let x = ctx.input(images);
        let alphas: Vec<Var> = alphas.iter().map(|a| ctx.input(a.clone())).collect();
        let logits = self.logits(&mut ctx, x, &alphas)?;
        Ok(ctx.value(logits).clone())
    }
}

impl Supernet for SearchNetwork {
    /// `alphas` = `[α_normal, α_reduce]`.
    fn logits(&self, ctx: &mut Ctx, x: Var, alphas: &[Var]) -> Result<Var> {
        match *alphas {
            [normal, reduce] => self.forward(ctx, x, normal, reduce),
            _ => Err(Error::WrongInputCount {
                op: "SearchNetwork",
                expected: "2 alpha tensors (normal, reduce)".into(),
                got: alphas.len(),
            }),
        }
    }
}
