mod common;

use common::{assert_close, randn};
use darts::device::cpu::batchnorm::{self as kernels, ChannelLayout, Normalizer};
use darts::gradcheck::{GradCheck, check_gradients};
use darts::ops::batchnorm::{self as bn, Activation, RunningStats};
use darts::{Error, Result, Tape, Tensor, Var};

const EPS: f32 = 1e-5;

/// Inputs with a per-element offset and a spread other than 1, so centring and scaling matter.
fn input(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed).map(|v| 1.5 * v + 0.7)
}

/// The (N, C, HW) view of a 2-D or 4-D shape.
fn dims(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// Naive per-channel statistics in f64: (mean, biased variance, unbiased variance).
fn naive_stats(x: &Tensor) -> Vec<(f64, f64, f64)> {
    let (n, c, hw) = dims(x.shape());
    (0..c)
        .map(|ch| {
            let values: Vec<f64> = (0..n)
                .flat_map(|s| (0..hw).map(move |i| (s * c + ch) * hw + i))
                .map(|i| x.data()[i] as f64)
                .collect();
            let m = values.len() as f64;
            let mean = values.iter().sum::<f64>() / m;
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (mean, ss / m, ss / (m - 1.0))
        })
        .collect()
}

/// Naive `(x − mean)/√(var + eps)·γ + β` with per-channel (mean, var) and optional (γ, β).
fn naive_normalize(x: &Tensor, mv: &[(f64, f64)], affine: Option<(&[f32], &[f32])>) -> Vec<f32> {
    let (_, c, hw) = dims(x.shape());
    x.data()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / hw % c;
            let (mean, var) = mv[ch];
            let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[ch] as f64, b[ch] as f64));
            ((v as f64 - mean) / (var + EPS as f64).sqrt() * g + b) as f32
        })
        .collect()
}

#[test]
fn train_forward_matches_naive_formula() {
    for (i, shape) in [&[3, 5, 3, 3][..], &[2, 4, 7, 5], &[7, 3], &[2, 3, 1, 1]]
        .iter()
        .enumerate()
    {
        let x = input(shape, 10 + i as u64);
        let c = shape[1];
        let gamma = randn(&[c], 20 + i as u64);
        let beta = randn(&[c], 30 + i as u64);
        let stats = naive_stats(&x);
        let mv: Vec<(f64, f64)> = stats.iter().map(|&(m, v, _)| (m, v)).collect();
        for affine in [false, true] {
            let mut tape = Tape::new();
            let v = tape.constant(x.clone());
            let params =
                affine.then(|| (tape.constant(gamma.clone()), tape.constant(beta.clone())));
            // Momentum 1 makes the new running statistics the batch's own.
            let zeros = Tensor::zeros(&[c]).unwrap();
            let running = RunningStats {
                mean: &zeros,
                var: &zeros,
                momentum: 1.0,
            };
            let (y, got) = bn::batch_norm_train(
                &mut tape,
                v,
                params,
                EPS,
                Some(running),
                Activation::Identity,
            )
            .unwrap();
            let (got_mean, got_var) = got.unwrap();
            let expected = naive_normalize(&x, &mv, affine.then_some((gamma.data(), beta.data())));
            let what = format!("train {shape:?} affine={affine}");
            assert_eq!(tape.shape(y), *shape, "{what}");
            assert_close(&what, tape.value(y).data(), &expected, 1e-5, 1e-5);
            let mean: Vec<f32> = stats.iter().map(|s| s.0 as f32).collect();
            let var: Vec<f32> = stats.iter().map(|s| s.2 as f32).collect();
            assert_close(&format!("{what} mean"), got_mean.data(), &mean, 1e-6, 1e-6);
            assert_close(&format!("{what} var"), got_var.data(), &var, 1e-6, 1e-6);
        }
    }
}

#[test]
fn eval_forward_matches_naive_formula() {
    for (i, shape) in [&[3, 5, 3, 3][..], &[1, 4, 2, 3], &[1, 3]]
        .iter()
        .enumerate()
    {
        let x = input(shape, 40 + i as u64);
        let c = shape[1];
        let rm = randn(&[c], 50 + i as u64);
        let rv = randn(&[c], 60 + i as u64).map(|v| v.abs() + 0.1);
        let gamma = randn(&[c], 70 + i as u64);
        let beta = randn(&[c], 80 + i as u64);
        let mv: Vec<(f64, f64)> = rm
            .data()
            .iter()
            .zip(rv.data())
            .map(|(&m, &v)| (m as f64, v as f64))
            .collect();
        for affine in [false, true] {
            let mut tape = Tape::new();
            let v = tape.constant(x.clone());
            let params =
                affine.then(|| (tape.constant(gamma.clone()), tape.constant(beta.clone())));
            let y = bn::batch_norm_eval(&mut tape, v, params, &rm, &rv, EPS, Activation::Identity)
                .unwrap();
            let expected = naive_normalize(&x, &mv, affine.then_some((gamma.data(), beta.data())));
            let what = format!("eval {shape:?} affine={affine}");
            assert_close(&what, tape.value(y).data(), &expected, 1e-5, 1e-5);
        }
    }
}

