mod common;

use common::{assert_close, bits, launches, randn};
use darts::device::gpu::KernelId;
use darts::gradcheck::{GradCheck, check_gradients};
use darts::ops::pool;
use darts::ops::shape::concat;
use darts::{Device, Error, Rng, Tape, Tensor};

/// Naive pooling straight from the definition: for every output, walk the `k × k` window in
/// padded coordinates, skip the padding, and reduce. Returns (max, argmax offset in the plane,
/// average over in-image elements).
fn naive_pool(
    x: &Tensor,
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f32>, Vec<usize>, Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = x.shape().try_into().unwrap();
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let (mut max, mut arg, mut avg) = (vec![], vec![], vec![]);
    for plane in x.data().chunks(h * w).take(n * c) {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut best_at, mut sum, mut count) = (f32::NEG_INFINITY, 0, 0.0, 0);
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = (
                            (oy * s + ky) as isize - p as isize,
                            (ox * s + kx) as isize - p as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let at = iy as usize * w + ix as usize;
                        if count == 0 || plane[at] > best {
                            (best, best_at) = (plane[at], at);
                        }
                        sum += plane[at];
                        count += 1;
                    }
                }
                max.push(best);
                arg.push(best_at);
                avg.push(sum / count as f32);
            }
        }
    }
    (max, arg, avg, [n, c, oh, ow])
}

/// Distinct values (a shuffled ramp with step 0.05), so no finite-difference step flips a max.
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
    Rng::new(seed).shuffle(&mut v);
    Tensor::from_vec(v, shape).unwrap()
}

/// (shape, kernel, stride, padding) cases: the DARTS 3x3 pools at stride 1 and 2, odd and
/// non-square sizes, kernel 2 / stride 2 without padding (odd sizes floor), a 5x5 window, a
/// non-overlapping 3x3, the 1x1 identity, and enough 8x8 planes to split across tasks.
const CASES: &[(&[usize], usize, usize, usize)] = &[
    (&[2, 3, 7, 7], 3, 1, 1),
    (&[2, 3, 7, 7], 3, 2, 1),
    (&[1, 2, 9, 5], 3, 1, 1),
    (&[1, 2, 9, 5], 3, 2, 1),
    (&[2, 3, 8, 6], 2, 2, 0),
    (&[1, 3, 7, 9], 2, 2, 0),
    (&[1, 2, 11, 7], 5, 2, 2),
    (&[3, 1, 9, 9], 3, 3, 0),
    (&[1, 5, 3, 1], 1, 1, 0),
    (&[8, 64, 8, 8], 3, 1, 1),
    (&[8, 64, 8, 8], 3, 2, 1),
];

#[test]
fn pools_match_naive_formulas() {
    for (i, &(shape, k, s, p)) in CASES.iter().enumerate() {
        let x = randn(shape, 100 + i as u64);
        let (max, _, avg, out_shape) = naive_pool(&x, k, s, p);
        let mut tape = Tape::new();
        let v = tape.constant(x);
        let m = pool::max_pool2d(&mut tape, v, k, s, p).unwrap();
        let a = pool::avg_pool2d(&mut tape, v, k, s, p).unwrap();
        let what = format!("{shape:?} k{k} s{s} p{p}");
        assert_eq!(tape.shape(m), out_shape, "max {what}");
        assert_eq!(tape.shape(a), out_shape, "avg {what}");
        assert_eq!(tape.value(m).data(), &max[..], "max {what}");
        assert_close(
            &format!("avg {what}"),
            tape.value(a).data(),
            &avg,
            1e-6,
            1e-5,
        );
    }
}

/// The argmax saved in forward is the first maximum of each window: the backward of a seed of ones
/// equals the naive count of windows that pick each element.
#[test]
fn max_pool_backward_routes_to_the_first_maximum() {
    // Values drawn from {0, 1, 2} so most windows hold ties.
    let shape = [2, 3, 7, 5];
    let x = Tensor::uniform(&shape, 0.0, 3.0, &mut Rng::new(5))
        .unwrap()
        .map(f32::floor);
    for &(k, s, p) in &[(3, 1, 1), (3, 2, 1), (2, 2, 0)] {
        let (_, arg, _, [n, c, oh, ow]) = naive_pool(&x, k, s, p);
        let mut expected = vec![0.0; x.numel()];
        for (o, &a) in arg.iter().enumerate() {
            expected[o / (oh * ow) * 35 + a] += 1.0;
        }
        let mut tape = Tape::new();
        let v = tape.leaf(x.clone());
        let y = pool::max_pool2d(&mut tape, v, k, s, p).unwrap();
        let seed = Tensor::full(&[n, c, oh, ow], 1.0).unwrap();
        let dx = tape.backward_from(y, seed, &[v]).unwrap();
        assert_eq!(dx[0].data(), &expected[..], "k{k} s{s} p{p}");
    }
}

