mod common;

use common::{assert_gradients, randn, randn_away_from_zero};
use darts::ops::rnn::{NodeActivation, recurrent_node};
use darts::{Error, Tape, Tensor};

/// `[..., 2·hidden]` and `[..., hidden]` shapes: one element, odd widths, a batch of sequences.
const SHAPES: [(&[usize], &[usize]); 3] = [
    (&[1, 2], &[1, 1]),
    (&[3, 14], &[3, 7]),
    (&[2, 3, 10], &[2, 3, 5]),
];

/// The node written out from its definition, one element at a time, in f64.
fn naive(ch: &Tensor, h_prev: &Tensor, act: NodeActivation) -> Vec<f32> {
    let hidden = *h_prev.shape().last().unwrap();
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let f = |x: f64| match act {
        NodeActivation::Tanh => x.tanh(),
        NodeActivation::Relu => x.max(0.0),
        NodeActivation::Sigmoid => sigmoid(x),
        NodeActivation::Identity => x,
    };
    (0..h_prev.numel())
        .map(|i| {
            let (row, j) = (i / hidden, i % hidden);
            let a = ch.data()[row * 2 * hidden + j] as f64;
            let b = ch.data()[row * 2 * hidden + hidden + j] as f64;
            let h = h_prev.data()[i] as f64;
            let c = sigmoid(a);
            ((1.0 - c) * h + c * f(b)) as f32
        })
        .collect()
}

#[test]
fn forward_matches_the_formula() {
    for (case, (ch_shape, h_shape)) in SHAPES.iter().enumerate() {
        let seed = 10 * case as u64;
        let (ch, h_prev) = (randn(ch_shape, seed), randn(h_shape, seed + 1));
        for act in NodeActivation::ALL {
            let mut tape = Tape::new();
            let (c, h) = (tape.constant(ch.clone()), tape.constant(h_prev.clone()));
            let y = recurrent_node(&mut tape, c, h, act).unwrap();
            assert_eq!(tape.shape(y), *h_shape);
            common::assert_close(
                &format!("{act:?} node {h_shape:?}"),
                tape.value(y).data(),
                &naive(&ch, &h_prev, act),
                1e-6,
                1e-5,
            );
        }
    }
}

/// Both gradients for every activation. `ch` (whose second half is relu's input) stays away from
/// 0, where relu's derivative jumps and a finite difference across it means nothing.
#[test]
fn gradients_for_every_activation() {
    for (case, (ch_shape, h_shape)) in SHAPES.iter().enumerate() {
        let seed = 10 * case as u64;
        let inputs = [
            randn_away_from_zero(ch_shape, seed, 0.05),
            randn(h_shape, seed + 1),
        ];
        for act in NodeActivation::ALL {
            assert_gradients(&format!("{act:?} node {h_shape:?}"), &inputs, |t, v| {
                recurrent_node(t, v[0], v[1], act)
            });
        }
    }
}

/// Only `h_prev` needs a gradient (a fixed `ch`): the op still records its backward.
#[test]
fn gradient_reaches_h_prev_alone() {
    let ch = randn(&[2, 6], 1);
    let mut tape = Tape::new();
    let c = tape.constant(ch.clone());
    let h = tape.leaf(Tensor::zeros(&[2, 3]).unwrap());
    let y = recurrent_node(&mut tape, c, h, NodeActivation::Tanh).unwrap();
    let grads = tape
        .backward_from(y, Tensor::full(&[2, 3], 1.0).unwrap(), &[h])
        .unwrap();
    // dh_prev = 1 − σ(a), with a the first half of each row.
    let want: Vec<f32> = [0, 1, 2, 6, 7, 8]
        .iter()
        .map(|&i| 1.0 - 1.0 / (1.0 + (-ch.data()[i]).exp()))
        .collect();
    common::assert_close("dh_prev", grads[0].data(), &want, 1e-6, 1e-5);
}

#[test]
fn bad_shapes_are_errors() {
    let cases: [(&[usize], &[usize]); 5] = [
        (&[3, 10], &[3, 4]),       // the last dimension is not twice h_prev's
        (&[3, 5], &[3, 5]),        // the same width
        (&[2, 10], &[3, 5]),       // the leading dimensions differ
        (&[3, 10], &[1, 3, 5]),    // ranks differ
        (&[2, 3, 10], &[3, 2, 5]), // same size, other leading dimensions
    ];
    for (ch_shape, h_shape) in cases {
        let mut tape = Tape::new();
        let ch = tape.constant(randn(ch_shape, 1));
        let h = tape.constant(randn(h_shape, 2));
        let result = recurrent_node(&mut tape, ch, h, NodeActivation::Relu);
        assert!(
            matches!(
                result,
                Err(Error::ShapeMismatch {
                    op: "recurrent_node",
                    ..
                })
            ),
            "{ch_shape:?} and {h_shape:?}: {result:?}"
        );
    }
    // h_prev without dimensions has no hidden width.
    let mut tape = Tape::new();
    let ch = tape.constant(randn(&[2], 1));
    let h = tape.constant(Tensor::from_vec(vec![1.0], &[]).unwrap());
    assert!(matches!(
        recurrent_node(&mut tape, ch, h, NodeActivation::Tanh),
        Err(Error::ShapeMismatch {
            op: "recurrent_node",
            ..
        })
    ));
}