/// Settings for training-mode checks. The loss is smooth but its Jacobian is dense within a
/// channel, so the step is larger than the default (f32 rounding of the forward dominates small
/// steps) while the tolerance stays tight enough to catch a missing term of the backward.
fn train_check() -> GradCheck {
    GradCheck {
        step: 1e-2,
        atol: 1e-3,
        rtol: 5e-3,
        max_points: 200,
        ..GradCheck::default()
    }
}

/// Batch norm in training mode with inputs `[x]` or `[x, γ, β]`.
fn train_op(tape: &mut Tape, v: &[Var]) -> Result<Var> {
    let affine = (v.len() == 3).then(|| (v[1], v[2]));
    Ok(bn::batch_norm_train(tape, v[0], affine, EPS, None, Activation::Identity)?.0)
}

#[test]
fn train_gradients() {
    for (i, shape) in [&[3, 5, 3, 3][..], &[2, 3, 5, 7], &[7, 3], &[2, 2, 1, 1]]
        .iter()
        .enumerate()
    {
        let x = input(shape, 90 + i as u64);
        let c = shape[1];
        let gamma = randn(&[c], 100 + i as u64);
        let beta = randn(&[c], 110 + i as u64);
        check_gradients(std::slice::from_ref(&x), train_check(), train_op)
            .unwrap()
            .assert_ok(&format!("batch_norm_train {shape:?}"));
        check_gradients(&[x, gamma, beta], train_check(), train_op)
            .unwrap()
            .assert_ok(&format!("batch_norm_train {shape:?} affine"));
    }
}

#[test]
fn eval_gradients() {
    for (i, shape) in [&[3, 5, 3, 3][..], &[1, 3, 5, 7], &[7, 3]]
        .iter()
        .enumerate()
    {
        let x = input(shape, 120 + i as u64);
        let c = shape[1];
        let rm = randn(&[c], 130 + i as u64);
        let rv = randn(&[c], 140 + i as u64).map(|v| v.abs() + 0.1);
        let gamma = randn(&[c], 150 + i as u64);
        let beta = randn(&[c], 160 + i as u64);
        let eval = |tape: &mut Tape, v: &[Var]| {
            let affine = (v.len() == 3).then(|| (v[1], v[2]));
            bn::batch_norm_eval(tape, v[0], affine, &rm, &rv, EPS, Activation::Identity)
        };
        common::assert_gradients(
            &format!("batch_norm_eval {shape:?}"),
            std::slice::from_ref(&x),
            eval,
        );
        common::assert_gradients(
            &format!("batch_norm_eval {shape:?} affine"),
            &[x, gamma, beta],
            eval,
        );
    }
}

/// Batch norm with the ReLU inside (`Activation::Relu`) against batch norm followed by the ReLU op,
/// each of which has its own gradient check: the same output and the same gradients of x, γ and
/// β, to the bit, in training and eval mode, with and without affine parameters.
#[test]
fn relu_inside_matches_relu_after() {
    let shape = [3, 4, 5, 6];
    let x = input(&shape, 170);
    let (gamma, beta) = (randn(&[4], 171), randn(&[4], 172));
    let rm = randn(&[4], 173);
    let rv = randn(&[4], 174).map(|v| v.abs() + 0.1);
    let dy = randn(&shape, 175);
    let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for train in [true, false] {
        for affine in [false, true] {
            let run = |act: Activation| {
                let mut tape = Tape::new();
                let xv = tape.leaf(x.clone());
                let (g, b) = (tape.leaf(gamma.clone()), tape.leaf(beta.clone()));
                let params = affine.then_some((g, b));
                let y = match train {
                    true => {
                        bn::batch_norm_train(&mut tape, xv, params, EPS, None, act)
                            .unwrap()
                            .0
                    }
                    false => {
                        bn::batch_norm_eval(&mut tape, xv, params, &rm, &rv, EPS, act).unwrap()
                    }
                };
                let z = match act {
                    Activation::Identity => darts::ops::elementwise::relu(&mut tape, y).unwrap(),
                    Activation::Relu => y,
                };
                let wrt = [vec![xv], affine.then_some(vec![g, b]).unwrap_or_default()].concat();
                let grads = tape.backward_from(z, dy.clone(), &wrt).unwrap();
                let mut out = vec![bits(tape.value(z))];
                out.extend(grads.iter().map(bits));
                out
            };
            let (inside, after) = (run(Activation::Relu), run(Activation::Identity));
            assert_eq!(inside.len(), after.len());
            for (k, (a, b)) in inside.iter().zip(&after).enumerate() {
                assert!(
                    a == b,
                    "train {train} affine {affine}: output/gradient {k} differs"
                );
            }
            // The ReLU did something: some outputs are zero, some are not.
            let z = &inside[0];
            assert!(z.contains(&0) && z.iter().any(|&b| b != 0));
        }
    }
}

