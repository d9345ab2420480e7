mod common;

use common::{assert_gradients, uniform};
use darts::ops::dropout as dp;
use darts::rng::uniform_at;
use darts::{Error, Tape, Tensor, Var};

/// Runs `op` on a constant `x` and returns the output values.
fn run(x: &Tensor, op: impl Fn(&mut Tape, Var) -> darts::Result<Var>) -> Vec<f32> {
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let y = op(&mut tape, v).unwrap();
    tape.value(y).to_vec()
}

/// Inputs bounded away from zero, so a zero output always means "dropped".
fn nonzero(shape: &[usize], seed: u64) -> Tensor {
    uniform(shape, 0.5, 1.5, seed)
}

#[test]
fn dropout_keeps_about_one_minus_p_and_scales_the_kept() {
    let x = nonzero(&[33, 1001], 1);
    for p in [0.1, 0.3, 0.75] {
        let y = run(&x, |t, v| dp::dropout(t, v, p, 42));
        let mut kept = 0;
        for (i, (&y, &x)) in y.iter().zip(x.data()).enumerate() {
            // The mask is the Philox stream: kept iff uniform_at(seed, i) ≥ p.
            let keep = uniform_at(42, i as u64) >= p;
            if keep {
                kept += 1;
                assert_eq!(y, x * (1.0 / (1.0 - p)), "p {p}, element {i}");
            } else {
                assert_eq!(y, 0.0, "p {p}, element {i}");
            }
        }
        let fraction = kept as f32 / y.len() as f32;
        assert!(
            (fraction - (1.0 - p)).abs() < 0.01,
            "p {p}: kept {fraction}"
        );
    }
}

#[test]
fn dropout_mask_depends_on_the_seed_only() {
    let x = nonzero(&[7, 31], 2);
    let a = run(&x, |t, v| dp::dropout(t, v, 0.5, 7));
    let b = run(&x, |t, v| dp::dropout(t, v, 0.5, 7));
    let c = run(&x, |t, v| dp::dropout(t, v, 0.5, 8));
    assert_eq!(a, b);
    let differ = a
        .iter()
        .zip(&c)
        .filter(|(a, c)| (**a == 0.0) != (**c == 0.0))
        .count();
    assert!(
        differ > a.len() / 4,
        "seeds 7 and 8 gave nearly the same mask"
    );
    // The mask of an element does not depend on the tensor's shape, only on its index.
    let flat = run(&x.reshape(&[217]).unwrap(), |t, v| {
        dp::dropout(t, v, 0.5, 7)
    });
    assert_eq!(a, flat);
}

#[test]
fn zero_probability_is_the_identity() {
    let mut tape = Tape::new();
    let x = tape.leaf(nonzero(&[3, 5, 7], 3));
    assert_eq!(dp::dropout(&mut tape, x, 0.0, 1).unwrap(), x);
    assert_eq!(dp::variational_dropout(&mut tape, x, 0.0, 1).unwrap(), x);
    assert_eq!(dp::drop_path(&mut tape, x, 0.0, 1).unwrap(), x);
    assert_eq!(tape.num_nodes(), 0);
}

#[test]
fn variational_mask_is_shared_over_time() {
    let (steps, batch, features) = (5, 3, 7);
    let p = 0.4;
    let x = nonzero(&[steps, batch, features], 4);
    let y = run(&x, |t, v| dp::variational_dropout(t, v, p, 9));
    let mut kept = 0;
    for t in 0..steps {
        for b in 0..batch {
            for f in 0..features {
                let i = (t * batch + b) * features + f;
                if uniform_at(9, (b * features + f) as u64) >= p {
                    kept += 1;
                    assert_eq!(y[i], x.data()[i] * (1.0 / (1.0 - p)));
                } else {
                    assert_eq!(y[i], 0.0);
                }
            }
        }
    }
    assert!(kept > 0 && kept < y.len(), "degenerate mask");
    // A long sequence keeps about 1 − p of the [B, F] positions.
    let x = nonzero(&[2, 37, 301], 5);
    let y = run(&x, |t, v| dp::variational_dropout(t, v, 0.75, 10));
    let (first, second) = y.split_at(37 * 301);
    assert!(
        first
            .iter()
            .zip(second)
            .all(|(a, b)| (*a == 0.0) == (*b == 0.0))
    );
    let fraction = first.iter().filter(|&&v| v != 0.0).count() as f32 / first.len() as f32;
    assert!((fraction - 0.25).abs() < 0.015, "kept {fraction}");
}

