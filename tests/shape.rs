mod common;

use std::ops::Range;

use common::{assert_gradients, randn};
use darts::ops::shape;
use darts::{Error, Tape, Tensor};

/// The row-major multi-index of flat position `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// The flat row-major position of multi-index `idx` in `shape`.
fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// Concatenation written out element by element: find the input each output index falls in.
fn naive_concat(xs: &[Tensor], dim: usize) -> Vec<f32> {
    let mut shape = xs[0].shape().to_vec();
    shape[dim] = xs.iter().map(|x| x.shape()[dim]).sum();
    (0..shape.iter().product())
        .map(|i| {
            let mut idx = unravel(i, &shape);
            let mut which = 0;
            while idx[dim] >= xs[which].shape()[dim] {
                idx[dim] -= xs[which].shape()[dim];
                which += 1;
            }
            xs[which].data()[ravel(&idx, xs[which].shape())]
        })
        .collect()
}

/// A slice written out element by element.
fn naive_slice(x: &Tensor, ranges: &[Range<usize>]) -> Vec<f32> {
    let out_shape: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    (0..out_shape.iter().product())
        .map(|i| {
            let idx: Vec<usize> = unravel(i, &out_shape)
                .iter()
                .zip(ranges)
                .map(|(&j, r)| r.start + j)
                .collect();
            x.data()[ravel(&idx, x.shape())]
        })
        .collect()
}

/// Three inputs of shape `base` except along `dim`, where they have sizes 1, 3 and 2.
fn concat_inputs(base: &[usize], dim: usize, seed: u64) -> Vec<Tensor> {
    [1, 3, 2]
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut shape = base.to_vec();
            shape[dim] = size;
            randn(&shape, seed + i as u64)
        })
        .collect()
}

#[test]
fn concat_matches_naive_along_every_dim() {
    for dim in 0..4 {
        let xs = concat_inputs(&[3, 5, 2, 7], dim, 10 * dim as u64);
        let mut tape = Tape::new();
        let vars: Vec<_> = xs.iter().map(|x| tape.constant(x.clone())).collect();
        let y = shape::concat(&mut tape, &vars, dim).unwrap();
        let mut expected_shape = vec![3, 5, 2, 7];
        expected_shape[dim] = 6;
        assert_eq!(tape.shape(y), expected_shape, "dim {dim}");
        assert_eq!(tape.value(y).data(), naive_concat(&xs, dim), "dim {dim}");
    }
    // A single input is copied unchanged.
    let x = randn(&[5, 3], 1);
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let y = shape::concat(&mut tape, &[v], 1).unwrap();
    assert_eq!(tape.value(y).data(), x.data());
}

#[test]
fn concat_gradients_along_every_dim() {
    for dim in 0..4 {
        let xs = concat_inputs(&[3, 5, 2, 7], dim, 100 + dim as u64);
        assert_gradients(&format!("concat dim {dim}"), &xs, |t, v| {
            shape::concat(t, v, dim)
        });
    }
    // The same variable twice gets both slices of the gradient.
    let x = randn(&[2, 3, 5], 7);
    assert_gradients("concat(x, x)", &[x], |t, v| {
        shape::concat(t, &[v[0], v[0]], 1)
    });
}

/// Windows of a [3, 5, 7, 5] tensor: spatial offsets, a channel slice, a cut only in the first
/// dimension, the whole tensor, and cuts in every dimension.
fn windows() -> Vec<Vec<Range<usize>>> {
    vec![
        vec![0..3, 0..5, 1..7, 1..5],
        vec![0..3, 2..5, 0..7, 0..5],
        vec![1..3, 0..5, 0..7, 0..5],
        vec![0..3, 0..5, 0..7, 0..5],
        vec![1..2, 1..4, 2..5, 4..5],
        vec![0..3, 0..5, 0..7, 2..3],
    ]
}

#[test]
fn slice_matches_naive() {
    let x = randn(&[3, 5, 7, 5], 3);
    for ranges in windows() {
        let mut tape = Tape::new();
        let v = tape.constant(x.clone());
        let y = shape::slice(&mut tape, v, &ranges).unwrap();
        let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
        assert_eq!(tape.shape(y), lens, "{ranges:?}");
        assert_eq!(tape.value(y).data(), naive_slice(&x, &ranges), "{ranges:?}");
    }
    let x = randn(&[31], 4);
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let one_range = [Range { start: 5, end: 12 }];
    let y = shape::slice(&mut tape, v, &one_range).unwrap();
    assert_eq!(tape.value(y).data(), &x.data()[5..12]);
}