/// A constant plane: every window ties everywhere, so the top-left in-image element of each window
/// gets the gradient; with padding the values stay negative (padding is −inf, not 0).
#[test]
fn max_pool_ties_and_negative_padding() {
    let x = Tensor::full(&[1, 1, 4, 4], -5.0).unwrap();
    let mut tape = Tape::new();
    let v = tape.leaf(x);
    let y = pool::max_pool2d(&mut tape, v, 2, 2, 0).unwrap();
    let seed = Tensor::full(&[1, 1, 2, 2], 1.0).unwrap();
    let dx = tape.backward_from(y, seed, &[v]).unwrap();
    #[rustfmt::skip]
    let expected = [
        1.0, 0.0, 1.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
        1.0, 0.0, 1.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(dx[0].data(), &expected);

    // With padding, a window of −5s (or of −infs, which tie with the −inf padding) still reports
    // its first in-image element.
    for value in [-5.0, f32::NEG_INFINITY] {
        let mut tape = Tape::new();
        let v = tape.leaf(Tensor::full(&[1, 1, 3, 3], value).unwrap());
        let y = pool::max_pool2d(&mut tape, v, 3, 1, 1).unwrap();
        assert_eq!(tape.value(y).data(), &[value; 9]);
        let dx = tape
            .backward_from(y, Tensor::full(&[1, 1, 3, 3], 1.0).unwrap(), &[v])
            .unwrap();
        // Window (oy, ox) starts at (oy − 1, ox − 1) clipped to 0, so element (0, 0) wins the four
        // windows around it, (0, 1) and (1, 0) two each, and (1, 1) the last.
        #[rustfmt::skip]
        let expected = [
            4.0, 2.0, 0.0,
            2.0, 1.0, 0.0,
            0.0, 0.0, 0.0,
        ];
        assert_eq!(dx[0].data(), &expected, "value {value}");
    }
}

/// A NaN wins its windows (PyTorch propagates NaN through max pooling) and takes their gradient.
#[test]
fn max_pool_propagates_nan() {
    let mut data: Vec<f32> = (0..25).map(|i| i as f32).collect();
    data[6] = f32::NAN; // (1, 1)
    let mut tape = Tape::new();
    let v = tape.leaf(Tensor::from_vec(data, &[1, 1, 5, 5]).unwrap());
    let y = pool::max_pool2d(&mut tape, v, 3, 2, 1).unwrap();
    // Windows start at rows and columns −1, 1, 3: (1, 1) lies in the four top-left windows.
    let out = tape.value(y).data();
    for (o, &value) in out.iter().enumerate() {
        let (oy, ox) = (o / 3, o % 3);
        assert_eq!(
            value.is_nan(),
            oy < 2 && ox < 2,
            "output ({oy}, {ox}) = {value}"
        );
    }
    assert_eq!(out[8], 24.0);
    let dx = tape
        .backward_from(y, Tensor::full(&[1, 1, 3, 3], 1.0).unwrap(), &[v])
        .unwrap();
    assert_eq!(dx[0].data()[6], 4.0);
}

/// count_include_pad = false: one non-zero value 36 in the corner of a 4x4 plane, 3x3 windows with
/// padding 1: the corner window divides by 4, the edge window next to it by 6, the interior one
/// diagonal to it by 9.
#[test]
fn avg_pool_divisors_at_corners_edges_and_inside() {
    let mut data = vec![0.0; 16];
    data[0] = 36.0;
    let mut tape = Tape::new();
    let v = tape.leaf(Tensor::from_vec(data, &[1, 1, 4, 4]).unwrap());
    let y = pool::avg_pool2d(&mut tape, v, 3, 1, 1).unwrap();
    #[rustfmt::skip]
    let expected = [
        9.0, 6.0, 0.0, 0.0,
        6.0, 4.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(tape.value(y).data(), &expected);
    // Backward: element (0, 0) is in the windows at (0,0), (0,1), (1,0), (1,1): 1/4 + 2/6 + 1/9.
    let dx = tape
        .backward_from(y, Tensor::full(&[1, 1, 4, 4], 1.0).unwrap(), &[v])
        .unwrap();
    let corner = 0.25 + 2.0 / 6.0 + 1.0 / 9.0;
    assert!(
        (dx[0].data()[0] - corner).abs() < 1e-6,
        "{}",
        dx[0].data()[0]
    );
}

#[test]
fn global_avg_pool_matches_plane_means() {
    let x = randn(&[3, 5, 7, 3], 9);
    let mut tape = Tape::new();
    let v = tape.constant(x.clone());
    let y = pool::global_avg_pool(&mut tape, v).unwrap();
    assert_eq!(tape.shape(y), [3, 5]);
    let expected: Vec<f32> = x
        .data()
        .chunks(21)
        .map(|p| p.iter().sum::<f32>() / 21.0)
        .collect();
    assert_close(
        "global_avg_pool",
        tape.value(y).data(),
        &expected,
        1e-6,
        1e-5,
    );
}

/// Pooling is piecewise linear, so finite differences are exact up to rounding; check many points.
fn pool_check() -> GradCheck {
    GradCheck {
        max_points: 300,
        ..GradCheck::default()
    }
}

#[test]
fn max_pool_gradients() {
    for (i, &(shape, k, s, p)) in CASES.iter().take(9).enumerate() {
        let x = distinct(shape, 200 + i as u64);
        check_gradients(&[x], pool_check(), |t, v| {
            pool::max_pool2d(t, v[0], k, s, p)
        })
        .unwrap()
        .assert_ok(&format!("max_pool2d {shape:?} k{k} s{s} p{p}"));
    }
}

#[test]
fn avg_pool_gradients() {
    for (i, &(shape, k, s, p)) in CASES.iter().take(9).enumerate() {
        let x = randn(shape, 300 + i as u64);
        check_gradients(&[x], pool_check(), |t, v| {
            pool::avg_pool2d(t, v[0], k, s, p)
        })
        .unwrap()
        .assert_ok(&format!("avg_pool2d {shape:?} k{k} s{s} p{p}"));
    }
}

#[test]
fn global_avg_pool_gradient() {
    for (i, shape) in [[3, 5, 7, 3], [2, 1, 1, 1], [1, 3, 5, 5]]
        .iter()
        .enumerate()
    {
        let x = randn(shape, 400 + i as u64);
        check_gradients(&[x], pool_check(), |t, v| pool::global_avg_pool(t, v[0]))
            .unwrap()
            .assert_ok(&format!("global_avg_pool {shape:?}"));
    }
}

#[test]
fn bad_arguments_are_errors() {
    let mut tape = Tape::new();
    let x = tape.constant(randn(&[2, 3, 5, 5], 1));
    let flat = tape.constant(randn(&[2, 3, 5], 2));
    type PoolFn = fn(&mut Tape, darts::Var, usize, usize, usize) -> darts::Result<darts::Var>;
    for (name, f) in [
        ("max_pool2d", pool::max_pool2d as PoolFn),
        ("avg_pool2d", pool::avg_pool2d as PoolFn),
    ] {
        for (k, s, p) in [
            (0, 1, 0),
            (3, 0, 1),
            (3, 1, 2),
            (2, 2, 2),
            (7, 1, 0),
            (1, 1, 1),
        ] {
            assert!(
                matches!(f(&mut tape, x, k, s, p), Err(Error::InvalidArgument { op, .. }) if op == name),
                "{name} k{k} s{s} p{p} was accepted"
            );
        }
        assert!(matches!(
            f(&mut tape, flat, 3, 1, 1),
            Err(Error::ShapeMismatch { op, .. }) if op == name
        ));
        // A 7x7 window fits a 5x5 image padded by 1 exactly once, and by 3 at every position.
        let y = f(&mut tape, x, 7, 1, 1).unwrap();
        assert_eq!(tape.shape(y), [2, 3, 1, 1]);
        let y = f(&mut tape, x, 7, 1, 3).unwrap();
        assert_eq!(tape.shape(y), [2, 3, 5, 5]);
    }
    assert!(matches!(
        pool::global_avg_pool(&mut tape, flat),
        Err(Error::ShapeMismatch {
            op: "global_avg_pool",
            ..
        })
    ));
}

/// Both pools of one input as one op (a DARTS edge's two pooling candidates) give the values and
/// the input gradient of the two ops, bit for bit, on the CPU and on the emulator, where each pass
/// is one launch; with one output unused too. The input has ties (values on a coarse grid).
#[test]
fn max_and_avg_pool_is_both_pools_bit_for_bit() {
    for (i, &(shape, k, s, p)) in CASES.iter().enumerate() {
        let values: Vec<f32> = randn(shape, 500 + i as u64)
            .data()
            .iter()
            .map(|v| (2.0 * v).round() / 2.0)
            .collect();
        let x = Tensor::from_vec(values, shape).unwrap();
        for device in [Device::Cpu, Device::Emu] {
            for used in [[true, true], [false, true]] {
                let what = format!("{shape:?} k{k} s{s} p{p} on {device}, used {used:?}");
                let run = |as_one_op: bool| {
                    let mut tape = Tape::new();
                    let xv = tape.leaf(x.to_device(device).unwrap());
                    let pools = match as_one_op {
                        true => pool::max_and_avg_pool2d(&mut tape, xv, k, s, p).unwrap(),
                        false => [
                            pool::max_pool2d(&mut tape, xv, k, s, p).unwrap(),
                            pool::avg_pool2d(&mut tape, xv, k, s, p).unwrap(),
                        ],
                    };
                    let kept: Vec<_> = (0..2).filter(|&j| used[j]).map(|j| pools[j]).collect();
                    let y = concat(&mut tape, &kept, 1).unwrap();
                    let seed = randn(tape.shape(y), 7).to_device(device).unwrap();
                    let values: Vec<Vec<u32>> =
                        pools.iter().map(|&v| bits(tape.value(v))).collect();
                    let grad = tape.backward_from(y, seed, &[xv]).unwrap().remove(0);
                    (values, bits(&grad))
                };
                let launches = || launches(device, KernelId::PoolMaxAvgFwdF32);
                let before = launches();
                let (values, grad) = run(true);
                let one_op = launches() - before;
                assert_eq!(run(false), (values, grad), "{what}");
                if device != Device::Cpu {
                    assert_eq!(one_op, 1, "{what}: forward launches");
                }
            }
        }
    }
}

#[test]
fn max_and_avg_pool_gradients() {
    for (i, &(shape, k, s, p)) in CASES.iter().take(9).enumerate() {
        let x = distinct(shape, 600 + i as u64);
        check_gradients(&[x], pool_check(), |t, v| {
            let pools = pool::max_and_avg_pool2d(t, v[0], k, s, p)?;
            concat(t, &pools, 1)
        })
        .unwrap()
        .assert_ok(&format!("max_and_avg_pool2d {shape:?} k{k} s{s} p{p}"));
    }
}

#[test]
fn max_and_avg_pool_refuses_what_the_pools_refuse() {
    let mut tape = Tape::new();
    let x = tape.constant(randn(&[2, 3, 5, 5], 1));
    let flat = tape.constant(randn(&[2, 3, 5], 2));
    let op = "max_and_avg_pool2d";
    for (k, s, p) in [(0, 1, 0), (3, 0, 1), (3, 1, 2), (7, 1, 0)] {
        assert!(
            matches!(pool::max_and_avg_pool2d(&mut tape, x, k, s, p), Err(Error::InvalidArgument { op: o, .. }) if o == op),
            "k{k} s{s} p{p} was accepted"
        );
    }
    assert!(matches!(
        pool::max_and_avg_pool2d(&mut tape, flat, 3, 1, 1),
        Err(Error::ShapeMismatch { op: o, .. }) if o == op
    ));
    let [max, avg] = pool::max_and_avg_pool2d(&mut tape, x, 3, 2, 1).unwrap();
    assert_eq!(
        (tape.shape(max), tape.shape(avg)),
        (&[2, 3, 3, 3][..], &[2, 3, 3, 3][..])
    );
}
