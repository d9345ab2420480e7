mod common;

use common::randn;
use darts::nn::batchnorm::normalized_mixed_sum;
use darts::nn::{BatchNorm2d, Conv2d, Ctx, Embedding, Linear, ParamStore};
use darts::ops::conv::Conv2dParams;
use darts::ops::elementwise::weighted_sum_at;
use darts::ops::reduce::sum;
use darts::{Error, Rng, Tensor};

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("darts-nn-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small_model(store: &mut ParamStore, seed: u64) -> (Conv2d, BatchNorm2d, Linear) {
    let mut rng = Rng::new(seed);
    let conv = Conv2d::new(
        store,
        "features.0",
        (3, 6),
        [3, 3],
        Conv2dParams::new(1, 1),
        true,
        &mut rng,
    )
    .unwrap();
    let bn = BatchNorm2d::new(store, "features.1", 6, true).unwrap();
    let fc = Linear::new(store, "classifier", (6, 4), true, &mut rng).unwrap();
    (conv, bn, fc)
}

#[test]
fn names_follow_pytorch_state_dict_keys() {
    let mut store = ParamStore::new();
    small_model(&mut store, 1);
    let names: Vec<&str> = store.ids().map(|id| store.name(id)).collect();
    assert_eq!(
        names,
        [
            "features.0.weight",
            "features.0.bias",
            "features.1.weight",
            "features.1.bias",
            "features.1.running_mean",
            "features.1.running_var",
            "classifier.weight",
            "classifier.bias"
        ]
    );
    // Trainable scalars: conv 6·3·3·3 + 6, BN 6 + 6, linear 4·6 + 4 (buffers excluded).
    assert_eq!(store.num_parameters(), 162 + 6 + 12 + 28);
    let mut rng = Rng::new(0);
    assert!(matches!(
        Linear::new(&mut store, "classifier", (6, 4), true, &mut rng),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn default_initialisation_is_bounded_by_fan_in() {
    let mut store = ParamStore::new();
    let mut rng = Rng::new(5);
    Conv2d::new(
        &mut store,
        "c",
        (8, 16),
        [3, 3],
        Conv2dParams::new(1, 1),
        false,
        &mut rng,
    )
    .unwrap();
    Embedding::new(&mut store, "e", 50, 7, &mut rng).unwrap();
    let w = store.get(store.id("c.weight").unwrap());
    let bound = 1.0 / (72f32).sqrt();
    assert!(w.data().iter().all(|v| v.abs() <= bound));
    let spread = w.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        spread > 0.9 * bound,
        "weights do not fill U(-b, b): max {spread}"
    );
    let e = store.get(store.id("e.weight").unwrap());
    let var = e.data().iter().map(|v| v * v).sum::<f32>() / e.numel() as f32;
    assert!((var - 1.0).abs() < 0.3, "embedding variance {var}");
}

#[test]
fn batch_norm_updates_running_statistics_only_in_training() {
    let mut store = ParamStore::new();
    let bn = BatchNorm2d::new(&mut store, "bn", 3, false).unwrap();
    let x = randn(&[4, 3, 5, 5], 9).map(|v| 2.0 * v + 1.0);
    let mean_id = store.id("bn.running_mean").unwrap();
    let var_id = store.id("bn.running_var").unwrap();
    {
        let mut ctx = Ctx::new(&mut store, false);
        let v = ctx.input(x.clone());
        bn.forward(&mut ctx, v).unwrap();
    }
    assert_eq!(store.get(mean_id).data(), &[0.0, 0.0, 0.0]);
    {
        let mut ctx = Ctx::new(&mut store, true);
        let v = ctx.input(x.clone());
        bn.forward(&mut ctx, v).unwrap();
    }
    for c in 0..3 {
        let vals: Vec<f64> = (0..4)
            .flat_map(|n| (0..25).map(move |i| (n, i)))
            .map(|(n, i)| x.data()[(n * 3 + c) * 25 + i] as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / 100.0;
        let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 99.0;
        assert!((store.get(mean_id).data()[c] as f64 - 0.1 * mean).abs() < 1e-5);
        assert!((store.get(var_id).data()[c] as f64 - (0.9 + 0.1 * unbiased)).abs() < 1e-4);
    }
}

/// `normalized_mixed_sum` against each batch norm's `forward` and `weighted_sum_at`, on two
/// identical stores: the same output and running statistics, in training and in eval (one op
/// either way, as the node count shows); with an affine batch norm among the terms, the ops one
/// by one.
#[test]
fn mixed_sum_of_batch_norms_matches_each_norm() {
    let make = || {
        let mut store = ParamStore::new();
        let a = BatchNorm2d::new(&mut store, "a", 3, false).unwrap();
        let b = BatchNorm2d::new(&mut store, "b", 3, false).unwrap();
        let c = BatchNorm2d::new(&mut store, "c", 3, true).unwrap();
        (store, [a, b, c])
    };
    let xs: Vec<Tensor> = (0..3)
        .map(|k| randn(&[4, 3, 2, 5], 20 + k).map(|v| 2.0 * v + k as f32))
        .collect();
    let w = randn(&[4], 30);
    for (training, last) in [(true, 1), (false, 1), (true, 2)] {
        let run = |fused: bool| {
            let (mut store, norms) = make();
            let mut ctx = Ctx::new(&mut store, training);
            let vars: Vec<_> = xs.iter().map(|x| ctx.tape.leaf(x.clone())).collect();
            let weights = ctx.tape.leaf(w.clone());
            let terms = [
                (vars[0], Some(&norms[0])),
                (vars[1], None),
                (vars[2], Some(&norms[last])),
            ];
            let y = if fused {
                normalized_mixed_sum(&mut ctx, &terms, weights, 1).unwrap()
            } else {
                let ts: Vec<_> = terms
                    .iter()
                    .map(|&(x, bn)| bn.map_or(Ok(x), |bn| bn.forward(&mut ctx, x)).unwrap())
                    .collect();
                weighted_sum_at(&mut ctx.tape, &ts, weights, 1).unwrap()
            };
            let (value, nodes) = (ctx.value(y).to_vec(), ctx.tape.num_nodes());
            drop(ctx);
            let stats: Vec<Vec<f32>> = store.ids().map(|id| store.get(id).to_vec()).collect();
            (value, stats, nodes)
        };
        let ((y, stats, nodes), (y_ops, stats_ops, nodes_ops)) = (run(true), run(false));
        let case = format!("training {training}, second norm {last}");
        assert_eq!(y, y_ops, "{case}");
        assert_eq!(stats, stats_ops, "{case}");
        let one_op = last == 1;
        assert_eq!(nodes, if one_op { 1 } else { nodes_ops }, "{case}");
        assert!(nodes_ops > 1, "{case}");
    }
}

#[test]
fn gradients_cover_used_parameters_only() {
    let mut store = ParamStore::new();
    let (conv, _bn, fc) = small_model(&mut store, 2);
    let mut ctx = Ctx::new(&mut store, true);
    let x = ctx.input(randn(&[2, 3, 5, 5], 3));
    let y = conv.forward(&mut ctx, x).unwrap();
    let loss = sum(&mut ctx.tape, y).unwrap();
    let grads = ctx.backward(loss).unwrap();
    let w = store.id("features.0.weight").unwrap();
    assert!(grads.get(w).unwrap().data().iter().any(|&g| g != 0.0));
    assert!(grads.get(store.id("classifier.weight").unwrap()).is_none());
    let _ = fc;
}

#[test]
fn save_and_load_round_trip_exactly() {
    let dir = scratch_dir("roundtrip");
    let path = dir.join("model.safetensors");
    let mut a = ParamStore::new();
    small_model(&mut a, 3);
    a.save(&path).unwrap();
    let mut b = ParamStore::new();
    small_model(&mut b, 4);
    b.load(&path).unwrap();
    for id in a.ids() {
        assert_eq!(a.get(id).data(), b.get(id).data(), "{}", a.name(id));
    }
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn loading_a_bad_file_names_the_problem_and_changes_nothing() {
    let dir = scratch_dir("bad");
    let path = dir.join("model.safetensors");
    let mut small = ParamStore::new();
    small_model(&mut small, 5);
    small.save(&path).unwrap();

    // A model with one more tensor: the file lacks it.
    let mut bigger = ParamStore::new();
    small_model(&mut bigger, 6);
    bigger
        .add_param("extra.weight", Tensor::zeros(&[2]).unwrap())
        .unwrap();
    let before = bigger.get(bigger.id("features.0.weight").unwrap()).to_vec();
    let err = bigger.load(&path).unwrap_err().to_string();
    assert!(err.contains("extra.weight"), "{err}");
    assert_eq!(
        bigger.get(bigger.id("features.0.weight").unwrap()).to_vec(),
        before
    );

    // A model whose shapes differ.
    let mut other = ParamStore::new();
    let mut rng = Rng::new(1);
    Conv2d::new(
        &mut other,
        "features.0",
        (3, 5),
        [3, 3],
        Conv2dParams::new(1, 1),
        true,
        &mut rng,
    )
    .unwrap();
    let err = other.load(&path).unwrap_err().to_string();
    assert!(
        err.contains("features.0.weight") && err.contains("shape"),
        "{err}"
    );

    // A truncated file and a missing one.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = small.load(&cut).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    let err = small.load(&dir.join("missing.safetensors")).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("missing"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
