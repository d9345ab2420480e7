//! The DARTS search split and a batch loader.
//!
//! [`split_indices`] cuts the training set as `train_search.py` does (spec §3.1).
//! [`BatchLoader`] draws batches from a subset of indices, reshuffled every epoch like PyTorch's
//! `SubsetRandomSampler`, transforms them, and prepares the next batch on a worker thread while
//! the caller computes.
//!
//! Reproducibility: every random choice is a pure function of `(seed, epoch, position)`. The
//! epoch's order comes from a Philox stream keyed by `(seed, epoch)`, and each image's
//! augmentation from a stream keyed by `(seed, epoch, position in the epoch)`. So the images are
//! the same whatever the thread count, and a [`LoaderState`] of three numbers is all a checkpoint
//! needs to continue with exactly the batches an uninterrupted run would have seen.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::augment::Transform;
use crate::data::dataset::ImageDataset;
use crate::rng::philox4x32;
use crate::{Error, Result, Rng, Tensor};

/// The search split: indices `0..split` train the weights, `split..num_train` are the
/// "validation" half for the architecture, with `split = floor(train_portion * num_train)`.
/// No shuffle before splitting (with CIFAR-10 and portion 0.5: batches 1, 2 and half of 3 against
/// the rest).
pub fn split_indices(num_train: usize, train_portion: f64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..=1.0).contains(&train_portion) {
        return Err(Error::invalid(
            "split_indices",
            format!("train_portion must be in [0, 1], got {train_portion}"),
        ));
    }
    let split = (train_portion * num_train as f64).floor() as usize;
    Ok(((0..split).collect(), (split..num_train).collect()))
}

/// A batch of transformed images.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, C, H, W]` normalised images.
    pub images: Tensor,
    /// The class of each image.
    pub labels: Vec<usize>,
    /// The data set index of each image.
    pub indices: Vec<usize>,
}

/// Where a [`BatchLoader`] stands: the next batch it serves is batch `batch` of epoch `epoch`
/// of the stream named by `seed`. Serialisable, for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Seed of all the loader's random choices.
    pub seed: u64,
    /// Epoch of the next batch, from 0.
    pub epoch: u64,
    /// Index of the next batch within its epoch.
    pub batch: usize,
}

/// What a batch is made of; shared with the worker thread.
#[derive(Clone)]
struct Plan {
    dataset: Arc<dyn ImageDataset>,
    indices: Vec<usize>,
    batch_size: usize,
    transform: Transform,
    shuffle: bool,
}

/// Position used to key the shuffle stream; never the position of an image.
const SHUFFLE_STREAM: u64 = u64::MAX;