#[test]
fn slice_gradient_is_written_back_in_place() {
    let x = randn(&[3, 5, 7, 5], 5);
    for ranges in windows() {
        assert_gradients(
            &format!("slice {ranges:?}"),
            std::slice::from_ref(&x),
            |t, v| shape::slice(t, v[0], &ranges),
        );
    }
    // Outside the window the gradient is exactly zero, inside it is the output's gradient.
    let mut tape = Tape::new();
    let v = tape.leaf(x.clone());
    let ranges = [0..3, 0..5, 1..7, 1..5];
    let y = shape::slice(&mut tape, v, &ranges).unwrap();
    let dy = randn(tape.shape(y), 6);
    let dx = tape.backward_from(y, dy.clone(), &[v]).unwrap().remove(0);
    for (i, &g) in dx.data().iter().enumerate() {
        let idx = unravel(i, x.shape());
        if idx[2] == 0 || idx[3] == 0 {
            assert_eq!(g, 0.0);
        } else {
            let inner = [idx[0], idx[1], idx[2] - 1, idx[3] - 1];
            assert_eq!(g, dy.data()[ravel(&inner, dy.shape())]);
        }
    }
}

#[test]
fn reshape_keeps_data_and_reshapes_the_gradient() {
    let x = randn(&[3, 5, 7], 8);
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let y = shape::reshape(&mut tape, v, &[15, 7]).unwrap();
    assert_eq!(tape.shape(y), [15, 7]);
    assert_eq!(tape.value(y).data(), x.data());
    assert_gradients("reshape", &[x], |t, v| shape::reshape(t, v[0], &[7, 1, 15]));
}

#[test]
fn zero_op_shapes_values_and_gradient() {
    for (h, stride, out) in [(7, 1, 7), (8, 1, 8), (7, 2, 4), (8, 2, 4)] {
        let x = randn(&[2, 3, h, h], h as u64);
        let mut tape = Tape::new();
        let v = tape.leaf(x.clone());
        let y = shape::zero(&mut tape, v, stride).unwrap();
        assert_eq!(tape.shape(y), [2, 3, out, out], "H={h} stride {stride}");
        assert!(tape.value(y).data().iter().all(|&z| z == 0.0));
        let dy = randn(tape.shape(y), 9);
        let dx = tape.backward_from(y, dy, &[v]).unwrap().remove(0);
        assert_eq!(dx.shape(), x.shape());
        assert!(dx.data().iter().all(|&g| g == 0.0));
        assert_gradients("zero", &[x], |t, v| shape::zero(t, v[0], stride));
    }
    // Non-square: [N, C, 5, 8] with stride 2 gives [N, C, 3, 4].
    let mut tape = Tape::new();
    let v = tape.constant(randn(&[1, 2, 5, 8], 1));
    let y = shape::zero(&mut tape, v, 2).unwrap();
    assert_eq!(tape.shape(y), [1, 2, 3, 4]);
}

#[test]
fn bad_arguments_are_errors() {
    let mut tape = Tape::new();
    let a = tape.constant(randn(&[2, 3, 4], 1));
    let b = tape.constant(randn(&[2, 5, 5], 2));
    let c = tape.constant(randn(&[2, 3], 3));
    let d = tape.constant(randn(&[2, 3, 4, 4], 4));

    assert!(matches!(
        shape::reshape(&mut tape, a, &[5, 5]),
        Err(Error::ShapeMismatch { op: "reshape", .. })
    ));
    assert!(matches!(
        shape::reshape(&mut tape, a, &[24, 0]),
        Err(Error::ZeroSizedDim { .. })
    ));

    assert!(matches!(
        shape::concat(&mut tape, &[], 0),
        Err(Error::WrongInputCount { op: "concat", .. })
    ));
    assert!(matches!(
        shape::concat(&mut tape, &[a, b], 1),
        Err(Error::ShapeMismatch { op: "concat", .. })
    ));
    assert!(matches!(
        shape::concat(&mut tape, &[a, c], 1),
        Err(Error::ShapeMismatch { op: "concat", .. })
    ));
    assert!(matches!(
        shape::concat(&mut tape, &[a, a], 3),
        Err(Error::InvalidArgument { op: "concat", .. })
    ));

    for ranges in [
        vec![0..2, 0..3],
        vec![0..2, 0..3, 0..4, 0..1],
        vec![0..2, 1..1, 0..4],
        vec![0..2, 0..4, 0..4],
        vec![2..3, 0..3, 0..4],
    ] {
        assert!(
            matches!(
                shape::slice(&mut tape, a, &ranges),
                Err(Error::InvalidArgument { op: "slice", .. })
            ),
            "{ranges:?}"
        );
    }

    assert!(matches!(
        shape::zero(&mut tape, a, 1),
        Err(Error::ShapeMismatch { op: "zero", .. })
    ));
    assert!(matches!(
        shape::zero(&mut tape, d, 0),
        Err(Error::InvalidArgument { op: "zero", .. })
    ));
}
