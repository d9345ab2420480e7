mod common;

use common::{assert_close, randn};
use darts::device::cpu::matmul::{Mat, gemm};
use darts::gradcheck::{GradCheck, check_gradients};
use darts::ops::matmul::{embedding, linear, matmul};
use darts::{Error, Tape, Tensor};

/// The products are linear in each input, so a large step is exact and keeps f32 rounding out of
/// the finite differences.
fn linear_check() -> GradCheck {
    GradCheck {
        step: 0.1,
        ..GradCheck::default()
    }
}

fn assert_linear_gradients(
    what: &str,
    inputs: &[Tensor],
    f: impl Fn(&mut Tape, &[darts::Var]) -> darts::Result<darts::Var>,
) {
    check_gradients(inputs, linear_check(), f)
        .unwrap()
        .assert_ok(what);
}

/// `a·b` for row-major `[m, k]` and `[k, n]`, accumulated in f64.
fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum::<f64>() as f32;
        }
    }
    c
}

/// The row-major transpose of a `[rows, cols]` matrix.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|idx| x[(idx % rows) * cols + idx / rows])
        .collect()
}

#[test]
fn matmul_matches_naive_product() {
    for (seed, &(m, k, n)) in [(7, 5, 3), (1, 1, 1), (33, 31, 1), (1, 9, 33), (33, 31, 5)]
        .iter()
        .enumerate()
    {
        let a = randn(&[m, k], 10 + seed as u64);
        let b = randn(&[k, n], 20 + seed as u64);
        let mut tape = Tape::new();
        let (av, bv) = (tape.constant(a.clone()), tape.constant(b.clone()));
        let c = matmul(&mut tape, av, bv).unwrap();
        assert_eq!(tape.shape(c), [m, n]);
        assert_close(
            &format!("matmul {m}x{k}·{k}x{n}"),
            tape.value(c).data(),
            &naive_matmul(a.data(), b.data(), m, k, n),
            1e-5,
            1e-5,
        );
    }
}

/// Big enough to split over row blocks in parallel, with every combination of transposed
/// operands, and bit-identical when run again.
#[test]
fn gemm_handles_transposes_and_parallel_blocks() {
    let (m, k, n) = (201, 65, 47);
    let a = randn(&[m, k], 1);
    let b = randn(&[k, n], 2);
    let expected = naive_matmul(a.data(), b.data(), m, k, n);
    let at = transpose(a.data(), m, k);
    let bt = transpose(b.data(), k, n);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a_view = if ta {
            Mat::new(&at, k, m).t()
        } else {
            Mat::new(a.data(), m, k)
        };
        let b_view = if tb {
            Mat::new(&bt, n, k).t()
        } else {
            Mat::new(b.data(), k, n)
        };
        let mut c = vec![f32::NAN; m * n];
        gemm(a_view, b_view, 0.0, &mut c);
        assert_close(&format!("gemm ta={ta} tb={tb}"), &c, &expected, 1e-4, 1e-4);
        let mut again = vec![0.0; m * n];
        gemm(a_view, b_view, 0.0, &mut again);
        assert_eq!(c, again, "gemm is not bit-identical run to run");
    }
    // Splitting the rows does not change a single bit: rows 40..45 alone give the same values.
    let mut whole = vec![0.0; m * n];
    gemm(
        Mat::new(a.data(), m, k),
        Mat::new(b.data(), k, n),
        0.0,
        &mut whole,
    );
    let mut part = vec![0.0; 5 * n];
    let rows = &a.data()[40 * k..45 * k];
    gemm(
        Mat::new(rows, 5, k),
        Mat::new(b.data(), k, n),
        0.0,
        &mut part,
    );
    assert_eq!(part, whole[40 * n..45 * n]);
    // beta = 1 accumulates into the output.
    let mut c = vec![1.0; m * n];
    gemm(
        Mat::new(a.data(), m, k),
        Mat::new(b.data(), k, n),
        1.0,
        &mut c,
    );
    let plus_one: Vec<f32> = expected.iter().map(|v| v + 1.0).collect();
    assert_close("gemm beta=1", &c, &plus_one, 1e-4, 1e-4);
}

#[test]
fn matmul_gradients() {
    for (m, k, n) in [(7, 5, 3), (1, 1, 1), (33, 31, 3)] {
        let a = randn(&[m, k], 3);
        let b = randn(&[k, n], 4);
        assert_linear_gradients(&format!("matmul {m}x{k}·{k}x{n}"), &[a, b], |t, v| {
            matmul(t, v[0], v[1])
        });
    }
}

#[test]
fn linear_matches_formula_with_and_without_bias() {
    let (n, inp, out) = (5, 7, 3);
    let x = randn(&[n, inp], 5);
    let w = randn(&[out, inp], 6);
    let b = randn(&[out], 7);
    let mut tape = Tape::new();
    let (xv, wv, bv) = (
        tape.constant(x.clone()),
        tape.constant(w.clone()),
        tape.constant(b.clone()),
    );
    let with_bias = linear(&mut tape, xv, wv, Some(bv)).unwrap();
    let without = linear(&mut tape, xv, wv, None).unwrap();
    assert_eq!(tape.shape(with_bias), [n, out]);
    let xw = naive_matmul(x.data(), &transpose(w.data(), out, inp), n, inp, out);
    assert_close(
        "linear without bias",
        tape.value(without).data(),
        &xw,
        1e-5,
        1e-5,
    );
    let xwb: Vec<f32> = xw
        .iter()
        .enumerate()
        .map(|(i, v)| v + b.data()[i % out])
        .collect();
    assert_close(
        "linear with bias",
        tape.value(with_bias).data(),
        &xwb,
        1e-5,
        1e-5,
    );
}

