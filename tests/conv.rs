mod common;

use common::{assert_close, randn};
use darts::gradcheck::{GradCheck, check_gradients};
use darts::ops::conv::{Conv2dParams, conv2d, conv2d_forward};
use darts::{Error, Tape, Tensor};

/// PyTorch's definition, written out as seven loops with f64 sums:
/// `y[n, o, oy, ox] = b[o] + Σ_{c, ky, kx} w[o, c, ky, kx] · x[n, g·Cin/G + c, iy, ix]` with
/// `iy = oy·s − p + ky·d` (zero outside the image) and `g = o / (Cout/G)`.
fn naive_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> Vec<f32> {
    let &[n, c_in, h, wd] = x.shape() else {
        panic!()
    };
    let &[c_out, cin_g, kh, kw] = w.shape() else {
        panic!()
    };
    let [ho, wo] = p.output_size([h, wd], [kh, kw]).unwrap();
    let cout_g = c_out / p.groups;
    let (xd, wdata) = (x.data(), w.data());
    let mut y = Vec::with_capacity(n * c_out * ho * wo);
    for img in 0..n {
        for o in 0..c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b.data()[o] as f64);
                    for c in 0..cin_g {
                        let ci = o / cout_g * cin_g + c;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv =
                                    xd[((img * c_in + ci) * h + iy as usize) * wd + ix as usize];
                                let wv = wdata[((o * cin_g + c) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y.push(acc as f32);
                }
            }
        }
    }
    assert_eq!(y.len(), n * c_out * ho * wo);
    y
}

fn params(
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> Conv2dParams {
    Conv2dParams {
        stride,
        padding,
        dilation,
        groups,
    }
}

/// One test case: input shape, weight shape, parameters, and a name for messages.
struct Case {
    name: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    p: Conv2dParams,
}

/// Shapes covering every kernel path: dense (im2col + GEMM), pointwise, depthwise and grouped,
/// with strides, dilations, rectangular kernels and paddings, and odd sizes.
fn cases() -> Vec<Case> {
    let case = |name, x, w, p| Case { name, x, w, p };
    vec![
        case(
            "dense 3x3 pad 1",
            [3, 5, 7, 9],
            [4, 5, 3, 3],
            Conv2dParams::new(1, 1),
        ),
        case(
            "dense 3x3 stride 2",
            [2, 4, 7, 9],
            [6, 4, 3, 3],
            Conv2dParams::new(2, 1),
        ),
        case(
            "dense dilation 2",
            [2, 3, 9, 7],
            [5, 3, 3, 3],
            Conv2dParams::new(1, 2).dilation(2),
        ),
        case(
            "dense no padding, 2x3 kernel",
            [1, 3, 5, 7],
            [2, 3, 2, 3],
            Conv2dParams::default(),
        ),
        case(
            "dense padding wider than the kernel",
            [2, 2, 3, 5],
            [3, 2, 3, 3],
            Conv2dParams::new(2, 3),
        ),
        case(
            "dense stem, 3 input channels",
            [3, 3, 11, 13],
            [7, 3, 3, 3],
            Conv2dParams::new(1, 1),
        ),
        case(
            "1x7 stride (1,2) pad (0,3)",
            [2, 5, 7, 9],
            [5, 5, 1, 7],
            params([1, 2], [0, 3], [1, 1], 1),
        ),
        case(
            "7x1 stride (2,1) pad (3,0)",
            [2, 5, 9, 7],
            [5, 5, 7, 1],
            params([2, 1], [3, 0], [1, 1], 1),
        ),
        case(
            "pointwise",
            [3, 7, 5, 9],
            [5, 7, 1, 1],
            Conv2dParams::default(),
        ),
        case(
            "pointwise stride 2",
            [3, 6, 7, 9],
            [3, 6, 1, 1],
            Conv2dParams::new(2, 0),
        ),
        case(
            "pointwise grouped",
            [2, 6, 5, 7],
            [4, 3, 1, 1],
            Conv2dParams::default().groups(2),
        ),
        case(
            "depthwise 3x3",
            [3, 5, 7, 9],
            [5, 1, 3, 3],
            Conv2dParams::new(1, 1).groups(5),
        ),
        case(
            "depthwise 3x3 stride 2",
            [3, 5, 7, 9],
            [5, 1, 3, 3],
            Conv2dParams::new(2, 1).groups(5),
        ),
        case(
            "depthwise 5x5 stride 2",
            [2, 3, 9, 7],
            [3, 1, 5, 5],
            Conv2dParams::new(2, 2).groups(3),
        ),
        case(
            "depthwise 3x3 dilation 2",
            [2, 5, 7, 9],
            [5, 1, 3, 3],
            Conv2dParams::new(1, 2).dilation(2).groups(5),
        ),
        case(
            "depthwise 5x5 dilation 2 stride 2",
            [2, 3, 9, 11],
            [3, 1, 5, 5],
            Conv2dParams::new(2, 4).dilation(2).groups(3),
        ),
        case(
            "depthwise rectangular",
            [2, 3, 5, 8],
            [3, 1, 3, 2],
            params([2, 1], [1, 0], [1, 2], 3),
        ),
        case(
            "depthwise stride (1,2), odd width",
            [2, 3, 5, 7],
            [3, 1, 3, 2],
            params([1, 2], [1, 0], [2, 1], 3),
        ),
        case(
            "depthwise 1x1 image",
            [1, 1, 1, 1],
            [1, 1, 1, 1],
            Conv2dParams::default(),
        ),
        case(
            "depthwise kernel larger than the image",
            [2, 4, 3, 2],
            [4, 1, 5, 5],
            Conv2dParams::new(1, 2).groups(4),
        ),
        case(
            "channel multiplier 2",
            [2, 3, 5, 5],
            [6, 1, 3, 3],
            Conv2dParams::new(1, 1).groups(3),
        ),
        case(
            "groups 2, stride (2,1)",
            [2, 6, 7, 5],
            [4, 3, 3, 3],
            params([2, 1], [1, 1], [1, 1], 2),
        ),
    ]
}

#[test]
fn forward_matches_the_naive_formula() {
    for (i, c) in cases().iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = randn(&c.x, seed);
        let w = randn(&c.w, seed + 1);
        let b = randn(&[c.w[0]], seed + 2);
        for bias in [None, Some(&b)] {
            let y = conv2d_forward(&x, &w, bias, c.p).unwrap();
            let [ho, wo] = c.p.output_size([c.x[2], c.x[3]], [c.w[2], c.w[3]]).unwrap();
            assert_eq!(y.shape(), [c.x[0], c.w[0], ho, wo], "{}", c.name);
            let what = format!("{} (bias: {})", c.name, bias.is_some());
            assert_close(&what, y.data(), &naive_conv(&x, &w, bias, c.p), 1e-4, 1e-4);
        }
    }
}