/// Seed of the random stream for `position` of `epoch`: Philox of (epoch, position) under `seed`.
fn stream_seed(seed: u64, epoch: u64, position: u64) -> u64 {
    let w = philox4x32(
        [
            position as u32,
            (position >> 32) as u32,
            epoch as u32,
            (epoch >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    (w[0] as u64) | ((w[1] as u64) << 32)
}

impl Plan {
    fn batches_per_epoch(&self) -> usize {
        self.indices.len().div_ceil(self.batch_size)
    }

    /// The order of the indices in `epoch`.
    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut order = self.indices.clone();
        if self.shuffle {
            Rng::new(stream_seed(seed, epoch, SHUFFLE_STREAM)).shuffle(&mut order);
        }
        order
    }

    /// Batch `batch` of `epoch`, whose index order is `order`.
    fn batch(&self, seed: u64, epoch: u64, batch: usize, order: &[usize]) -> Batch {
        let start = batch * self.batch_size;
        let indices = order[start..(start + self.batch_size).min(order.len())].to_vec();
        let d = &*self.dataset;
        let dims = [d.channels(), d.height(), d.width()];
        let numel = dims.iter().product::<usize>();
        let mut data = vec![0.0f32; indices.len() * numel];
        data.par_chunks_mut(numel)
            .zip(indices.par_iter())
            .enumerate()
            .for_each(|(k, (out, &i))| {
                let mut rng = Rng::new(stream_seed(seed, epoch, (start + k) as u64));
                self.transform.fill(d.pixels(i), dims, &mut rng, out);
            });
        let shape = [indices.len(), dims[0], dims[1], dims[2]];
        Batch {
            images: Tensor::from_vec(data, &shape).expect("the loader checked the dimensions"),
            labels: indices.iter().map(|&i| d.label(i)).collect(),
            indices,
        }
    }

    /// Sends batches from `from` on, epoch after epoch, until the receiver hangs up.
    fn produce(&self, from: LoaderState, sender: SyncSender<Batch>) {
        let mut first = from.batch;
        for epoch in from.epoch.. {
            let order = self.order(from.seed, epoch);
            for b in first..self.batches_per_epoch() {
                if sender
                    .send(self.batch(from.seed, epoch, b, &order))
                    .is_err()
                {
                    return;
                }
            }
            first = 0;
        }
    }
}

/// The thread preparing batches ahead of the caller.
struct Worker {
    receiver: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(plan: Arc<Plan>, from: LoaderState) -> Worker {
        // One batch waits in the channel while the next is being made.
        let (sender, receiver) = sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("darts-data".into())
            .spawn(move || plan.produce(from, sender))
            .expect("cannot start the data loader thread");
        Worker {
            receiver: Some(receiver),
            handle: Some(handle),
        }
    }

    /// The next batch; re-raises a panic of the worker thread.
    fn recv(&mut self) -> Batch {
        let received = self.receiver.as_ref().map(|r| r.recv());
        match received {
            Some(Ok(batch)) => batch,
            _ => {
                self.receiver = None;
                match self.handle.take().map(JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => panic!("the data loader thread stopped"),
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Hanging up first makes the thread's next send fail, so it ends and can be joined.
        self.receiver = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Batches of a subset of a data set, reshuffled every epoch (the last batch of an epoch may be
/// smaller), transformed, and prepared one step ahead on a worker thread.
///
/// [`BatchLoader::epoch`] walks the rest of the current epoch; [`BatchLoader::next_batch`] goes
/// on forever, starting a new epoch when one ends (for the architecture step, which draws a
/// validation batch every step).
pub struct BatchLoader {
    plan: Arc<Plan>,
    state: LoaderState,
    worker: Option<Worker>,
}

impl BatchLoader {
    /// A loader over `indices` of `dataset` in batches of `batch_size`, transformed by
    /// `transform`, with all random choices drawn from `seed`. Indices may repeat; they must be
    /// in range, non-empty, and the transform must have the data set's channel count.
    pub fn new(
        dataset: Arc<dyn ImageDataset>,
        indices: Vec<usize>,
        batch_size: usize,
        transform: Transform,
        seed: u64,
    ) -> Result<BatchLoader> {
        const OP: &str = "BatchLoader::new";
        if batch_size == 0 {
            return Err(Error::invalid(OP, "batch_size must be positive"));
        }
        if indices.is_empty() {
            return Err(Error::invalid(OP, "no indices to load"));
        }
        let (c, h, w) = (dataset.channels(), dataset.height(), dataset.width());
        if c * h * w == 0 {
            return Err(Error::invalid(
                OP,
                format!("data set images are {c}x{h}x{w}"),
            ));
        }
        if transform.channels() != c {
            return Err(Error::invalid(
                OP,
                format!(
                    "the transform normalises {} channels, the data set has {c}",
                    transform.channels()
                ),
            ));
        }
        for &i in &indices {
            if i >= dataset.len() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "index {i} is out of range for a data set of {}",
                        dataset.len()
                    ),
                ));
            }
            if dataset.pixels(i).len() != c * h * w {
                return Err(Error::invalid(
                    OP,
                    format!("image {i} does not have {c}x{h}x{w} pixels"),
                ));
            }
        }
        Ok(BatchLoader {
            plan: Arc::new(Plan {
                dataset,
                indices,
                batch_size,
                transform,
                shuffle: true,
            }),
            state: LoaderState {
                seed,
                epoch: 0,
                batch: 0,
            },
            worker: None,
        })
    }

    /// The same loader, but serving the indices in the order given every epoch (for evaluation).
    pub fn in_order(mut self) -> BatchLoader {
        self.worker = None;
        Arc::make_mut(&mut self.plan).shuffle = false;
        self
    }

    /// Number of images per epoch.
    pub fn len(&self) -> usize {
        self.plan.indices.len()
    }

    /// Always false: a loader has at least one index.
    pub fn is_empty(&self) -> bool {
        self.plan.indices.is_empty()
    }

    /// Batch size (the last batch of an epoch may be smaller).
    pub fn batch_size(&self) -> usize {
        self.plan.batch_size
    }

    /// Batches per epoch: `ceil(len / batch_size)`.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.batches_per_epoch()
    }

    /// Where the loader stands; [`BatchLoader::resume`] with it continues from here.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from `state`, as saved by [`BatchLoader::state`] of a loader built with the same
    /// data, indices, batch size and transform.
    pub fn resume(&mut self, state: LoaderState) -> Result<()> {
        if state.batch >= self.batches_per_epoch() {
            return Err(Error::invalid(
                "BatchLoader::resume",
                format!(
                    "batch {} is past the end of an epoch of {} batches",
                    state.batch,
                    self.batches_per_epoch()
                ),
            ));
        }
        self.worker = None;
        self.state = state;
        Ok(())
    }

    /// The next batch, starting a new epoch after the last batch of one.
    pub fn next_batch(&mut self) -> Batch {
        let (plan, state) = (&self.plan, self.state);
        let batch = self
            .worker
            .get_or_insert_with(|| Worker::start(Arc::clone(plan), state))
            .recv();
        self.state.batch += 1;
        if self.state.batch == self.batches_per_epoch() {
            self.state.epoch += 1;
            self.state.batch = 0;
        }
        batch
    }

    /// The remaining batches of the current epoch (all of them when called at its start).
    pub fn epoch(&mut self) -> EpochBatches<'_> {
        EpochBatches {
            epoch: self.state.epoch,
            loader: self,
        }
    }
}

/// Iterator over the rest of one epoch of a [`BatchLoader`].
pub struct EpochBatches<'a> {
    loader: &'a mut BatchLoader,
    epoch: u64,
}

impl Iterator for EpochBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        (self.loader.state.epoch == self.epoch).then(|| self.loader.next_batch())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.loader.state.epoch == self.epoch {
            self.loader.batches_per_epoch() - self.loader.state.batch
        } else {
            0
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochBatches<'_> {}