/// Which term of the training-mode input gradient `(1/σ)·(dy − mean(dy) − x̂·mean(dy·x̂))` to leave
/// out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Drop {
    Nothing,
    MeanDy,
    MeanDyXhat,
}

/// Non-affine training-mode batch norm built from the public kernels, with a backward that can
/// leave out a term: with `Drop::Nothing` it is the real rule and must pass the same check that the
/// op passes; leaving out either term must fail it.
fn train_op_dropping(drop: Drop) -> impl Fn(&mut Tape, &[Var]) -> Result<Var> {
    move |tape, v| {
        let xv = tape.value(v[0]).clone();
        let (n, c, hw) = dims(xv.shape());
        let l = ChannelLayout { n, c, hw };
        let count = (n * hw) as f64;
        let (mean, m2) = kernels::channel_moments(xv.data(), &l);
        let norm = Normalizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            inv_std: m2
                .iter()
                .map(|&s| (1.0 / (s / count + EPS as f64).sqrt()) as f32)
                .collect(),
        };
        let shift: Vec<f32> = norm
            .mean
            .iter()
            .zip(&norm.inv_std)
            .map(|(m, s)| -m * s)
            .collect();
        let y = kernels::scale_shift(xv.data(), &l, &norm.inv_std, &shift, Activation::Identity);
        let y = Tensor::from_vec(y, xv.shape())?;
        Ok(tape.record("bn_dropping", y, &[v[0]], move |dy, _| {
            let (sum_dy, sum_dy_xhat) = kernels::channel_grad_sums(xv.data(), dy.data(), &l, &norm);
            let mean_of = |s: &[f64], dropped: bool| -> Vec<f32> {
                s.iter()
                    .map(|&v| if dropped { 0.0 } else { (v / count) as f32 })
                    .collect()
            };
            let dx = kernels::normalize_backward(
                xv.data(),
                dy.data(),
                &l,
                &norm,
                &norm.inv_std,
                &mean_of(&sum_dy, drop == Drop::MeanDy),
                &mean_of(&sum_dy_xhat, drop == Drop::MeanDyXhat),
            );
            Ok(vec![Some(Tensor::from_vec(dx, xv.shape())?)])
        }))
    }
}

#[test]
fn train_gradient_check_catches_a_missing_term() {
    for (i, shape) in [&[3, 5, 3, 3][..], &[7, 3]].iter().enumerate() {
        let x = input(shape, 170 + i as u64);
        for drop in [Drop::Nothing, Drop::MeanDy, Drop::MeanDyXhat] {
            let report = check_gradients(
                std::slice::from_ref(&x),
                train_check(),
                train_op_dropping(drop),
            )
            .unwrap();
            assert_eq!(
                report.passed(),
                drop == Drop::Nothing,
                "{shape:?} dropping {drop:?}: {} of {} elements disagree",
                report.mismatches.len(),
                report.checked
            );
        }
    }
}

/// The running statistics after one training forward on `x`, from `(mean, var)` with `momentum`.
fn updated(x: &Tensor, mean: &[f32], var: &[f32], momentum: f32) -> (Vec<f32>, Vec<f32>) {
    let c = mean.len();
    let (mean, var) = (
        Tensor::from_vec(mean.to_vec(), &[c]).unwrap(),
        Tensor::from_vec(var.to_vec(), &[c]).unwrap(),
    );
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let running = RunningStats {
        mean: &mean,
        var: &var,
        momentum,
    };
    let (_, new) =
        bn::batch_norm_train(&mut tape, v, None, EPS, Some(running), Activation::Identity).unwrap();
    let (m, v) = new.unwrap();
    (m.to_vec(), v.to_vec())
}

