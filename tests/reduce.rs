mod common;

use common::randn;
use darts::device::cpu::reduce::column_sums;
use darts::gradcheck::{GradCheck, check_gradients};
use darts::ops::reduce::{mean, sum};
use darts::{Tape, Tensor};

fn reduce(x: &Tensor, f: impl Fn(&mut Tape, darts::Var) -> darts::Result<darts::Var>) -> f32 {
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let y = f(&mut tape, v).unwrap();
    assert_eq!(tape.shape(y), [1]);
    tape.value(y).item().unwrap()
}

#[test]
fn sum_and_mean_match_naive_f64() {
    for shape in [vec![1], vec![7], vec![3, 5, 7], vec![33, 31, 17]] {
        let x = randn(&shape, 1);
        let total: f64 = x.data().iter().map(|&v| v as f64).sum();
        let n = x.numel() as f64;
        assert!((reduce(&x, sum) as f64 - total).abs() <= 1e-6 * (1.0 + total.abs()));
        assert!((reduce(&x, mean) as f64 - total / n).abs() <= 1e-6 * (1.0 + total.abs() / n));
    }
}

/// f64 accumulation keeps small addends that an f32 running sum would drop.
#[test]
fn sum_accumulates_in_f64() {
    let mut data = vec![1.0e8f32];
    data.extend(std::iter::repeat_n(1.0f32, 1000));
    let x = Tensor::from_vec(data, &[1001]).unwrap();
    assert_eq!(reduce(&x, sum), 1.0e8 + 1000.0);
}

#[test]
fn sum_is_bit_identical_run_to_run() {
    let x = randn(&[101, 1001], 2);
    let first = reduce(&x, sum);
    for _ in 0..3 {
        assert_eq!(reduce(&x, sum).to_bits(), first.to_bits());
    }
}

#[test]
fn sum_and_mean_gradients() {
    // Both are linear, so a large step is exact.
    let settings = GradCheck {
        step: 0.1,
        ..GradCheck::default()
    };
    for shape in [vec![1], vec![3, 5, 7], vec![2, 3, 5, 7]] {
        let x = randn(&shape, 3);
        check_gradients(std::slice::from_ref(&x), settings, |t, v| sum(t, v[0]))
            .unwrap()
            .assert_ok("sum");
        check_gradients(&[x], settings, |t, v| mean(t, v[0]))
            .unwrap()
            .assert_ok("mean");
    }
}

#[test]
fn mean_gradient_is_uniform() {
    let x = randn(&[3, 7], 4);
    let mut tape = Tape::new();
    let v = tape.leaf(x);
    let m = mean(&mut tape, v).unwrap();
    let g = &tape.backward(m, &[v]).unwrap()[0];
    assert_eq!(g.shape(), [3, 7]);
    assert!(g.data().iter().all(|&d| (d - 1.0 / 21.0).abs() < 1e-8));
}

/// The bias gradient of a linear layer, over more columns than one parallel task takes.
#[test]
fn column_sums_match_naive() {
    let (rows, cols) = (5, 601);
    let x = randn(&[rows, cols], 5);
    let expected: Vec<f32> = (0..cols)
        .map(|j| {
            (0..rows)
                .map(|i| x.data()[i * cols + j] as f64)
                .sum::<f64>() as f32
        })
        .collect();
    assert_eq!(column_sums(x.data(), rows, cols), expected);
}