#[test]
fn tape_forward_equals_the_tensor_forward() {
    let c = &cases()[1];
    let (x, w, b) = (randn(&c.x, 1), randn(&c.w, 2), randn(&[c.w[0]], 3));
    let mut tape = Tape::new();
    let (xv, wv, bv) = (
        tape.leaf(x.clone()),
        tape.leaf(w.clone()),
        tape.leaf(b.clone()),
    );
    let y = conv2d(&mut tape, xv, wv, Some(bv), c.p).unwrap();
    let expected = conv2d_forward(&x, &w, Some(&b), c.p).unwrap();
    assert_eq!(tape.value(y).data(), expected.data());
}

/// Convolution is linear in each input, so the central difference is exact whatever the step;
/// a larger step than the default keeps f32 rounding out of the quotient.
fn check(c: &Case, bias: bool, seed: u64) {
    let mut inputs = vec![randn(&c.x, seed), randn(&c.w, seed + 1)];
    if bias {
        inputs.push(randn(&[c.w[0]], seed + 2));
    }
    let settings = GradCheck {
        step: 1e-2,
        ..GradCheck::default()
    };
    let p = c.p;
    check_gradients(&inputs, settings, |t, v| {
        conv2d(t, v[0], v[1], v.get(2).copied(), p)
    })
    .unwrap()
    .assert_ok(c.name);
}

