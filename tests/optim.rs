mod common;

use common::{assert_close, randn};
use darts::optim::adam::Adam;
use darts::optim::asgd::Asgd;
use darts::optim::clip::clip_grad_norm;
use darts::optim::optimizer::Optimizer;
use darts::optim::schedule::{cosine_lr, step_lr};
use darts::optim::sgd::Sgd;
use darts::{Error, Tensor};

fn t(data: &[f32]) -> Tensor {
    Tensor::from_vec(data.to_vec(), &[data.len()]).unwrap()
}

/// Steps `opt` once on `params` with `grads` given as plain slices.
fn step(opt: &mut dyn Optimizer, params: &mut [Tensor], grads: &[&[f32]]) {
    let grads: Vec<Tensor> = grads.iter().map(|g| t(g)).collect();
    opt.step(params, &grads).unwrap();
}

#[test]
fn sgd_with_momentum_and_weight_decay_matches_hand_computation() {
    // lr 0.1, μ 0.9, wd 0.01, w = 1, g = 0.5 every step:
    // 1: d = 0.51, b = d = 0.51, w = 0.949
    // 2: d = 0.5 + 0.00949 = 0.50949, b = 0.459 + 0.50949 = 0.96849, w = 0.852151
    // 3: d = 0.50852151, b = 0.871641 + 0.50852151 = 1.38016251, w = 0.714134749
    let mut opt = Sgd::new(0.1, 0.9, 0.01);
    let mut params = vec![t(&[1.0])];
    assert!(opt.momentum_buffer(0).is_none());
    let expected = [
        (0.949, 0.51),
        (0.852151, 0.96849),
        (0.714_134_75, 1.380_162_5),
    ];
    for (w, b) in expected {
        step(&mut opt, &mut params, &[&[0.5]]);
        assert_close("w", params[0].data(), &[w], 1e-6, 0.0);
        assert_close("b", opt.momentum_buffer(0).unwrap().data(), &[b], 1e-6, 0.0);
    }
    assert!(opt.momentum_buffer(1).is_none());
    assert_eq!((opt.momentum(), opt.weight_decay()), (0.9, 0.01));
}

#[test]
fn sgd_without_momentum_is_plain_gradient_descent() {
    let mut opt = Sgd::new(0.5, 0.0, 0.1);
    let mut params = vec![t(&[1.0, -2.0]), t(&[3.0])];
    step(&mut opt, &mut params, &[&[0.2, 0.4], &[-1.0]]);
    // w − lr·(g + wd·w)
    assert_close("w0", params[0].data(), &[0.85, -2.1], 1e-6, 0.0);
    assert_close("w1", params[1].data(), &[3.35], 1e-6, 0.0);
    assert!(opt.momentum_buffer(0).is_none());
    assert!(opt.state().is_empty());
}

