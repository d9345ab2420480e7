//! `ops::mixed::normalized_weighted_sum_at`, the DARTS edge's batch norms and weighted sum as one
//! op, on the CPU reference, in training and in eval mode: the same values and running statistics
//! as the ops one by one, gradients that agree with theirs to rounding, finite differences, and
//! bad arguments.

mod common;

use common::{assert_close, randn, uniform};
use darts::ops::batchnorm::{Activation, RunningStats, batch_norm_eval, batch_norm_train};
use darts::ops::elementwise::weighted_sum_at;
use darts::ops::mixed::{MixedTerm, normalized_weighted_sum_at};
use darts::{Error, Result, Tape, Tensor, Var};

const EPS: f32 = 1e-5;

/// Which candidates a test edge normalises: as a DARTS edge, all but the third (the identity).
const NORMALIZED: [bool; 7] = [true, true, false, true, true, true, true];

/// Seven candidate outputs of `shape`, each with its own offset and spread, and a `[3, 8]` matrix
/// of weights whose row 1 (from flat position 9) the edge reads.
fn inputs(shape: &[usize], seed: u64) -> Vec<Tensor> {
    let mut inputs: Vec<Tensor> = (0..7)
        .map(|k| randn(shape, seed + k).map(|v| (1.0 + k as f32 * 0.3) * v + k as f32 - 2.0))
        .collect();
    inputs.push(uniform(&[3, 8], 0.05, 1.0, seed + 10));
    inputs
}

/// The fused op on `v` (seven candidates, then the weights), no running statistics.
fn fused(tape: &mut Tape, v: &[Var]) -> Result<Var> {
    let terms: Vec<MixedTerm<'_>> = v[..7]
        .iter()
        .zip(NORMALIZED)
        .map(|(&x, norm)| match norm {
            true => MixedTerm::Normalized(x, None),
            false => MixedTerm::Plain(x),
        })
        .collect();
    Ok(normalized_weighted_sum_at(tape, &terms, v[7], 9, EPS)?.0)
}

/// The same, op by op: a batch norm per normalised candidate, then the weighted sum.
fn one_by_one(tape: &mut Tape, v: &[Var]) -> Result<Var> {
    let ts = v[..7]
        .iter()
        .zip(NORMALIZED)
        .map(|(&x, norm)| match norm {
            true => Ok(batch_norm_train(tape, x, None, EPS, None, Activation::Identity)?.0),
            false => Ok(x),
        })
        .collect::<Result<Vec<_>>>()?;
    weighted_sum_at(tape, &ts, v[7], 9)
}

/// Per candidate, running statistics for `c` channels: means around 0, variances in [0.5, 2).
fn running(c: usize) -> Vec<(Tensor, Tensor)> {
    (0..7)
        .map(|k| (randn(&[c], 200 + k), uniform(&[c], 0.5, 2.0, 300 + k)))
        .collect()
}

/// The fused op on `v` in eval mode, with [`running`] statistics.
fn fused_eval(tape: &mut Tape, v: &[Var]) -> Result<Var> {
    let stats = running(tape.shape(v[0])[1]);
    let terms: Vec<MixedTerm<'_>> = (v[..7].iter().zip(NORMALIZED).zip(&stats))
        .map(|((&x, norm), (mean, var))| match norm {
            true => MixedTerm::Eval { x, mean, var },
            false => MixedTerm::Plain(x),
        })
        .collect();
    Ok(normalized_weighted_sum_at(tape, &terms, v[7], 9, EPS)?.0)
}

/// The same, op by op: an eval-mode batch norm per normalised candidate, then the weighted sum.
fn one_by_one_eval(tape: &mut Tape, v: &[Var]) -> Result<Var> {
    let stats = running(tape.shape(v[0])[1]);
    let ts = (v[..7].iter().zip(NORMALIZED).zip(&stats))
        .map(|((&x, norm), (mean, var))| match norm {
            true => batch_norm_eval(tape, x, None, mean, var, EPS, Activation::Identity),
            false => Ok(x),
        })
        .collect::<Result<Vec<_>>>()?;
    weighted_sum_at(tape, &ts, v[7], 9)
}

/// An op under test: the candidates and the weights in, the edge's output out.
type Op = fn(&mut Tape, &[Var]) -> Result<Var>;

/// The output and the gradient of every input of `f`, from a fixed random output gradient.
fn run(inputs: &[Tensor], f: fn(&mut Tape, &[Var]) -> Result<Var>) -> (Tensor, Vec<Tensor>) {
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let y = f(&mut tape, &vars).unwrap();
    let seed = randn(tape.shape(y), 99);
    let grads = tape.backward_from(y, seed, &vars).unwrap();
    (tape.value(y).clone(), grads)
}

#[test]
fn matches_the_ops_one_by_one() {
    for (i, shape) in [&[3, 5, 4, 6][..], &[2, 3, 7, 5], &[9, 4]]
        .iter()
        .enumerate()
    {
        let inputs = inputs(shape, 10 * i as u64);
        let (y, grads) = run(&inputs, fused);
        let (y_ops, grads_ops) = run(&inputs, one_by_one);
        assert_eq!(
            y.data(),
            y_ops.data(),
            "{shape:?}: the same values, bit for bit"
        );
        for (k, (g, g_ops)) in grads[..7].iter().zip(&grads_ops).enumerate() {
            // x̂ as the forward rounds it rather than (x − mean)·inv_std: rounding apart.
            let what = format!("{shape:?}: gradient of input {k}");
            assert_close(&what, g.data(), g_ops.data(), 1e-5, 1e-4);
        }
        // The weights' gradient sums dy·x̂ with x̂ recomputed as the forward computed it, in the
        // order of the weighted sum's own reduction: bit for bit.
        assert_eq!(grads[7].data(), grads_ops[7].data(), "{shape:?}: dw");
        // Only the run of weights the edge reads gets a gradient.
        let dw = grads[7].data();
        assert!(dw[..9].iter().chain(&dw[16..]).all(|&g| g == 0.0));
        assert!(dw[9..16].iter().all(|&g| g != 0.0), "{dw:?}");
    }
}