#[test]
fn dense_gradients() {
    // Batch 5 spans two fixed chunks of the weight-gradient sum.
    let c = Case {
        name: "dense stride 2",
        x: [5, 4, 7, 9],
        w: [3, 4, 3, 3],
        p: Conv2dParams::new(2, 1),
    };
    check(&c, true, 1);
    let c = Case {
        name: "dense dilation 2",
        x: [2, 3, 9, 7],
        w: [5, 3, 3, 3],
        p: Conv2dParams::new(1, 2).dilation(2),
    };
    check(&c, false, 2);
    let c = Case {
        name: "1x7 stride (1,2)",
        x: [2, 3, 5, 9],
        w: [4, 3, 1, 7],
        p: params([1, 2], [0, 3], [1, 1], 1),
    };
    check(&c, true, 3);
    let c = Case {
        name: "7x1 stride (2,1)",
        x: [2, 3, 9, 5],
        w: [4, 3, 7, 1],
        p: params([2, 1], [3, 0], [1, 1], 1),
    };
    check(&c, false, 4);
}

#[test]
fn pointwise_gradients() {
    let c = Case {
        name: "pointwise",
        x: [5, 7, 5, 3],
        w: [5, 7, 1, 1],
        p: Conv2dParams::default(),
    };
    check(&c, true, 5);
    let c = Case {
        name: "pointwise stride 2",
        x: [3, 6, 7, 9],
        w: [3, 6, 1, 1],
        p: Conv2dParams::new(2, 0),
    };
    check(&c, false, 6);
}

#[test]
fn depthwise_gradients() {
    let c = Case {
        name: "depthwise 3x3",
        x: [3, 5, 7, 9],
        w: [5, 1, 3, 3],
        p: Conv2dParams::new(1, 1).groups(5),
    };
    check(&c, true, 7);
    let c = Case {
        name: "depthwise 3x3 stride 2",
        x: [2, 3, 7, 9],
        w: [3, 1, 3, 3],
        p: Conv2dParams::new(2, 1).groups(3),
    };
    check(&c, false, 8);
    let c = Case {
        name: "depthwise 3x3 dilation 2",
        x: [2, 3, 9, 7],
        w: [3, 1, 3, 3],
        p: Conv2dParams::new(1, 2).dilation(2).groups(3),
    };
    check(&c, true, 9);
    let c = Case {
        name: "depthwise 5x5 dilation 2 stride 2",
        x: [2, 3, 11, 9],
        w: [3, 1, 5, 5],
        p: Conv2dParams::new(2, 4).dilation(2).groups(3),
    };
    check(&c, false, 10);
    let c = Case {
        name: "depthwise stride (1,2), odd width",
        x: [2, 3, 5, 7],
        w: [3, 1, 3, 2],
        p: params([1, 2], [1, 0], [2, 1], 3),
    };
    check(&c, true, 11);
}

#[test]
fn grouped_gradients() {
    let c = Case {
        name: "groups 2",
        x: [3, 6, 7, 5],
        w: [4, 3, 3, 3],
        p: params([2, 1], [1, 1], [1, 1], 2),
    };
    check(&c, true, 11);
    let c = Case {
        name: "channel multiplier 2",
        x: [2, 3, 5, 7],
        w: [6, 1, 3, 3],
        p: Conv2dParams::new(1, 1).groups(3),
    };
    check(&c, false, 12);
}

/// Gradients come out bit-identical whatever the number of threads.
#[test]
fn gradients_do_not_depend_on_the_thread_count() {
    let grads = |threads: usize, c: &Case| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut tape = Tape::new();
            let x = tape.leaf(randn(&c.x, 1));
            let w = tape.leaf(randn(&c.w, 2));
            let b = tape.leaf(randn(&[c.w[0]], 3));
            let y = conv2d(&mut tape, x, w, Some(b), c.p).unwrap();
            let seed = randn(tape.shape(y), 4);
            tape.backward_from(y, seed, &[x, w, b]).unwrap()
        })
    };
    let dense = Case {
        name: "dense",
        x: [9, 4, 7, 5],
        w: [3, 4, 3, 3],
        p: Conv2dParams::new(1, 1),
    };
    let depthwise = Case {
        name: "depthwise",
        x: [9, 4, 7, 5],
        w: [4, 1, 3, 3],
        p: Conv2dParams::new(1, 1).groups(4),
    };
    for c in [dense, depthwise] {
        let (one, three) = (grads(1, &c), grads(3, &c));
        for (a, b) in one.iter().zip(&three) {
            assert_eq!(a.data(), b.data(), "{}", c.name);
        }
    }
}

