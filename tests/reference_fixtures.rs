//! darts-rs against PyTorch: the DARTS CNN search network, its gradients, the first- and
//! second-order architect and one full search iteration, compared with the values that the PyTorch
//! reference in `tools/reference/` computed for the same weights and batches (the committed
//! `tests/fixtures/*.safetensors`, written by `tools/reference/make_fixtures.py`; see its docstring
//! for the tensor names; `DARTS_REFERENCE_FIXTURES=DIR` reads them from another folder).
//!
//! Errors are measured per tensor as `max |ours − theirs| / max |theirs|` (a relative error on the
//! tensor's own scale, so near-zero elements do not dominate), and the worst one per quantity is
//! printed (`cargo test --test reference_fixtures -- --nocapture`). Updates are compared as
//! differences from the starting state (Δw, Δα, Δ running statistics), so a wrong step cannot hide
//! behind the much larger unchanged part of the value. A change is allowed `tolerance·max |Δ|`
//! plus `ε·max |start|` (ε = `f32::EPSILON`): both sides round their updated values to f32, which
//! alone costs up to that much when the step is small next to the weights. A running mean's change
//! is measured on the scale of the data it averages (BN momentum × √running variance), since the
//! batch mean of batch-normalised data is zero up to rounding.
//!
//! The tolerances are a few times the worst errors seen over fixtures of many seeds. They hold
//! because the fixture generator keeps every ReLU input and max-pool window away from its kink
//! (see `make_fixtures.py`): at a kink two correct implementations may take different sides.
//!
//! Every check runs on the CPU, on the emulator (our CUDA kernels on the host) and on a CUDA GPU
//! when one is present (otherwise that test prints that it skipped).

use std::path::{Path, PathBuf};

use darts::darts::architect::{Architect, ArchitectConfig, Batch, Wrt, loss_pass};
use darts::darts::cnn::search::{SearchConfig, SearchNetwork};
use darts::darts::searcher::Searcher;
use darts::io::{TensorFile, load_tensors};
use darts::nn::batchnorm::BN_MOMENTUM;
use darts::nn::{Ctx, ParamStore};
use darts::optim::optimizer::Optimizer;
use darts::optim::sgd::Sgd;
use darts::{Device, Rng, Tensor};
use serde_json::Value;

/// The fixtures, one per tiny configuration.
const FIXTURES: [&str; 2] = ["search_rgb", "search_gray"];

/// One fixture file: a starting state, batches, and PyTorch's results; the state and batches are
/// handed out on `device`.
struct Fixture {
    name: &'static str,
    device: Device,
    path: PathBuf,
    file: TensorFile,
    config: SearchConfig,
    hyper: Value,
}

impl Fixture {
    fn load(name: &'static str, device: Device) -> Fixture {
        let dir = std::env::var_os("DARTS_REFERENCE_FIXTURES").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
            PathBuf::from,
        );
        let path = dir.join(format!("{name}.safetensors"));
        let file = load_tensors(&path).unwrap();
        let config = serde_json::from_str(file.meta(&path, "config").unwrap()).unwrap();
        let hyper: Value = serde_json::from_str(file.meta(&path, "hyper").unwrap()).unwrap();
        // The architect hard-codes the original's Adam betas and HVP radius.
        assert_eq!(
            hyper["arch_betas"],
            serde_json::json!([0.5, 0.999]),
            "{name}"
        );
        assert_eq!(hyper["hvp_radius"], serde_json::json!(0.01), "{name}");
        Fixture {
            name,
            device,
            path,
            file,
            config,
            hyper,
        }
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.file
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor `{name}`", self.path.display()))
    }

    /// Every tensor under `prefix.`, keyed by the rest of its name.
    fn group(&self, prefix: &str) -> std::collections::BTreeMap<String, Tensor> {
        let prefix = format!("{prefix}.");
        self.file
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }

    fn hyper(&self, key: &str) -> f32 {
        self.hyper[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no hyperparameter `{key}`", self.name)) as f32
    }

    /// A tensor of the fixture on its device.
    fn on_device(&self, name: &str) -> Tensor {
        self.tensor(name).to_device(self.device).unwrap()
    }

    fn alphas(&self, prefix: &str) -> Vec<Tensor> {
        ["normal", "reduce"]
            .iter()
            .map(|k| self.on_device(&format!("{prefix}.{k}")))
            .collect()
    }

    fn labels(&self, split: &str) -> Vec<usize> {
        let labels = self.tensor(&format!("{split}.labels")).data();
        labels.iter().map(|&l| l as usize).collect()
    }

    /// The network with the fixture's starting weights and BN buffers.
    fn network(&self) -> (SearchNetwork, ParamStore) {
        let mut store = ParamStore::new();
        let net = SearchNetwork::new(&mut store, self.config, &mut Rng::new(0)).unwrap();
        store.load_named(&self.path, self.group("init")).unwrap();
        store.to_device(self.device).unwrap();
        (net, store)
    }

    /// The weight optimizer at the fixture's learning rate, holding its momentum buffers.
    fn sgd(&self, store: &ParamStore) -> Sgd {
        let mut sgd = Sgd::new(
            self.hyper("lr"),
            self.hyper("momentum"),
            self.hyper("weight_decay"),
        );
        let ids = store.trainable_ids();
        assert_eq!(self.group("momentum").len(), ids.len(), "{}", self.name);
        let state = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let buffer = self.on_device(&format!("momentum.{}", store.name(id)));
                (format!("momentum.{i}"), buffer)
            })
            .collect();
        sgd.load_state(state).unwrap();
        sgd
    }

    /// The architect with the fixture's Adam state.
    fn architect(&self, unrolled: bool) -> Architect {
        let mut architect = Architect::new(ArchitectConfig {
            arch_learning_rate: self.hyper("arch_learning_rate"),
            arch_weight_decay: self.hyper("arch_weight_decay"),
            unrolled,
            momentum: self.hyper("momentum"),
            weight_decay: self.hyper("weight_decay"),
        });
        let state = [
            "step",
            "exp_avg.0",
            "exp_avg.1",
            "exp_avg_sq.0",
            "exp_avg_sq.1",
        ]
        .iter()
        .map(|k| (k.to_string(), self.on_device(&format!("adam.{k}"))))
        .collect();
        architect.optimizer_mut().load_state(state).unwrap();
        architect
    }
}

