mod common;

use common::{assert_gradients, randn, randn_away_from_zero};
use darts::gradcheck::{GradCheck, check_gradients};
use darts::ops::elementwise as ew;
use darts::{Error, Tape, Tensor};

#[test]
fn activations_match_their_formulas() {
    let x = randn(&[3, 5, 7], 1);
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let r = ew::relu(&mut tape, v).unwrap();
    let t = ew::tanh(&mut tape, v).unwrap();
    let s = ew::sigmoid(&mut tape, v).unwrap();
    for (i, &xi) in x.data().iter().enumerate() {
        assert_eq!(tape.value(r).data()[i], xi.max(0.0));
        assert!((tape.value(t).data()[i] - xi.tanh()).abs() < 1e-6);
        assert!((tape.value(s).data()[i] - 1.0 / (1.0 + (-xi).exp())).abs() < 1e-6);
    }
}

#[test]
fn relu_gradient() {
    let x = randn_away_from_zero(&[2, 3, 5, 7], 2, 0.01);
    assert_gradients("relu", &[x], |t, v| ew::relu(t, v[0]));
}

#[test]
fn tanh_and_sigmoid_gradients() {
    let x = randn(&[31, 3], 3);
    assert_gradients("tanh", std::slice::from_ref(&x), |t, v| ew::tanh(t, v[0]));
    assert_gradients("sigmoid", &[x], |t, v| ew::sigmoid(t, v[0]));
}

#[test]
fn arithmetic_gradients() {
    let a = randn(&[3, 11], 4);
    let b = randn(&[3, 11], 5);
    let ab = [a.clone(), b.clone()];
    assert_gradients("add", &ab, |t, v| ew::add(t, v[0], v[1]));
    assert_gradients("sub", &ab, |t, v| ew::sub(t, v[0], v[1]));
    assert_gradients("mul", &ab, |t, v| ew::mul(t, v[0], v[1]));
    assert_gradients("scale", &[a], |t, v| ew::scale(t, v[0], -2.5));
    // A variable used twice gets both contributions: d(x·x)/dx = 2x.
    assert_gradients("mul(x, x)", &[b], |t, v| ew::mul(t, v[0], v[0]));
}

#[test]
fn add_all_is_chained_adds() {
    let xs: Vec<Tensor> = (0..5).map(|i| randn(&[3, 7], 30 + i)).collect();
    assert_gradients("add_all", &xs, ew::add_all);
    assert_gradients("add_all(x, y, x)", &xs[..2], |t, v| {
        ew::add_all(t, &[v[0], v[1], v[0]])
    });
    // Magnitudes far apart, so that the order of the additions shows in the bits.
    let xs: Vec<Tensor> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| x.map(|v| v * 10f32.powi(i as i32 * 2 - 4)))
        .collect();
    let mut tape = Tape::new();
    let vars: Vec<_> = xs.iter().map(|x| tape.leaf(x.clone())).collect();
    let all = ew::add_all(&mut tape, &vars).unwrap();
    let mut chained = vars[0];
    for &v in &vars[1..] {
        chained = ew::add(&mut tape, chained, v).unwrap();
    }
    let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(tape.value(all)), bits(tape.value(chained)));
    let one = ew::add_all(&mut tape, &vars[..1]).unwrap();
    assert_eq!(bits(tape.value(one)), bits(&xs[0]));
}

#[test]
fn identity_passes_gradient_through() {
    let x = randn(&[5], 6);
    assert_gradients("identity", &[x], |t, v| {
        let y = ew::identity(t, v[0])?;
        ew::scale(t, y, 3.0)
    });
}

#[test]
fn weighted_sum_gradient_reaches_inputs_and_weights() {
    let xs: Vec<Tensor> = (0..4).map(|i| randn(&[2, 3, 5, 5], 10 + i)).collect();
    let w = randn(&[4], 20);
    let mut inputs = xs.clone();
    inputs.push(w);
    assert_gradients("weighted_sum", &inputs, |t, v| {
        ew::weighted_sum(t, &v[..4], v[4])
    });
}

/// The weights read in place from a row of a matrix: the gradient reaches that run of the matrix,
/// and every other entry gets zero (which the finite differences check too).
#[test]
fn weighted_sum_at_reads_its_weights_in_place() {
    let xs: Vec<Tensor> = (0..3).map(|i| randn(&[2, 3, 4], 40 + i)).collect();
    let matrix = randn(&[3, 5], 43);
    let mut inputs = xs.clone();
    inputs.push(matrix.clone());
    assert_gradients("weighted_sum_at", &inputs, |t, v| {
        ew::weighted_sum_at(t, &v[..3], v[3], 6)
    });
    // The same values as weighted_sum of the row's copy.
    let mut tape = Tape::new();
    let vars: Vec<_> = xs.iter().map(|x| tape.constant(x.clone())).collect();
    let m = tape.constant(matrix.clone());
    let row = tape.constant(Tensor::from_vec(matrix.data()[6..9].to_vec(), &[3]).unwrap());
    let at = ew::weighted_sum_at(&mut tape, &vars, m, 6).unwrap();
    let copied = ew::weighted_sum(&mut tape, &vars, row).unwrap();
    assert_eq!(tape.value(at).data(), tape.value(copied).data());
    assert!(matches!(
        ew::weighted_sum_at(&mut tape, &vars, m, 13),
        Err(Error::InvalidArgument {
            op: "weighted_sum",
            ..
        })
    ));
}

