//! A small conv net (conv-BN-ReLU twice, global average pool, linear) trained on generated
//! images: the smallest end-to-end proof that tensors, autograd, layers and optimizers fit.

use crate::Result;
use crate::autograd::Var;
use crate::device::Device;
use crate::nn::{BatchNorm2d, Conv2d, Ctx, Linear, ParamStore};
use crate::ops::conv::Conv2dParams;
use crate::ops::elementwise::relu;
use crate::ops::pool::global_avg_pool;
use crate::ops::softmax::{argmax_rows, cross_entropy};
use crate::optim::sgd::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::optimizer_step;

/// conv3×3 → BN → ReLU → conv3×3 (stride 2) → BN → ReLU → global average pool → linear.
pub struct SmallConvNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    classifier: Linear,
}

impl SmallConvNet {
    /// Registers the network's parameters in `store`.
    pub fn new(
        store: &mut ParamStore,
        in_channels: usize,
        width: usize,
        classes: usize,
        rng: &mut Rng,
    ) -> Result<SmallConvNet> {
        let k3 = [3, 3];
        Ok(SmallConvNet {
            conv1: Conv2d::new(
                store,
                "conv1",
                (in_channels, width),
                k3,
                Conv2dParams::new(1, 1),
                false,
                rng,
            )?,
            bn1: BatchNorm2d::new(store, "bn1", width, true)?,
            conv2: Conv2d::new(
                store,
                "conv2",
                (width, width),
                k3,
                Conv2dParams::new(2, 1),
                false,
                rng,
            )?,
            bn2: BatchNorm2d::new(store, "bn2", width, true)?,
            classifier: Linear::new(store, "classifier", (width, classes), true, rng)?,
        })
    }

    /// Class logits `[N, classes]` for images `x: [N, C, H, W]`.
    pub fn forward(&self, ctx: &mut Ctx, x: Var) -> Result<Var> {
        let h = self.conv1.forward(ctx, x)?;
        let h = self.bn1.forward(ctx, h)?;
        let h = relu(&mut ctx.tape, h)?;
        let h = self.conv2.forward(ctx, h)?;
        let h = self.bn2.forward(ctx, h)?;
        let h = relu(&mut ctx.tape, h)?;
        let h = global_avg_pool(&mut ctx.tape, h)?;
        self.classifier.forward(ctx, h)
    }
}

/// A labelled image set generated from `classes` random templates: each image is its class's
/// template plus Gaussian noise, so a conv net can learn it in a few dozen steps.
pub struct SyntheticImages {
    /// Images, `[N, C, H, W]`.
    pub images: Tensor,
    /// One class per image.
    pub labels: Vec<usize>,
}

impl SyntheticImages {
    /// `count` images of `channels × size × size` in `classes` classes, with noise of std `noise`.
    pub fn generate(
        count: usize,
        classes: usize,
        channels: usize,
        size: usize,
        noise: f32,
        seed: u64,
    ) -> Result<SyntheticImages> {
        let mut rng = Rng::new(seed);
        let plane = channels * size * size;
        let templates = Tensor::normal(&[classes, plane], 0.0, 1.0, &mut rng)?;
        let mut data = Vec::with_capacity(count * plane);
        let mut labels = Vec::with_capacity(count);
        for _ in 0..count {
            let class = rng.below(classes);
            labels.push(class);
            let template = &templates.data()[class * plane..(class + 1) * plane];
            data.extend(template.iter().map(|&t| t + noise * rng.normal()));
        }
        Ok(SyntheticImages {
            images: Tensor::from_vec(data, &[count, channels, size, size])?,
            labels,
        })
    }

    /// Images `start..start + len` (wrapping around) as a batch.
    pub fn batch(&self, start: usize, len: usize) -> Result<(Tensor, Vec<usize>)> {
        let count = self.labels.len();
        let plane: usize = self.images.shape()[1..].iter().product();
        let mut data = Vec::with_capacity(len * plane);
        let mut labels = Vec::with_capacity(len);
        for i in 0..len {
            let j = (start + i) % count;
            data.extend_from_slice(&self.images.data()[j * plane..(j + 1) * plane]);
            labels.push(self.labels[j]);
        }
        let mut shape = self.images.shape().to_vec();
        shape[0] = len;
        Ok((Tensor::from_vec(data, &shape)?, labels))
    }
}

/// Settings of a demonstration training run.
#[derive(Debug, Clone, Copy)]
pub struct DemoConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub seed: u64,
    /// Where the network trains (data and weights start on the host and are moved there).
    pub device: Device,
}

/// What a demonstration run produced.
pub struct DemoOutcome {
    /// Loss and accuracy of every step.
    pub history: Vec<StepStats>,
    /// The trained weights and BN statistics (on the run's device).
    pub store: ParamStore,
}

/// Loss and accuracy of one training step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f32,
    pub accuracy: f32,
}

/// Trains a [`SmallConvNet`] on [`SyntheticImages`] (4 classes, 3×12×12) with SGD (momentum 0.9,
/// weight decay 3e-4, gradient clip 5, as DARTS trains its weights), calling `on_step` after each
/// step. Returns the per-step statistics and the trained weights.
pub fn train_demo(
    config: DemoConfig,
    mut on_step: impl FnMut(usize, StepStats),
) -> Result<DemoOutcome> {
    let data = SyntheticImages::generate(512, 4, 3, 12, 1.0, config.seed)?;
    let mut rng = Rng::new(config.seed.wrapping_add(1));
    let mut store = ParamStore::new();
    let net = SmallConvNet::new(&mut store, 3, 16, 4, &mut rng)?;
    store.to_device(config.device)?;
    let ids = store.trainable_ids();
    let mut sgd = Sgd::new(config.learning_rate, 0.9, 3e-4);
    let mut history = Vec::with_capacity(config.steps);
    for step in 0..config.steps {
        let (images, labels) = data.batch(step * config.batch_size, config.batch_size)?;
        let mut ctx = Ctx::new(&mut store, true);
        let x = ctx.input(images.to_device(config.device)?);
        let logits = net.forward(&mut ctx, x)?;
        let loss = cross_entropy(&mut ctx.tape, logits, &labels, 0.0)?;
        let predictions = argmax_rows(ctx.value(logits))?;
        let correct = predictions
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        let stats = StepStats {
            loss: ctx.value(loss).item()?,
            accuracy: correct as f32 / labels.len() as f32,
        };
        let grads = ctx.backward(loss)?;
        optimizer_step(&mut store, &mut sgd, &ids, &grads, Some(5.0))?;
        on_step(step, stats);
        history.push(stats);
    }
    Ok(DemoOutcome { history, store })
}