#[test]
fn linear_gradients() {
    let x = randn(&[7, 5], 8);
    let w = randn(&[3, 5], 9);
    let b = randn(&[3], 10);
    assert_linear_gradients("linear with bias", &[x.clone(), w.clone(), b], |t, v| {
        linear(t, v[0], v[1], Some(v[2]))
    });
    assert_linear_gradients("linear without bias", &[x, w], |t, v| {
        linear(t, v[0], v[1], None)
    });
    // A single sample and a single output feature.
    let x = randn(&[1, 31], 11);
    let w = randn(&[1, 31], 12);
    let b = randn(&[1], 13);
    assert_linear_gradients("linear 1x31 -> 1", &[x, w, b], |t, v| {
        linear(t, v[0], v[1], Some(v[2]))
    });
}

/// Only the gradients asked for are produced, and they agree with the full computation.
#[test]
fn gradient_of_one_input_only() {
    let x = randn(&[5, 7], 14);
    let w = randn(&[3, 7], 15);
    let mut tape = Tape::new();
    let xv = tape.constant(x.clone());
    let wv = tape.leaf(w);
    let y = linear(&mut tape, xv, wv, None).unwrap();
    let seed = randn(&[5, 3], 16);
    let dw = &tape.backward_from(y, seed.clone(), &[wv]).unwrap()[0];
    // dW = dyᵀ·x
    let expected = naive_matmul(&transpose(seed.data(), 5, 3), x.data(), 3, 5, 7);
    assert_close("dW", dw.data(), &expected, 1e-5, 1e-5);
}

#[test]
fn embedding_picks_rows_and_accumulates_repeated_ids() {
    let (vocab, dim) = (7, 5);
    let w = randn(&[vocab, dim], 17);
    let ids = [3, 0, 3, 6, 3, 1];
    let mut tape = Tape::new();
    let wv = tape.leaf(w.clone());
    let y = embedding(&mut tape, wv, &ids).unwrap();
    assert_eq!(tape.shape(y), [ids.len(), dim]);
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            &tape.value(y).data()[r * dim..(r + 1) * dim],
            &w.data()[id * dim..(id + 1) * dim]
        );
    }
    let seed = randn(&[ids.len(), dim], 18);
    let dw = &tape.backward_from(y, seed.clone(), &[wv]).unwrap()[0];
    let mut expected = vec![0.0f32; vocab * dim];
    for (r, &id) in ids.iter().enumerate() {
        for j in 0..dim {
            expected[id * dim + j] += seed.data()[r * dim + j];
        }
    }
    assert_close("embedding dW", dw.data(), &expected, 1e-6, 1e-6);
    // Rows never looked up get no gradient.
    assert!(dw.data()[2 * dim..3 * dim].iter().all(|&g| g == 0.0));
}

#[test]
fn embedding_gradient() {
    let w = randn(&[11, 3], 19);
    let ids = [10, 2, 2, 0, 10, 10, 5];
    assert_linear_gradients("embedding", &[w], |t, v| embedding(t, v[0], &ids));
}

#[test]
fn bad_arguments_are_errors() {
    let mut tape = Tape::new();
    let a = tape.constant(randn(&[2, 3], 1));
    let b = tape.constant(randn(&[2, 3], 2));
    let v = tape.constant(randn(&[3], 3));
    let cube = tape.constant(randn(&[2, 3, 1], 4));
    let shape_error = |r: darts::Result<darts::Var>, op: &str| {
        assert!(
            matches!(&r, Err(Error::ShapeMismatch { op: o, .. }) if *o == op),
            "{op}: {r:?}"
        )
    };
    shape_error(matmul(&mut tape, a, b), "matmul");
    shape_error(matmul(&mut tape, a, v), "matmul");
    shape_error(matmul(&mut tape, cube, a), "matmul");
    // Weight [2, 3] against an input with 3 features is fine; [3] is not a weight.
    assert!(linear(&mut tape, a, b, None).is_ok());
    shape_error(linear(&mut tape, a, v, None), "linear");
    let wrong_in = tape.constant(randn(&[2, 2], 5));
    shape_error(linear(&mut tape, a, wrong_in, None), "linear");
    let wrong_bias = tape.constant(randn(&[3], 6));
    shape_error(linear(&mut tape, a, b, Some(wrong_bias)), "linear");
    shape_error(embedding(&mut tape, v, &[0]), "embedding");
    assert!(matches!(
        embedding(&mut tape, a, &[0, 2]),
        Err(Error::InvalidArgument {
            op: "embedding",
            ..
        })
    ));
    assert!(matches!(
        embedding(&mut tape, a, &[]),
        Err(Error::InvalidArgument {
            op: "embedding",
            ..
        })
    ));
}