/// torch.optim.Adam written out in f64.
fn adam_reference(
    w: &mut [f64],
    grads: &[Vec<f64>],
    lr: f64,
    (b1, b2): (f64, f64),
    eps: f64,
    wd: f64,
) {
    let (mut m, mut v) = (vec![0.0; w.len()], vec![0.0; w.len()]);
    for (step, g) in grads.iter().enumerate() {
        let t = (step + 1) as i32;
        for i in 0..w.len() {
            let g = g[i] + wd * w[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let m_hat = m[i] / (1.0 - b1.powi(t));
            let v_hat = v[i] / (1.0 - b2.powi(t));
            w[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

#[test]
fn adam_with_weight_decay_matches_hand_computation() {
    let (lr, betas, eps, wd) = (0.01, (0.9, 0.999), 1e-8, 0.1);
    let mut opt = Adam::new(lr, betas, eps, wd);
    let mut params = vec![t(&[1.0, -2.0, 0.25])];
    let grads = [[0.5, 0.1, -0.3], [-0.3, 0.2, 0.05], [0.1, 0.1, 0.1]];
    step(&mut opt, &mut params, &[&grads[0]]);
    // The first bias-corrected step moves every weight by lr against the sign of g + wd·w
    // (0.6, −0.1, −0.275).
    assert_close(
        "first step",
        params[0].data(),
        &[0.99, -1.99, 0.26],
        1e-6,
        0.0,
    );
    for g in &grads[1..] {
        step(&mut opt, &mut params, &[g]);
    }
    let mut w = vec![1.0, -2.0, 0.25];
    let grads64: Vec<Vec<f64>> = grads
        .iter()
        .map(|g| g.iter().map(|&v| v as f64).collect())
        .collect();
    adam_reference(&mut w, &grads64, 0.01, (0.9, 0.999), 1e-8, 0.1);
    let w: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    assert_close("three steps", params[0].data(), &w, 1e-6, 0.0);
    // DARTS' architecture optimizer: betas (0.5, 0.999), lr 3e-4, wd 1e-3.
    let mut opt = Adam::new(3e-4, (0.5, 0.999), 1e-8, 1e-3);
    let mut params = vec![t(&[0.1, -0.2])];
    let grads = [[1.0, -0.5], [0.5, 0.5]];
    for g in &grads {
        step(&mut opt, &mut params, &[g]);
    }
    let mut w = vec![0.1f32 as f64, -0.2f32 as f64];
    let grads64: Vec<Vec<f64>> = grads
        .iter()
        .map(|g| g.iter().map(|&v| v as f64).collect())
        .collect();
    adam_reference(&mut w, &grads64, 3e-4, (0.5, 0.999), 1e-8, 1e-3);
    let w: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    assert_close("darts arch adam", params[0].data(), &w, 1e-7, 0.0);
}

#[test]
fn asgd_averages_the_iterates_from_t0() {
    // DARTS-RNN's settings: lambd 0, t0 0, so η stays lr, and μ after step t is 1/max(1, t):
    // ax = w₁, then w₂, then (w₂ + w₃)/2, then (w₂ + w₃ + w₄)/3.
    let mut opt = Asgd::new(0.1, 0.0, 0.75, 0.0, 0.0);
    let mut params = vec![t(&[1.0, 2.0])];
    assert!(opt.averaged().is_empty());
    let grads = [[1.0, -1.0], [2.0, 0.0], [-1.0, 3.0], [0.5, 0.5]];
    let mut w = [1.0f64, 2.0];
    let mut history = Vec::new();
    for g in &grads {
        step(&mut opt, &mut params, &[g]);
        for i in 0..2 {
            w[i] -= 0.1 * g[i] as f64;
        }
        history.push(w);
        assert_close(
            "w",
            params[0].data(),
            &[w[0] as f32, w[1] as f32],
            1e-6,
            0.0,
        );
        let from = if history.len() == 1 { 0 } else { 1 };
        let kept = &history[from..];
        let mean = |i: usize| (kept.iter().map(|w| w[i]).sum::<f64>() / kept.len() as f64) as f32;
        assert_close(
            &format!("ax after step {}", history.len()),
            opt.averaged()[0].data(),
            &[mean(0), mean(1)],
            1e-6,
            0.0,
        );
    }
}

#[test]
fn asgd_decays_its_step_size_and_applies_weight_decay() {
    // PyTorch's defaults (t0 = 1e6: no averaging yet, ax = w) with weight decay.
    let (lr, lambd, alpha, wd) = (0.5f64, 0.01f64, 0.75f64, 0.1f64);
    let mut opt = Asgd::new(0.5, 0.01, 0.75, 1e6, 0.1);
    let mut params = vec![t(&[1.0])];
    let mut w = 1.0f64;
    let mut eta = lr;
    for (k, g) in [0.5f64, -0.25, 1.0].iter().enumerate() {
        step(&mut opt, &mut params, &[&[*g as f32]]);
        let g = g + wd * w;
        w = w * (1.0 - lambd * eta) - eta * g;
        eta = lr / (1.0 + lambd * lr * (k + 1) as f64).powf(alpha);
        assert_close("w", params[0].data(), &[w as f32], 1e-6, 0.0);
        assert_eq!(opt.averaged()[0].data(), params[0].data());
    }
}

#[test]
fn schedules_match_their_closed_forms() {
    assert_eq!(cosine_lr(0.025, 0.001, 0, 50), 0.025);
    let last = cosine_lr(0.025, 0.001, 49, 50);
    assert!((last - 1.023679e-3).abs() < 1e-9, "{last}");
    assert!((cosine_lr(0.025, 0.001, 25, 50) - 0.013).abs() < 1e-9);
    assert!((cosine_lr(0.025, 0.001, 50, 50) - 0.001).abs() < 1e-9);
    assert_eq!(cosine_lr(0.1, 0.0, 3, 0), 0.1);

    assert_eq!(step_lr(0.1, 0.5, 30, 0), 0.1);
    assert_eq!(step_lr(0.1, 0.5, 30, 29), 0.1);
    assert_eq!(step_lr(0.1, 0.5, 30, 30), 0.05);
    assert_eq!(step_lr(0.1, 0.5, 30, 65), 0.025);
    // DARTS ImageNet: gamma 0.97 every epoch.
    assert!((step_lr(0.1, 0.97, 1, 249) - 0.1 * 0.97f64.powi(249) as f32).abs() < 1e-9);
    assert_eq!(step_lr(0.1, 0.5, 0, 7), 0.1);
}

#[test]
fn clipping_scales_to_the_max_norm() {
    // ‖(3, 4, 12)‖ = 13 over two tensors.
    let grads = vec![t(&[3.0, 4.0]), t(&[12.0])];
    let (clipped, total) = clip_grad_norm(&grads, 1.3).unwrap();
    assert_eq!(total, 13.0);
    let coef = 1.3 / (13.0 + 1e-6);
    assert_close(
        "clipped",
        clipped[0].data(),
        &[3.0 * coef, 4.0 * coef],
        1e-7,
        0.0,
    );
    assert_close("clipped", clipped[1].data(), &[12.0 * coef], 1e-7, 0.0);
    let norm: f32 = clipped
        .iter()
        .flat_map(|g| g.data())
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt();
    assert!((norm - 1.3).abs() < 1e-5, "{norm}");
    // Under the max norm nothing changes.
    let (same, total) = clip_grad_norm(&grads, 20.0).unwrap();
    assert_eq!(total, 13.0);
    assert!(same.iter().zip(&grads).all(|(a, b)| a.shares_storage(b)));
    // A big random gradient list.
    let big = vec![randn(&[33, 31], 1), randn(&[7], 2), randn(&[5, 5, 3, 3], 3)];
    let expected: f64 = big
        .iter()
        .flat_map(|g| g.data())
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .sqrt();
    let (clipped, total) = clip_grad_norm(&big, 5.0).unwrap();
    assert!(
        (total as f64 - expected).abs() < 1e-4,
        "{total} vs {expected}"
    );
    let coef = 5.0 / (total + 1e-6);
    for (c, g) in clipped.iter().zip(&big) {
        assert_eq!(c.data(), g.map(|v| v * coef).data());
    }
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            clip_grad_norm(&grads, bad),
            Err(Error::InvalidArgument {
                op: "clip_grad_norm",
                ..
            })
        ));
    }
}

/// Builds a fresh optimizer with fixed hyperparameters.
type Make = fn() -> Box<dyn Optimizer>;

/// The optimizers under test, by name.
fn optimizers() -> Vec<(&'static str, Make)> {
    vec![
        ("sgd", || Box::new(Sgd::new(0.05, 0.9, 3e-4))),
        ("adam", || {
            Box::new(Adam::new(3e-3, (0.5, 0.999), 1e-8, 1e-3))
        }),
        ("asgd", || Box::new(Asgd::new(0.1, 1e-4, 0.75, 1.0, 1e-3))),
    ]
}

#[test]
fn load_state_of_state_resumes_identically() {
    let shapes: [&[usize]; 3] = [&[3, 5], &[7], &[2, 3, 1]];
    let grads_at = |k: u64| -> Vec<Tensor> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| randn(s, 100 * k + i as u64))
            .collect()
    };
    for (name, make) in optimizers() {
        let mut a = make();
        let mut params: Vec<Tensor> = shapes.iter().map(|s| randn(s, 7)).collect();
        for k in 0..2 {
            a.step(&mut params, &grads_at(k)).unwrap();
        }
        let mut b = make();
        b.load_state(a.state()).unwrap();
        let mut params_b = params.clone();
        for k in 2..5 {
            a.step(&mut params, &grads_at(k)).unwrap();
            b.step(&mut params_b, &grads_at(k)).unwrap();
        }
        for (x, y) in params.iter().zip(&params_b) {
            assert_eq!(x.data(), y.data(), "{name}: resumed parameters differ");
        }
        let (sa, sb) = (a.state(), b.state());
        assert!(!sa.is_empty(), "{name}: no state after stepping");
        assert_eq!(sa.len(), sb.len(), "{name}");
        for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
            assert_eq!(na, nb, "{name}");
            assert_eq!(ta.data(), tb.data(), "{name}: state {na} differs");
        }
        // A fresh optimizer loading an empty state stays fresh; the learning rate is settable.
        let mut c = make();
        c.load_state(Vec::new()).unwrap();
        assert!(c.state().is_empty(), "{name}");
        c.set_lr(0.125);
        assert_eq!(c.lr(), 0.125, "{name}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    for (name, make) in optimizers() {
        let mut opt = make();
        let mut params = vec![t(&[1.0, 2.0]), t(&[3.0])];
        // One gradient short, and a gradient of the wrong shape.
        assert!(
            matches!(
                opt.step(&mut params, &[t(&[1.0, 2.0])]),
                Err(Error::WrongInputCount { .. })
            ),
            "{name}"
        );
        assert!(
            matches!(
                opt.step(&mut params, &[t(&[1.0, 2.0]), t(&[1.0, 2.0])]),
                Err(Error::ShapeMismatch { .. })
            ),
            "{name}"
        );
        // Stepping with other parameters than the state was built for.
        opt.step(&mut params, &[t(&[1.0, 2.0]), t(&[1.0])]).unwrap();
        let mut others = vec![t(&[1.0, 2.0, 3.0]), t(&[3.0])];
        assert!(
            opt.step(&mut others, &[t(&[1.0, 2.0, 3.0]), t(&[1.0])])
                .is_err(),
            "{name}"
        );
        assert!(
            opt.step(&mut params[..1], &[t(&[1.0, 2.0])]).is_err(),
            "{name}"
        );
        // A failed step changes nothing.
        assert_eq!(params[1].data(), make_step_once(make));
        // Bad learning rates are caught at the step.
        opt.set_lr(-1.0);
        assert!(
            matches!(
                opt.step(&mut params, &[t(&[1.0, 2.0]), t(&[1.0])]),
                Err(Error::InvalidArgument { .. })
            ),
            "{name}"
        );
        // Malformed state: an unknown name, a duplicate, and a gap in the indices.
        let state = opt.state();
        let mut unknown = state.clone();
        unknown.push(("velocity.0".into(), t(&[0.0])));
        assert!(opt.load_state(unknown).is_err(), "{name}");
        let mut duplicate = state.clone();
        duplicate.push(state[0].clone());
        assert!(opt.load_state(duplicate).is_err(), "{name}");
        let gap: Vec<_> = state
            .iter()
            .filter(|(n, _)| !n.ends_with(".0"))
            .cloned()
            .collect();
        assert!(opt.load_state(gap).is_err(), "{name}");
    }
    let mut params = vec![t(&[1.0])];
    let grads = [t(&[1.0])];
    let mut adam = Adam::new(0.1, (0.9, 1.0), 1e-8, 0.0);
    assert!(matches!(
        adam.step(&mut params, &grads),
        Err(Error::InvalidArgument {
            op: "Adam::step",
            ..
        })
    ));
    let mut sgd = Sgd::new(0.1, -0.9, 0.0);
    assert!(matches!(
        sgd.step(&mut params, &grads),
        Err(Error::InvalidArgument {
            op: "Sgd::step",
            ..
        })
    ));
    // A step count that is not a pair of integers.
    let mut adam = Adam::new(0.1, (0.9, 0.999), 1e-8, 0.0);
    adam.step(&mut params, &grads).unwrap();
    let mut state = adam.state();
    for (name, value) in &mut state {
        if name == "step" {
            *value = t(&[0.0, 1.5]);
        }
    }
    assert!(adam.load_state(state).is_err());
}

/// The second parameter after one step of a fresh optimizer on the fixed inputs of
/// `bad_arguments_are_errors`.
fn make_step_once(make: Make) -> Vec<f32> {
    let mut opt = make();
    let mut params = vec![t(&[1.0, 2.0]), t(&[3.0])];
    opt.step(&mut params, &[t(&[1.0, 2.0]), t(&[1.0])]).unwrap();
    params[1].to_vec()
}
