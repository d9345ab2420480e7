//! The DARTS CNN search network: its size, names, shapes, and the architect's gradients.

mod common;

use common::randn;
use darts::darts::architect::{Architect, ArchitectConfig, Batch, Supernet, Wrt, loss_pass};
use darts::darts::cnn::search::{SearchConfig, SearchNetwork, init_alphas};
use darts::nn::{Conv2d, Ctx, Linear, ParamStore};
use darts::ops::conv::Conv2dParams;
use darts::ops::elementwise::{tanh, weighted_sum};
use darts::ops::pool::{avg_pool2d, global_avg_pool};
use darts::ops::shape::{reshape, slice, zero};
use darts::ops::softmax::softmax;
use darts::optim::optimizer::Optimizer;
use darts::optim::sgd::Sgd;
use darts::{Rng, Tensor, Var};

#[test]
fn search_network_has_the_original_parameter_count() {
    let mut store = ParamStore::new();
    SearchNetwork::new(&mut store, SearchConfig::default(), &mut Rng::new(2)).unwrap();
    assert_eq!(store.num_parameters(), 1_930_618);
    // Names follow the original state_dict.
    for name in [
        "stem.0.weight",
        "stem.1.weight",
        "cells.0.preprocess0.op.1.weight",
        "cells.0._ops.0._ops.1.1.running_mean",
        "cells.0._ops.13._ops.4.op.6.weight",
        "cells.2._ops.0._ops.3.conv_2.weight",
        "cells.3.preprocess0.conv_1.weight",
        "cells.7._ops.5._ops.7.op.2.weight",
        "classifier.bias",
    ] {
        assert!(store.id(name).is_some(), "missing {name}");
    }
}

fn tiny() -> SearchConfig {
    SearchConfig {
        in_channels: 1,
        init_channels: 2,
        num_classes: 3,
        layers: 3,
        steps: 2,
        multiplier: 2,
        stem_multiplier: 1,
    }
}

#[test]
fn tiny_network_runs_and_gives_alpha_gradients() {
    let config = tiny();
    let mut store = ParamStore::new();
    let net = SearchNetwork::new(&mut store, config, &mut Rng::new(1)).unwrap();
    let alphas = init_alphas(&config, &mut Rng::new(2)).unwrap();
    assert_eq!(alphas[0].shape(), &[5, 8]);
    let images = randn(&[4, 1, 8, 8], 3);
    let labels = [0, 1, 2, 1];
    let batch = Batch {
        images: &images,
        labels: &labels,
    };
    let pass = loss_pass(&net, &mut store, &alphas, batch, Wrt::Both).unwrap();
    assert!(pass.loss.is_finite());
    for grad in &pass.alpha_grads {
        assert!(grad.data().iter().any(|&g| g != 0.0));
        // Softmax is invariant to adding a constant to a row, so each row's gradient sums to 0.
        for row in grad.data().chunks(8) {
            assert!(row.iter().sum::<f32>().abs() < 1e-5, "{row:?}");
        }
    }
}

#[test]
fn first_order_alpha_gradient_matches_finite_difference() {
    let config = tiny();
    let mut store = ParamStore::new();
    let net = SearchNetwork::new(&mut store, config, &mut Rng::new(11)).unwrap();
    let alphas = vec![randn(&[5, 8], 12), randn(&[5, 8], 13)];
    let images = randn(&[4, 1, 8, 8], 15);
    let labels = [2, 1, 0, 1];
    let batch = Batch {
        images: &images,
        labels: &labels,
    };
    let grads = loss_pass(&net, &mut store.clone(), &alphas, batch, Wrt::Alphas)
        .unwrap()
        .alpha_grads;
    for (k, index) in [(0, 0), (0, 9), (0, 17), (1, 3), (1, 30)] {
        let nudged = |delta: f32| {
            let a = nudge(&alphas, k, index, delta);
            loss_pass(&net, &mut store.clone(), &a, batch, Wrt::Weights)
                .unwrap()
                .loss as f64
        };
        let numeric = (nudged(1e-3) - nudged(-1e-3)) / 2e-3;
        let analytic = grads[k].data()[index] as f64;
        assert!(
            (numeric - analytic).abs() < 1e-3 + 0.02 * numeric.abs(),
            "{k}/{index}: {analytic} vs {numeric}"
        );
    }
}

fn nudge(alphas: &[Tensor], k: usize, index: usize, delta: f32) -> Vec<Tensor> {
    let mut a = alphas.to_vec();
    let mut data = a[k].to_vec();
    data[index] += delta;
    a[k] = Tensor::from_vec(data, a[k].shape()).unwrap();
    a
}

/// A small supernet made only of smooth operations (tanh instead of ReLU, no max pooling, no
/// batch norm), so that the unrolled objective is differentiable everywhere and a finite
/// difference of it is meaningful. (With ReLU and max pooling, ∇_w L_train jumps whenever a unit
/// changes side, and so does L_val(w − ξ∇_w L_train), so no finite difference converges.)
struct SmoothSupernet {
    stem: Conv2d,
    edge_convs: Vec<Conv2d>,
    classifier: Linear,
}

