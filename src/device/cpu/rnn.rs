//! The DARTS recurrent node after its matmul. A node of the recurrent cell computes
//! `[a | b] = s_prev · W`, then `c = σ(a)` and `s = s_prev + c ⊙ (f(b) − s_prev)`: a highway
//! between the previous state and the activated candidate. Everything after the matmul is one
//! elementwise pass, here on `ch = [a | b]` of `[rows, 2·hidden]` (the `a` half first in each row)
//! and `h_prev = s_prev` of `[rows, hidden]`. Rows run in parallel; each element is computed on
//! its own, so results do not depend on scheduling.

use rayon::prelude::*;

use super::CHUNK;
use super::elementwise::{relu_scalar, sigmoid_scalar};

/// The activation `f` of a DARTS recurrent node: the non-`none` entries of the recurrent search
/// space (`PRIMITIVES_RNN`), applied to the `b` half of `[a | b]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeActivation {
    /// `tanh(b)`.
    Tanh,
    /// `max(b, 0)`.
    Relu,
    /// `1 / (1 + e^(−b))`.
    Sigmoid,
    /// `b` itself.
    Identity,
}

impl NodeActivation {
    /// Every activation, in the order of `PRIMITIVES_RNN`.
    pub const ALL: [NodeActivation; 4] = [
        NodeActivation::Tanh,
        NodeActivation::Relu,
        NodeActivation::Sigmoid,
        NodeActivation::Identity,
    ];

    /// `f(x)`.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            NodeActivation::Tanh => x.tanh(),
            NodeActivation::Relu => relu_scalar(x),
            NodeActivation::Sigmoid => sigmoid_scalar(x),
            NodeActivation::Identity => x,
        }
    }

    /// `f′(x)`, given `x` and `y = f(x)` (tanh and sigmoid are cheaper from `y`).
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            NodeActivation::Tanh => 1.0 - y * y,
            NodeActivation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            NodeActivation::Sigmoid => y * (1.0 - y),
            NodeActivation::Identity => 1.0,
        }
    }
}

/// Checks that `ch` is `[rows, 2·hidden]` and `h_prev` is `[rows, hidden]` for some `rows`.
///
/// Panics when the lengths do not fit those shapes (the ops check them first).
fn check_layout(ch: &[f32], h_prev: &[f32], hidden: usize) {
    assert!(
        hidden > 0 && h_prev.len().is_multiple_of(hidden) && ch.len() == 2 * h_prev.len(),
        "recurrent node: {} and {} elements are not [rows, 2·{hidden}] and [rows, {hidden}]",
        ch.len(),
        h_prev.len()
    );
}

/// Rows handed to one rayon task: about [`CHUNK`] elements.
fn rows_per_task(hidden: usize) -> usize {
    (CHUNK / hidden).max(1)
}

/// `y = h + σ(a) · (f(b) − h)` for one element.
fn forward_point(a: f32, b: f32, h: f32, act: NodeActivation) -> f32 {
    let c = sigmoid_scalar(a);
    h + c * (act.apply(b) - h)
}

/// `(da, db, dh)` for one element with output gradient `g`.
fn backward_point(a: f32, b: f32, h: f32, g: f32, act: NodeActivation) -> (f32, f32, f32) {
    let c = sigmoid_scalar(a);
    let f = act.apply(b);
    let da = g * (f - h) * c * (1.0 - c);
    let db = g * c * act.derivative(b, f);
    let dh = g * (1.0 - c);
    (da, db, dh)
}

/// The node's output `y = h_prev + c ⊙ (f(b) − h_prev)` with `c = σ(a)`, where each row of `ch`
/// (`[rows, 2·hidden]`) is `[a | b]` and `h_prev` is `[rows, hidden]`; `y` has `h_prev`'s shape.
///
/// Panics when the lengths do not fit those shapes.
pub fn node_forward(ch: &[f32], h_prev: &[f32], hidden: usize, act: NodeActivation) -> Vec<f32> {
    check_layout(ch, h_prev, hidden);
    let task = rows_per_task(hidden);
    let mut y = vec![0.0; h_prev.len()];
    y.par_chunks_mut(task * hidden)
        .zip(ch.par_chunks(task * 2 * hidden))
        .zip(h_prev.par_chunks(task * hidden))
        .for_each(|((y, ch), h)| {
            for ((y, ch), h) in y
                .chunks_mut(hidden)
                .zip(ch.chunks(2 * hidden))
                .zip(h.chunks(hidden))
            {
                let (a, b) = ch.split_at(hidden);
                for (((y, &a), &b), &h) in y.iter_mut().zip(a).zip(b).zip(h) {
                    *y = forward_point(a, b, h, act);
                }
            }
        });
    y
}

/// The gradients of [`node_forward`] for the output gradient `dy` (`[rows, hidden]`):
/// `dch` in `ch`'s layout, with `da = dy · (f(b) − h_prev) · c · (1 − c)` in the first half of
/// each row and `db = dy · c · f′(b)` in the second, and `dh_prev = dy · (1 − c)`.
///
/// Panics when the lengths do not fit those shapes.
pub fn node_backward(
    ch: &[f32],
    h_prev: &[f32],
    dy: &[f32],
    hidden: usize,
    act: NodeActivation,
) -> (Vec<f32>, Vec<f32>) {
    check_layout(ch, h_prev, hidden);
    assert_eq!(dy.len(), h_prev.len(), "recurrent node: dy's length");
    let task = rows_per_task(hidden);
    let mut dch = vec![0.0; ch.len()];
    let mut dh = vec![0.0; h_prev.len()];
    dch.par_chunks_mut(task * 2 * hidden)
        .zip(dh.par_chunks_mut(task * hidden))
        .zip(ch.par_chunks(task * 2 * hidden))
        .zip(
            h_prev
                .par_chunks(task * hidden)
                .zip(dy.par_chunks(task * hidden)),
        )
        .for_each(|(((dch, dh), ch), (h, dy))| {
            for (((dch, dh), ch), (h, dy)) in dch
                .chunks_mut(2 * hidden)
                .zip(dh.chunks_mut(hidden))
                .zip(ch.chunks(2 * hidden))
                .zip(h.chunks(hidden).zip(dy.chunks(hidden)))
            {
                let (a, b) = ch.split_at(hidden);
                let (da, db) = dch.split_at_mut(hidden);
                let points = da.iter_mut().zip(db).zip(dh.iter_mut());
                for (((da, db), dh), ((&a, &b), (&h, &g))) in
                    points.zip(a.iter().zip(b).zip(h.iter().zip(dy)))
                {
                    (*da, *db, *dh) = backward_point(a, b, h, g, act);
                }
            }
        });
    (dch, dh)
}