/// The two batches of a fixture, owned so that `Batch` can borrow them.
struct Batches {
    train: (Tensor, Vec<usize>),
    val: (Tensor, Vec<usize>),
}

impl Batches {
    fn of(f: &Fixture) -> Batches {
        Batches {
            train: (f.on_device("train.images"), f.labels("train")),
            val: (f.on_device("val.images"), f.labels("val")),
        }
    }

    fn train(&self) -> Batch<'_> {
        Batch {
            images: &self.train.0,
            labels: &self.train.1,
        }
    }

    fn val(&self) -> Batch<'_> {
        Batch {
            images: &self.val.0,
            labels: &self.val.1,
        }
    }
}

/// The largest magnitude in `values`.
fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// The worst error of one quantity over many tensors, checked against a tolerance: a tensor
/// passes when `max |got − expected| ≤ tolerance · (max |expected| + scale_floor) + rounding`.
struct Worst {
    quantity: String,
    tolerance: f32,
    /// The worst `max |got − expected| / max |expected|` seen, and where.
    error: f32,
    at: String,
    /// The largest share of its allowed error that a tensor used.
    used: f32,
    /// The first tensor outside its allowance: (name, error, allowed error).
    failure: Option<(String, f32, f32)>,
    count: usize,
}

impl Worst {
    fn new(fixture: &Fixture, quantity: &str, tolerance: f32) -> Worst {
        Worst {
            quantity: format!("{}: {quantity}", fixture.name),
            tolerance,
            error: 0.0,
            at: String::new(),
            used: 0.0,
            failure: None,
            count: 0,
        }
    }

    fn add(&mut self, name: &str, got: &[f32], expected: &[f32]) {
        self.add_with_floors(name, got, expected, 0.0, 0.0);
    }