/// PyTorch's update, `(1 − momentum)·running + momentum·batch`, with the unbiased batch variance
/// `Σ (x − mean)² / (M − 1)` for the running variance.
#[test]
fn running_stats_update_by_hand() {
    // Channel 0 holds 1, 2, 3, 6 (mean 3, squared deviations 4 + 1 + 0 + 9 = 14, so 14/3);
    // channel 1 holds 0, 0, 0, 4 (mean 1, deviations 1 + 1 + 1 + 9 = 12, so 4).
    let x = Tensor::from_vec(vec![1.0, 2.0, 0.0, 0.0, 3.0, 6.0, 0.0, 4.0], &[2, 2, 2, 1]).unwrap();
    let (rm, rv) = ([0.0, 1.0], [1.0, 2.0]);
    let (m, v) = updated(&x, &rm, &rv, 0.1);
    assert_close("mean", &m, &[0.3, 1.0], 1e-7, 1e-6);
    assert_close("var", &v, &[0.9 + 1.4 / 3.0, 2.2], 1e-7, 1e-6);
    // Momentum 0 keeps the running values, 1 takes the batch's.
    assert_eq!(updated(&x, &rm, &rv, 0.0), (rm.to_vec(), rv.to_vec()));
    let (m, v) = updated(&x, &rm, &rv, 1.0);
    assert_close("batch mean", &m, &[3.0, 1.0], 1e-6, 1e-6);
    assert_close("batch var", &v, &[14.0 / 3.0, 4.0], 1e-6, 1e-6);
}

#[test]
fn bad_arguments_are_errors() {
    let mut tape = Tape::new();
    let x = tape.constant(randn(&[2, 3, 4, 4], 1));
    let x3 = tape.constant(randn(&[2, 3, 4], 2));
    let single = tape.constant(randn(&[1, 3, 1, 1], 3));
    let g3 = tape.constant(randn(&[3], 4));
    let g4 = tape.constant(randn(&[4], 5));
    let g13 = tape.constant(randn(&[1, 3], 6));
    let c3 = randn(&[3], 7).map(f32::abs);
    let c4 = randn(&[4], 8).map(f32::abs);

    let train_err = |tape: &mut Tape, x: Var, affine: Option<(Var, Var)>, eps: f32| {
        bn::batch_norm_train(tape, x, affine, eps, None, Activation::Identity).err()
    };
    assert!(matches!(
        train_err(&mut tape, x3, None, EPS),
        Some(Error::ShapeMismatch {
            op: "batch_norm_train",
            ..
        })
    ));
    for affine in [(g4, g3), (g3, g4), (g13, g3)] {
        assert!(matches!(
            train_err(&mut tape, x, Some(affine), EPS),
            Some(Error::ShapeMismatch {
                op: "batch_norm_train",
                ..
            })
        ));
    }
    for eps in [-1e-5, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            train_err(&mut tape, x, None, eps),
            Some(Error::InvalidArgument {
                op: "batch_norm_train",
                ..
            })
        ));
    }
    // One value per channel has no batch variance in training; eval mode takes it.
    assert!(matches!(
        train_err(&mut tape, single, None, EPS),
        Some(Error::InvalidArgument {
            op: "batch_norm_train",
            ..
        })
    ));
    assert!(
        bn::batch_norm_eval(
            &mut tape,
            single,
            Some((g3, g3)),
            &c3,
            &c3,
            EPS,
            Activation::Identity
        )
        .is_ok()
    );

    let eval_err = |tape: &mut Tape, x: Var, affine, m: &Tensor, v: &Tensor| {
        bn::batch_norm_eval(tape, x, affine, m, v, EPS, Activation::Identity).err()
    };
    for (x, affine, m, v) in [
        (x3, None, &c3, &c3),
        (x, Some((g4, g3)), &c3, &c3),
        (x, None, &c4, &c3),
        (x, None, &c3, &c4),
    ] {
        assert!(matches!(
            eval_err(&mut tape, x, affine, m, v),
            Some(Error::ShapeMismatch {
                op: "batch_norm_eval",
                ..
            })
        ));
    }

    // Running statistics of the wrong shape, or a momentum outside [0, 1].
    let running = |mean, var, momentum| RunningStats {
        mean,
        var,
        momentum,
    };
    for bad in [running(&c4, &c3, 0.1), running(&c3, &c4, 0.1)] {
        assert!(matches!(
            bn::batch_norm_train(&mut tape, x, None, EPS, Some(bad), Activation::Identity).err(),
            Some(Error::ShapeMismatch {
                op: "batch_norm_train",
                ..
            })
        ));
    }
    for momentum in [-0.1, 1.5, f32::NAN] {
        let bad = running(&c3, &c3, momentum);
        assert!(matches!(
            bn::batch_norm_train(&mut tape, x, None, EPS, Some(bad), Activation::Identity).err(),
            Some(Error::InvalidArgument {
                op: "batch_norm_train",
                ..
            })
        ));
    }
}