#[test]
fn drop_path_zeroes_whole_samples() {
    let (n, per) = (33, 3 * 5 * 5);
    let p = 0.3;
    let x = nonzero(&[n, 3, 5, 5], 6);
    let y = run(&x, |t, v| dp::drop_path(t, v, p, 11));
    let mut dropped = 0;
    for s in 0..n {
        let keep = uniform_at(11, s as u64) >= p;
        dropped += usize::from(!keep);
        let range = s * per..(s + 1) * per;
        for (&y, &x) in y[range.clone()].iter().zip(&x.data()[range]) {
            let expected = if keep { x * (1.0 / (1.0 - p)) } else { 0.0 };
            assert_eq!(y, expected, "sample {s}");
        }
    }
    assert!(dropped > 0 && dropped < n, "degenerate drop-path mask");
    // Over many samples about drop_prob of them are dropped.
    // (7 values per sample, so samples straddle the kernel's parallel chunks.)
    let x = nonzero(&[4000, 7], 7);
    let y = run(&x, |t, v| dp::drop_path(t, v, 0.2, 12));
    for (s, sample) in y.chunks(7).enumerate() {
        let keep = uniform_at(12, s as u64) >= 0.2;
        assert!(sample.iter().all(|&v| (v != 0.0) == keep), "sample {s}");
    }
    let dropped = y.chunks(7).filter(|s| s[0] == 0.0).count() as f32 / 4000.0;
    assert!((dropped - 0.2).abs() < 0.02, "dropped {dropped}");
}

#[test]
fn gradients_follow_the_mask() {
    let x = uniform(&[3, 5, 7], -1.0, 1.0, 8);
    assert_gradients("dropout", std::slice::from_ref(&x), |t, v| {
        dp::dropout(t, v[0], 0.3, 5)
    });
    assert_gradients("variational_dropout", std::slice::from_ref(&x), |t, v| {
        dp::variational_dropout(t, v[0], 0.5, 6)
    });
    let x4 = uniform(&[7, 3, 2, 5], -1.0, 1.0, 9);
    assert_gradients("drop_path", &[x4], |t, v| dp::drop_path(t, v[0], 0.4, 7));
    // The gradient is the output's gradient through the same mask: dx = dy ⊙ m.
    let mut tape = Tape::new();
    let v = tape.leaf(x.clone());
    let y = dp::dropout(&mut tape, v, 0.3, 5).unwrap();
    let mask = run(&Tensor::full(&[3, 5, 7], 1.0).unwrap(), |t, v| {
        dp::dropout(t, v, 0.3, 5)
    });
    let dy = uniform(&[3, 5, 7], -1.0, 1.0, 10);
    let dx = tape.backward_from(y, dy.clone(), &[v]).unwrap().remove(0);
    for ((&g, &d), &m) in dx.data().iter().zip(dy.data()).zip(&mask) {
        assert_eq!(g, d * m);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let mut tape = Tape::new();
    let x = tape.constant(nonzero(&[2, 3, 4], 1));
    let x2 = tape.constant(nonzero(&[2, 3], 2));
    for p in [1.0, 1.5, -0.1, f32::NAN] {
        assert!(matches!(
            dp::dropout(&mut tape, x, p, 1),
            Err(Error::InvalidArgument { op: "dropout", .. })
        ));
        assert!(matches!(
            dp::variational_dropout(&mut tape, x, p, 1),
            Err(Error::InvalidArgument {
                op: "variational_dropout",
                ..
            })
        ));
        assert!(matches!(
            dp::drop_path(&mut tape, x, p, 1),
            Err(Error::InvalidArgument {
                op: "drop_path",
                ..
            })
        ));
    }
    assert!(matches!(
        dp::variational_dropout(&mut tape, x2, 0.5, 1),
        Err(Error::ShapeMismatch {
            op: "variational_dropout",
            ..
        })
    ));
}