    fn add_with_floors(
        &mut self,
        name: &str,
        got: &[f32],
        expected: &[f32],
        scale_floor: f32,
        rounding: f32,
    ) {
        assert_eq!(got.len(), expected.len(), "{}: {name}", self.quantity);
        let scale = max_abs(expected) + scale_floor;
        let error = got
            .iter()
            .zip(expected)
            .map(|(&g, &e)| (g - e).abs())
            .fold(
                0.0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        let allowed = self.tolerance * scale + rounding;
        if error > allowed && self.failure.is_none() {
            self.failure = Some((name.to_string(), error, allowed));
        }
        let relative = if scale > 0.0 { error / scale } else { error };
        self.used = self.used.max(if allowed > 0.0 {
            error / allowed
        } else {
            error
        });
        self.count += 1;
        if relative >= self.error {
            self.error = relative;
            self.at = name.to_string();
        }
    }

    fn tensor(&mut self, name: &str, got: &Tensor, expected: &Tensor) {
        assert_eq!(got.shape(), expected.shape(), "{}: {name}", self.quantity);
        self.add(name, got.to_host().unwrap().data(), expected.data());
    }

    /// Compares `got − start` with `expected − start` on the scale `max |Δ| + scale_floor`,
    /// allowing for the f32 rounding of the updated values themselves.
    fn change(
        &mut self,
        name: &str,
        start: &Tensor,
        (got, expected): (&Tensor, &Tensor),
        scale_floor: f32,
    ) {
        assert_eq!(got.shape(), expected.shape(), "{}: {name}", self.quantity);
        let (got, start) = (&got.to_host().unwrap(), &start.to_host().unwrap());
        let delta = |t: &Tensor| -> Vec<f32> {
            t.data()
                .iter()
                .zip(start.data())
                .map(|(a, s)| a - s)
                .collect()
        };
        let rounding = f32::EPSILON * max_abs(start.data());
        self.add_with_floors(name, &delta(got), &delta(expected), scale_floor, rounding);
    }

    fn check(self) {
        println!(
            "{:<46} worst relative error {:.2e} at {} ({} tensors; tolerance {:.0e}, {:.0}% of the allowance used)",
            self.quantity,
            self.error,
            self.at,
            self.count,
            self.tolerance,
            100.0 * self.used
        );
        assert!(self.count > 0, "{}: nothing compared", self.quantity);
        if let Some((name, error, allowed)) = self.failure {
            panic!(
                "{}: `{name}` is off by {error:.3e}, more than the {allowed:.3e} allowed",
                self.quantity
            );
        }
    }
}

/// One `#[test]` per device for a check taking the device: on the CPU, on the emulator, and on
/// CUDA GPU 0 (skipped, with a printed line, when none can run here).
macro_rules! on_every_device {
    ($name:ident, $check:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn cpu() {
                $check(Device::Cpu);
            }

            #[test]
            fn emulator() {
                $check(Device::Emu);
            }

            #[test]
            fn cuda() {
                match Device::Cuda(0).check_available() {
                    Ok(()) => $check(Device::Cuda(0)),
                    Err(e) => println!("skipped: {e}"),
                }
            }
        }
    };
}

on_every_device!(forward_matches_pytorch, check_forward);
on_every_device!(gradients_match_pytorch, check_gradients);
on_every_device!(first_order_alpha_gradient_matches_pytorch, |d| {
    check_alpha_gradient(d, false, "first_order", 5e-5)
});
on_every_device!(second_order_alpha_gradient_matches_pytorch, |d| {
    check_alpha_gradient(d, true, "second_order", 1e-4)
});
on_every_device!(first_order_search_step_matches_pytorch, |d| {
    check_search_step(d, false, "first_order", [2e-4, 1e-4, 3e-3, 2e-6])
});
on_every_device!(second_order_search_step_matches_pytorch, |d| {
    check_search_step(d, true, "second_order", [2e-4, 1e-4, 1e-2, 2e-6])
});

fn check_forward(device: Device) {
    for name in FIXTURES {
        let f = Fixture::load(name, device);
        let (net, mut store) = f.network();
        let batches = Batches::of(&f);
        let mut ctx = Ctx::new(&mut store, true);
        let x = ctx.input(batches.train.0.clone());
        let alphas = f.alphas("alpha");
        let normal = ctx.input(alphas[0].clone());
        let reduce = ctx.input(alphas[1].clone());
        let logits = net.forward(&mut ctx, x, normal, reduce).unwrap();
        let mut worst = Worst::new(&f, "logits", 5e-6);
        worst.tensor("logits", ctx.value(logits), f.tensor("forward.logits"));
        worst.check();
        let pass = loss_pass(
            &net,
            &mut f.network().1,
            &alphas,
            batches.train(),
            Wrt::Both,
        )
        .unwrap();
        let mut worst = Worst::new(&f, "loss", 1e-6);
        worst.add("loss", &[pass.loss], f.tensor("forward.loss").data());
        worst.check();
    }
}