#[test]
fn params_and_output_size() {
    assert_eq!(Conv2dParams::default(), params([1, 1], [0, 0], [1, 1], 1));
    assert_eq!(
        Conv2dParams::new(2, 3).dilation(2).groups(4),
        params([2, 2], [3, 3], [2, 2], 4)
    );
    let p = params([1, 2], [0, 3], [1, 1], 1);
    assert_eq!(p.output_size([32, 32], [1, 7]), Some([32, 16]));
    assert_eq!(
        Conv2dParams::new(2, 4)
            .dilation(2)
            .output_size([9, 11], [5, 5]),
        Some([5, 6])
    );
    assert_eq!(Conv2dParams::default().output_size([3, 3], [4, 3]), None);
    assert_eq!(Conv2dParams::new(0, 1).output_size([3, 3], [3, 3]), None);
    assert_eq!(
        Conv2dParams::new(1, 1)
            .dilation(0)
            .output_size([3, 3], [3, 3]),
        None
    );
}

#[test]
fn bad_arguments_are_errors() {
    let run = |x: &[usize], w: &[usize], b: Option<usize>, p: Conv2dParams| {
        let mut tape = Tape::new();
        let x = tape.leaf(randn(x, 1));
        let w = tape.leaf(randn(w, 2));
        let b = b.map(|n| tape.leaf(randn(&[n], 3)));
        conv2d(&mut tape, x, w, b, p)
    };
    let ok = Conv2dParams::new(1, 1);
    let is_shape =
        |r: darts::Result<_>| matches!(r, Err(Error::ShapeMismatch { op: "conv2d", .. }));
    let is_invalid =
        |r: darts::Result<_>| matches!(r, Err(Error::InvalidArgument { op: "conv2d", .. }));
    assert!(run(&[2, 3, 5, 5], &[4, 3, 3, 3], Some(4), ok).is_ok());
    assert!(
        is_shape(run(&[3, 5, 5], &[4, 3, 3, 3], None, ok)),
        "3-D input"
    );
    assert!(
        is_shape(run(&[2, 3, 5, 5], &[4, 3, 3], None, ok)),
        "3-D weight"
    );
    assert!(
        is_shape(run(&[2, 3, 5, 5], &[4, 2, 3, 3], None, ok)),
        "channel mismatch"
    );
    assert!(
        is_shape(run(&[2, 4, 5, 5], &[4, 4, 3, 3], None, ok.groups(2))),
        "channels per group"
    );
    assert!(
        is_invalid(run(&[2, 5, 5, 5], &[4, 2, 3, 3], None, ok.groups(2))),
        "Cin % groups"
    );
    assert!(
        is_invalid(run(&[2, 4, 5, 5], &[5, 2, 3, 3], None, ok.groups(2))),
        "Cout % groups"
    );
    assert!(
        is_invalid(run(
            &[2, 3, 5, 5],
            &[4, 3, 3, 3],
            None,
            Conv2dParams::new(0, 1)
        )),
        "stride 0"
    );
    assert!(
        is_invalid(run(&[2, 3, 5, 5], &[4, 3, 3, 3], None, ok.dilation(0))),
        "dilation 0"
    );
    assert!(
        is_invalid(run(&[2, 3, 5, 5], &[4, 3, 3, 3], None, ok.groups(0))),
        "groups 0"
    );
    assert!(
        is_invalid(run(&[2, 3, 2, 5], &[4, 3, 5, 3], None, ok)),
        "kernel taller than the input"
    );
    assert!(
        is_invalid(run(&[2, 3, 5, 5], &[4, 3, 3, 3], None, ok.dilation(4))),
        "dilated window too big"
    );
    assert!(
        is_shape(run(&[2, 3, 5, 5], &[4, 3, 3, 3], Some(3), ok)),
        "bias length"
    );
    let x = randn(&[2, 3, 5, 5], 1);
    let w = randn(&[4, 3, 3, 3], 2);
    let b2 = randn(&[4, 1], 3);
    assert!(matches!(
        conv2d_forward(&x, &w, Some(&b2), ok),
        Err(Error::ShapeMismatch { op: "conv2d", .. })
    ));
}
