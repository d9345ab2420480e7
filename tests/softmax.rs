mod common;

use common::{assert_close, assert_gradients, randn};
use darts::ops::softmax::{argmax_rows, cross_entropy, log_softmax, softmax};
use darts::{Error, Tape, Tensor};

/// Softmax of `x` along `dim` by the textbook formula, lane by lane in f64.
fn naive_softmax(x: &Tensor, dim: usize) -> Vec<f32> {
    let shape = x.shape();
    let outer: usize = shape[..dim].iter().product();
    let size = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let mut y = vec![0.0; x.numel()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * size * inner + j * inner + i;
            let total: f64 = (0..size).map(|j| (x.data()[at(j)] as f64).exp()).sum();
            for j in 0..size {
                y[at(j)] = ((x.data()[at(j)] as f64).exp() / total) as f32;
            }
        }
    }
    y
}

/// Mean label-smoothed cross-entropy by the definition, through explicit log-probabilities.
fn naive_cross_entropy(logits: &Tensor, targets: &[usize], eps: f64) -> f64 {
    let k = logits.shape()[1];
    let p = naive_softmax(logits, 1);
    let losses: Vec<f64> = p
        .chunks(k)
        .zip(targets)
        .map(|(p, &t)| {
            let logp: Vec<f64> = p.iter().map(|&v| (v as f64).ln()).collect();
            -(1.0 - eps) * logp[t] - eps / k as f64 * logp.iter().sum::<f64>()
        })
        .collect();
    losses.iter().sum::<f64>() / targets.len() as f64
}

fn forward(x: &Tensor, f: impl Fn(&mut Tape, darts::Var) -> darts::Result<darts::Var>) -> Tensor {
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let y = f(&mut tape, v).unwrap();
    tape.value(y).clone()
}

#[test]
fn softmax_along_each_dim_matches_formula_and_sums_to_one() {
    let x = randn(&[3, 5, 7], 1);
    for dim in 0..3 {
        let y = forward(&x, |t, v| softmax(t, v, dim));
        assert_eq!(y.shape(), x.shape());
        assert_close(
            &format!("softmax dim {dim}"),
            y.data(),
            &naive_softmax(&x, dim),
            1e-6,
            1e-5,
        );
        // Sum along `dim` by moving one stride at a time.
        let inner: usize = x.shape()[dim + 1..].iter().product();
        let size = x.shape()[dim];
        for start in (0..x.numel()).filter(|s| (s / inner).is_multiple_of(size)) {
            let total: f32 = (0..size).map(|j| y.data()[start + j * inner]).sum();
            assert!(
                (total - 1.0).abs() < 1e-5,
                "dim {dim}: lane sums to {total}"
            );
        }
    }
}

/// The DARTS architecture weights: a 1-D α along dim 0 and the 14×8 α of a cell along dim 1.
#[test]
fn softmax_of_architecture_weights() {
    let alpha = randn(&[8], 2);
    let y = forward(&alpha, |t, v| softmax(t, v, 0));
    assert_close(
        "1-D softmax",
        y.data(),
        &naive_softmax(&alpha, 0),
        1e-6,
        1e-5,
    );
    let alphas = randn(&[14, 8], 3);
    let y = forward(&alphas, |t, v| softmax(t, v, 1));
    assert_close(
        "14x8 softmax",
        y.data(),
        &naive_softmax(&alphas, 1),
        1e-6,
        1e-5,
    );
}

#[test]
fn softmax_is_stable_for_large_inputs() {
    let x = Tensor::from_vec(vec![1000.0, 1001.0, -1000.0, 999.0], &[4]).unwrap();
    let y = forward(&x, |t, v| softmax(t, v, 0));
    let shifted = Tensor::from_vec(vec![1.0, 2.0, -1999.0, 0.0], &[4]).unwrap();
    assert_close(
        "shifted softmax",
        y.data(),
        &naive_softmax(&shifted, 0),
        1e-7,
        1e-6,
    );
    let ly = forward(&x, |t, v| log_softmax(t, v, 0));
    assert!(ly.data().iter().all(|v| v.is_finite()), "{:?}", ly.data());
}