fn check_gradients(device: Device) {
    for name in FIXTURES {
        let f = Fixture::load(name, device);
        let (net, mut store) = f.network();
        let batches = Batches::of(&f);
        let pass = loss_pass(
            &net,
            &mut store,
            &f.alphas("alpha"),
            batches.train(),
            Wrt::Both,
        )
        .unwrap();
        let ids = store.trainable_ids();
        let expected = f.group("grad");
        // Every weight has a reference gradient, and nothing else does.
        assert_eq!(expected.len(), ids.len() + 2, "{name}");
        let mut worst = Worst::new(&f, "weight gradients", 2e-4);
        for &id in &ids {
            let got = pass.weight_grads.get(id).expect("every weight is used");
            let name = store.name(id);
            worst.tensor(name, got, &expected[name]);
        }
        worst.check();
        let mut worst = Worst::new(&f, "alpha gradients (training loss)", 2e-5);
        for (k, got) in ["normal", "reduce"].iter().zip(&pass.alpha_grads) {
            worst.tensor(k, got, &expected[&format!("alpha.{k}")]);
        }
        worst.check();
    }
}

/// The architect's α gradient of the given order against the reference.
fn check_alpha_gradient(device: Device, unrolled: bool, order: &str, tolerance: f32) {
    for name in FIXTURES {
        let f = Fixture::load(name, device);
        let (net, mut store) = f.network();
        let batches = Batches::of(&f);
        let sgd = f.sgd(&store);
        let architect = f.architect(unrolled);
        let (_, grads) = architect
            .alpha_gradient(
                &net,
                &mut store,
                &f.alphas("alpha"),
                batches.train(),
                batches.val(),
                f.hyper("lr"),
                &sgd,
            )
            .unwrap();
        let mut worst = Worst::new(&f, &format!("{order} alpha gradients"), tolerance);
        for (k, got) in ["normal", "reduce"].iter().zip(&grads) {
            worst.tensor(k, got, f.tensor(&format!("{order}.alpha_grad.{k}")));
        }
        worst.check();
    }
}

/// One full search iteration of the given order against the reference: Δ weights, Δ BN running
/// statistics, Δα and the two losses, with `tolerances` in that order. Δα gets the loosest one:
/// Adam divides each element's step by its own √v̂, so an element with a small gradient history
/// turns the α gradient's error on the tensor's scale (≈1e-6 first order, ≈2e-5 second order)
/// into up to a hundred times that on the step. Dropping Adam's weight decay, by comparison,
/// moves Δα by 2e-2 to 0.9.
fn check_search_step(device: Device, unrolled: bool, order: &str, tolerances: [f32; 4]) {
    for name in FIXTURES {
        let f = Fixture::load(name, device);
        let (net, store) = f.network();
        let batches = Batches::of(&f);
        let start = store.clone();
        let mut searcher = Searcher {
            sgd: f.sgd(&store),
            store,
            alphas: f.alphas("alpha"),
            architect: f.architect(unrolled),
        };
        let outcome = searcher
            .step(
                &net,
                batches.train(),
                batches.val(),
                f.hyper("lr"),
                f.hyper("grad_clip"),
            )
            .unwrap();
        let after = f.group(&format!("{order}.after"));
        assert_eq!(after.len(), start.ids().count() + 2, "{name}");
        let [weights_tol, buffers_tol, alphas_tol, loss_tol] = tolerances;
        let mut weights = Worst::new(&f, &format!("{order} step: Δ weights"), weights_tol);
        let mut buffers = Worst::new(&f, &format!("{order} step: Δ BN statistics"), buffers_tol);
        for id in start.ids() {
            let name = start.name(id);
            let worst = if start.is_trainable(id) {
                &mut weights
            } else {
                &mut buffers
            };
            // The typical size of a running-mean change: a one-standard-deviation batch mean.
            let scale_floor = match name.strip_suffix("running_mean") {
                Some(prefix) => {
                    let var = start.get(start.id(&format!("{prefix}running_var")).unwrap());
                    BN_MOMENTUM * max_abs(var.to_host().unwrap().data()).sqrt()
                }
                None => 0.0,
            };
            let got = searcher.store.get(id);
            worst.change(name, start.get(id), (got, &after[name]), scale_floor);
        }
        weights.check();
        buffers.check();
        let mut alphas = Worst::new(&f, &format!("{order} step: Δ alpha"), alphas_tol);
        for (k, (got, initial)) in ["normal", "reduce"]
            .iter()
            .zip(searcher.alphas.iter().zip(f.alphas("alpha")))
        {
            alphas.change(k, &initial, (got, &after[&format!("alpha.{k}")]), 0.0);
        }
        alphas.check();
        let mut losses = Worst::new(&f, &format!("{order} step: losses"), loss_tol);
        losses.add(
            "train loss",
            &[outcome.train_loss],
            f.tensor(&format!("{order}.train_loss")).data(),
        );
        losses.add(
            "val loss",
            &[outcome.val_loss],
            f.tensor(&format!("{order}.val_loss")).data(),
        );
        losses.check();
    }
}