#[test]
fn bad_arguments_are_errors() {
    let mut tape = Tape::new();
    let a = tape.constant(randn(&[2, 3], 1));
    let b = tape.constant(randn(&[3, 2], 2));
    let w = tape.constant(randn(&[3], 3));
    assert!(matches!(
        ew::add(&mut tape, a, b),
        Err(Error::ShapeMismatch { op: "add", .. })
    ));
    assert!(matches!(
        ew::add_all(&mut tape, &[a, a, b]),
        Err(Error::ShapeMismatch { op: "add_all", .. })
    ));
    assert!(matches!(
        ew::add_all(&mut tape, &[]),
        Err(Error::WrongInputCount { op: "add_all", .. })
    ));
    assert!(matches!(
        ew::weighted_sum(&mut tape, &[a, a], w),
        Err(Error::ShapeMismatch {
            op: "weighted_sum",
            ..
        })
    ));
    assert!(matches!(
        ew::weighted_sum(&mut tape, &[], w),
        Err(Error::WrongInputCount { .. })
    ));
    assert!(matches!(
        Tensor::zeros(&[2, 0, 3]),
        Err(Error::ZeroSizedDim { .. })
    ));
    assert!(Tensor::from_vec(vec![1.0; 5], &[2, 3]).is_err());
}

/// The gradient check must be able to fail: a tanh whose backward forgets to square `y`
/// (`1 − y` instead of `1 − y²`) is caught, while the correct rule passes.
#[test]
fn gradient_check_catches_a_wrong_backward() {
    let x = randn(&[4, 9], 7);
    let tanh_with = |wrong: bool| {
        move |tape: &mut Tape, v: &[darts::Var]| {
            let y = tape.value(v[0]).map(f32::tanh);
            let saved = y.clone();
            Ok(tape.record("tanh", y, &[v[0]], move |dy, _| {
                let d = saved.zip_map(dy, |y, g| {
                    if wrong {
                        g * (1.0 - y)
                    } else {
                        g * (1.0 - y * y)
                    }
                })?;
                Ok(vec![Some(d)])
            }))
        }
    };
    let right = check_gradients(
        std::slice::from_ref(&x),
        GradCheck::default(),
        tanh_with(false),
    )
    .unwrap();
    let wrong = check_gradients(&[x], GradCheck::default(), tanh_with(true)).unwrap();
    assert!(right.passed(), "{right:?}");
    assert!(
        !wrong.passed(),
        "a wrong backward passed the gradient check"
    );
}

#[test]
fn backward_returns_zeros_for_unused_leaves() {
    let x = randn(&[3], 1);
    let mut tape = Tape::new();
    let a = tape.leaf(x.clone());
    let unused = tape.leaf(randn(&[2], 2));
    let y = ew::mul(&mut tape, a, a).unwrap();
    // A non-scalar loss is an error that names the problem.
    assert!(matches!(
        tape.backward(y, &[a]),
        Err(Error::ShapeMismatch { .. })
    ));
    let seed = Tensor::full(&[3], 1.0).unwrap();
    let grads = tape.backward_from(y, seed, &[a, unused]).unwrap();
    for (g, x) in grads[0].data().iter().zip(x.data()) {
        assert!((g - 2.0 * x).abs() < 1e-6);
    }
    assert_eq!(grads[1].data(), &[0.0, 0.0]);
}

/// ReLU keeps NaN, as PyTorch does, on every device: turning it into 0 would hide a diverged
/// network from its loss.
#[test]
fn relu_keeps_nan() {
    for device in [darts::Device::Cpu, darts::Device::Emu] {
        let x = Tensor::from_vec(vec![f32::NAN, -1.0, 0.0, 2.5, f32::NEG_INFINITY], &[5])
            .unwrap()
            .to_device(device)
            .unwrap();
        let mut tape = Tape::new();
        let v = tape.constant(x);
        let y = ew::relu(&mut tape, v).unwrap();
        let y = tape.value(y).to_host().unwrap().to_vec();
        assert!(y[0].is_nan(), "{device}: {y:?}");
        assert_eq!(&y[1..], &[0.0, 0.0, 2.5, 0.0], "{device}");
    }
}