#[test]
fn log_softmax_is_log_of_softmax() {
    let x = randn(&[3, 5, 7], 4);
    for dim in 0..3 {
        let ly = forward(&x, |t, v| log_softmax(t, v, dim));
        let ln: Vec<f32> = naive_softmax(&x, dim).iter().map(|p| p.ln()).collect();
        assert_close(
            &format!("log_softmax dim {dim}"),
            ly.data(),
            &ln,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn softmax_gradients() {
    let x = randn(&[3, 5, 7], 5);
    for dim in 0..3 {
        assert_gradients(
            &format!("softmax dim {dim}"),
            std::slice::from_ref(&x),
            |t, v| softmax(t, v[0], dim),
        );
    }
    assert_gradients("softmax 1-D", &[randn(&[8], 6)], |t, v| softmax(t, v[0], 0));
    assert_gradients("softmax 14x8", &[randn(&[14, 8], 7)], |t, v| {
        softmax(t, v[0], 1)
    });
    assert_gradients("softmax of one element", &[randn(&[3, 1], 8)], |t, v| {
        softmax(t, v[0], 1)
    });
}

#[test]
fn log_softmax_gradients() {
    let x = randn(&[3, 5, 7], 9);
    for dim in 0..3 {
        assert_gradients(
            &format!("log_softmax dim {dim}"),
            std::slice::from_ref(&x),
            |t, v| log_softmax(t, v[0], dim),
        );
    }
    assert_gradients("log_softmax 1-D", &[randn(&[5], 10)], |t, v| {
        log_softmax(t, v[0], 0)
    });
}

#[test]
fn cross_entropy_matches_definition() {
    let logits = randn(&[7, 5], 11).map(|v| 3.0 * v);
    let targets = [0, 4, 2, 2, 1, 3, 4];
    for eps in [0.0, 0.1, 0.5] {
        let loss = forward(&logits, |t, v| cross_entropy(t, v, &targets, eps));
        assert_eq!(loss.shape(), [1]);
        let expected = naive_cross_entropy(&logits, &targets, eps as f64);
        assert!(
            (loss.item().unwrap() as f64 - expected).abs() < 1e-5 * (1.0 + expected.abs()),
            "ε = {eps}: {} vs {expected}",
            loss.item().unwrap()
        );
    }
}

#[test]
fn cross_entropy_gradients() {
    let logits = randn(&[7, 5], 12);
    let targets = [1, 4, 0, 0, 3, 2, 4];
    for eps in [0.0, 0.1] {
        assert_gradients(
            &format!("cross_entropy ε={eps}"),
            std::slice::from_ref(&logits),
            |t, v| cross_entropy(t, v[0], &targets, eps),
        );
    }
    // A single sample of a single class, and 33 samples of 3 classes.
    assert_gradients("cross_entropy 1x1", &[randn(&[1, 1], 13)], |t, v| {
        cross_entropy(t, v[0], &[0], 0.1)
    });
    let targets: Vec<usize> = (0..33).map(|i| i % 3).collect();
    assert_gradients("cross_entropy 33x3", &[randn(&[33, 3], 14)], |t, v| {
        cross_entropy(t, v[0], &targets, 0.2)
    });
}

/// `dlogits = (softmax − smoothed target) / N` exactly, checked against the closed form.
#[test]
fn cross_entropy_backward_is_softmax_minus_target() {
    let (n, k, eps) = (3, 4, 0.1f32);
    let logits = randn(&[n, k], 15);
    let targets = [3, 0, 3];
    let mut tape = Tape::new();
    let v = tape.leaf(logits.clone());
    let loss = cross_entropy(&mut tape, v, &targets, eps).unwrap();
    let grad = &tape.backward(loss, &[v]).unwrap()[0];
    let p = naive_softmax(&logits, 1);
    let expected: Vec<f32> = (0..n * k)
        .map(|idx| {
            let q = eps / k as f32
                + if idx % k == targets[idx / k] {
                    1.0 - eps
                } else {
                    0.0
                };
            (p[idx] - q) / n as f32
        })
        .collect();
    assert_close("dlogits", grad.data(), &expected, 1e-6, 1e-5);
}

#[test]
fn argmax_rows_picks_the_first_maximum() {
    let logits = Tensor::from_vec(
        vec![0.0, 2.0, 2.0, 1.0, -1.0, -3.0, -2.0, -1.0, 5.0],
        &[3, 3],
    )
    .unwrap();
    assert_eq!(argmax_rows(&logits).unwrap(), vec![1, 0, 2]);
    assert_eq!(
        argmax_rows(&Tensor::from_vec(vec![4.0], &[1, 1]).unwrap()).unwrap(),
        vec![0]
    );
    assert!(matches!(
        argmax_rows(&randn(&[6], 1)),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn bad_arguments_are_errors() {
    let mut tape = Tape::new();
    let x = tape.constant(randn(&[3, 4], 16));
    let v = tape.constant(randn(&[4], 17));
    let invalid = |r: darts::Result<darts::Var>, op: &str| {
        assert!(
            matches!(&r, Err(Error::InvalidArgument { op: o, .. }) if *o == op),
            "{op}: {r:?}"
        )
    };
    invalid(softmax(&mut tape, x, 2), "softmax");
    invalid(softmax(&mut tape, v, 1), "softmax");
    invalid(log_softmax(&mut tape, x, 5), "log_softmax");
    invalid(
        cross_entropy(&mut tape, x, &[0, 1, 4], 0.0),
        "cross_entropy",
    );
    invalid(cross_entropy(&mut tape, x, &[0, 1], 0.0), "cross_entropy");
    invalid(
        cross_entropy(&mut tape, x, &[0, 1, 2, 3], 0.0),
        "cross_entropy",
    );
    for eps in [-0.1, 1.0, f32::NAN] {
        invalid(
            cross_entropy(&mut tape, x, &[0, 1, 2], eps),
            "cross_entropy",
        );
    }
    assert!(matches!(
        cross_entropy(&mut tape, v, &[0], 0.0),
        Err(Error::ShapeMismatch {
            op: "cross_entropy",
            ..
        })
    ));
    assert!(cross_entropy(&mut tape, x, &[0, 1, 3], 0.99).is_ok());
}