impl SmoothSupernet {
    fn new(store: &mut ParamStore, rng: &mut Rng) -> SmoothSupernet {
        let p = Conv2dParams::new(1, 1);
        SmoothSupernet {
            stem: Conv2d::new(store, "stem", (1, 3), [3, 3], p, true, rng).unwrap(),
            edge_convs: (0..2)
                .map(|e| {
                    Conv2d::new(store, &format!("edge{e}"), (3, 3), [3, 3], p, true, rng).unwrap()
                })
                .collect(),
            classifier: Linear::new(store, "classifier", (3, 3), true, rng).unwrap(),
        }
    }
}

impl Supernet for SmoothSupernet {
    /// Two mixed edges in sequence, each `Σ softmax(α_e)ₖ · opₖ(x)` over {zero, avg pool,
    /// identity, tanh(conv)}; then global pooling and a linear classifier.
    fn logits(&self, ctx: &mut Ctx, x: Var, alphas: &[Var]) -> darts::Result<Var> {
        let weights = softmax(&mut ctx.tape, alphas[0], 1)?;
        let mut h = self.stem.forward(ctx, x)?;
        h = tanh(&mut ctx.tape, h)?;
        for (e, conv) in self.edge_convs.iter().enumerate() {
            let row = slice(&mut ctx.tape, weights, &[e..e + 1, 0..4])?;
            let row = reshape(&mut ctx.tape, row, &[4])?;
            let zeros = zero(&mut ctx.tape, h, 1)?;
            let pooled = avg_pool2d(&mut ctx.tape, h, 3, 1, 1)?;
            let conv = conv.forward(ctx, h)?;
            let conv = tanh(&mut ctx.tape, conv)?;
            h = weighted_sum(&mut ctx.tape, &[zeros, pooled, h, conv], row)?;
        }
        let pooled = global_avg_pool(&mut ctx.tape, h)?;
        self.classifier.forward(ctx, pooled)
    }
}

/// The unrolled (second-order) α gradient equals a direct central finite difference of the
/// unrolled objective L_val(w − ξ·(μ·b + ∇_w L_train(w, α) + λ·w), α) with respect to α.
#[test]
fn second_order_gradient_matches_finite_difference_of_unrolled_objective() {
    let mut store = ParamStore::new();
    let net = SmoothSupernet::new(&mut store, &mut Rng::new(11));
    let alphas = vec![randn(&[2, 4], 12)];
    let train_x = randn(&[4, 1, 7, 7], 14);
    let val_x = randn(&[4, 1, 7, 7], 15);
    let (train_y, val_y) = ([0, 1, 2, 0], [2, 1, 0, 1]);
    let train = Batch {
        images: &train_x,
        labels: &train_y,
    };
    let val = Batch {
        images: &val_x,
        labels: &val_y,
    };
    let (xi, momentum, decay) = (0.5, 0.9, 0.01);

    // A weight optimizer that has taken one step, so the virtual step sees a momentum buffer.
    let ids = store.trainable_ids();
    let mut sgd = Sgd::new(xi, momentum, decay);
    let g0 = loss_pass(&net, &mut store, &alphas, train, Wrt::Weights)
        .unwrap()
        .weight_grads;
    let mut params: Vec<Tensor> = ids.iter().map(|&id| store.get(id).clone()).collect();
    sgd.step(&mut params, &g0.aligned(&store, &ids).unwrap())
        .unwrap();
    for (&id, w) in ids.iter().zip(params) {
        store.set(id, w).unwrap();
    }

    let config = ArchitectConfig {
        unrolled: true,
        momentum,
        weight_decay: decay,
        ..Default::default()
    };
    let (_, grads) = Architect::new(config)
        .alpha_gradient(&net, &mut store.clone(), &alphas, train, val, xi, &sgd)
        .unwrap();
    let first_order = loss_pass(&net, &mut store.clone(), &alphas, val, Wrt::Alphas)
        .unwrap()
        .alpha_grads;

    let unrolled_objective = |alphas: &[Tensor]| -> f64 {
        let mut s = store.clone();
        let g = loss_pass(&net, &mut s, alphas, train, Wrt::Weights)
            .unwrap()
            .weight_grads;
        for (i, &id) in ids.iter().enumerate() {
            let b = sgd.momentum_buffer(i).unwrap();
            let step = b
                .zip_map(g.get(id).unwrap(), |b, g| momentum * b + g)
                .unwrap();
            let w = s
                .get(id)
                .zip_map(&step, |w, st| w - xi * (st + decay * w))
                .unwrap();
            s.set(id, w).unwrap();
        }
        loss_pass(&net, &mut s, alphas, val, Wrt::Weights)
            .unwrap()
            .loss as f64
    };
    let mut second_order_matters = false;
    for index in 0..8 {
        let h = 1e-2;
        let numeric = (unrolled_objective(&nudge(&alphas, 0, index, h))
            - unrolled_objective(&nudge(&alphas, 0, index, -h)))
            / (2.0 * h as f64);
        let analytic = grads[0].data()[index] as f64;
        assert!(
            (numeric - analytic).abs() <= 1e-3 + 0.03 * numeric.abs(),
            "index {index}: unrolled gradient {analytic}, finite difference {numeric}"
        );
        let first = first_order[0].data()[index] as f64;
        second_order_matters |=
            (first - numeric).abs() > 10.0 * (analytic - numeric).abs().max(1e-4);
    }
    assert!(
        second_order_matters,
        "the test cannot tell first from second order"
    );
}