#[test]
fn eval_mode_matches_the_ops_one_by_one() {
    for (i, shape) in [&[3, 5, 4, 6][..], &[1, 3, 7, 5], &[9, 4]]
        .iter()
        .enumerate()
    {
        let inputs = inputs(shape, 20 + 10 * i as u64);
        let (y, grads) = run(&inputs, fused_eval);
        let (y_ops, grads_ops) = run(&inputs, one_by_one_eval);
        assert_eq!(y.data(), y_ops.data(), "{shape:?}: bit for bit");
        for (k, (g, g_ops)) in grads.iter().zip(&grads_ops).enumerate() {
            // inv_std · (w · dy) either way, the op by op adding a zero shift: a −0 may differ.
            let what = format!("{shape:?}: eval gradient of input {k}");
            assert_close(&what, g.data(), g_ops.data(), 0.0, 0.0);
        }
    }
}

#[test]
fn gradients() {
    let settings = darts::gradcheck::GradCheck {
        step: 1e-2,
        atol: 1e-3,
        rtol: 5e-3,
        max_points: 40,
        ..Default::default()
    };
    for (i, shape) in [&[3, 2, 3, 3][..], &[5, 3]].iter().enumerate() {
        for (mode, f) in [("train", fused as Op), ("eval", fused_eval)] {
            darts::gradcheck::check_gradients(&inputs(shape, 50 + i as u64), settings, f)
                .unwrap()
                .assert_ok(&format!("normalized_weighted_sum {mode} {shape:?}"));
        }
    }
}

#[test]
fn running_statistics_are_those_of_each_batch_norm() {
    let shape = [4, 3, 5, 5];
    let inputs = inputs(&shape, 70);
    let (mean, var) = (randn(&[3], 80), uniform(&[3], 0.5, 2.0, 81));
    let running = RunningStats {
        mean: &mean,
        var: &var,
        momentum: 0.1,
    };
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let terms = [
        MixedTerm::Normalized(vars[0], Some(running)),
        MixedTerm::Plain(vars[1]),
        MixedTerm::Normalized(vars[2], None),
    ];
    let (_, new) = normalized_weighted_sum_at(&mut tape, &terms, vars[7], 0, EPS).unwrap();
    assert!(new[1].is_none() && new[2].is_none());
    let (got_mean, got_var) = new[0].clone().unwrap();
    let (_, want) = batch_norm_train(
        &mut tape,
        vars[0],
        None,
        EPS,
        Some(running),
        Activation::Identity,
    )
    .unwrap();
    let (want_mean, want_var) = want.unwrap();
    assert_eq!(got_mean.data(), want_mean.data());
    assert_eq!(got_var.data(), want_var.data());
}

#[test]
fn bad_arguments_are_errors() {
    let shape = [2, 3, 2, 2];
    let mut tape = Tape::new();
    let x = tape.leaf(randn(&shape, 1));
    let other = tape.leaf(randn(&[2, 4, 2, 2], 2));
    let w = tape.leaf(uniform(&[9], 0.0, 1.0, 3));
    let err = |terms: &[MixedTerm<'_>], at: usize, tape: &mut Tape| {
        normalized_weighted_sum_at(tape, terms, w, at, EPS).unwrap_err()
    };
    let none: [MixedTerm<'_>; 0] = [];
    assert!(matches!(
        err(&none, 0, &mut tape),
        Error::WrongInputCount { .. }
    ));
    let nine = [MixedTerm::Normalized(x, None); 9];
    let e = err(&nine, 0, &mut tape);
    assert!(e.to_string().contains("at most 8"), "{e}");
    let e = err(
        &[MixedTerm::Plain(x), MixedTerm::Plain(other)],
        0,
        &mut tape,
    );
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let e = err(&[MixedTerm::Plain(x); 2], 8, &mut tape);
    assert!(e.to_string().contains("2 weights from position 8"), "{e}");
    // A batch norm in training needs two values per channel.
    let single = tape.leaf(randn(&[1, 3], 4));
    let e = err(&[MixedTerm::Normalized(single, None)], 0, &mut tape);
    assert!(
        e.to_string().contains("more than 1 value per channel"),
        "{e}"
    );
    // Eval mode does not: it normalises with the running statistics, which must fit the
    // channels; and the two modes do not mix.
    let (mean, var) = (randn(&[3], 5), uniform(&[3], 0.5, 1.0, 6));
    let eval = |x| MixedTerm::Eval {
        x,
        mean: &mean,
        var: &var,
    };
    assert!(normalized_weighted_sum_at(&mut tape, &[eval(single)], w, 0, EPS).is_ok());
    let e = err(&[eval(other)], 0, &mut tape);
    assert!(e.to_string().contains("running_mean"), "{e}");
    let e = err(&[eval(x), MixedTerm::Normalized(x, None)], 0, &mut tape);
    assert!(e.to_string().contains("training and eval-mode"), "{e}");
}
