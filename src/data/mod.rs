//! Image data sets, augmentation and batch loaders.
//!
//! - [`cifar`]: the CIFAR-10 binary format, memory-mapped (and unpacked from its `.tar.gz` once).
//! - [`idx`]: the IDX format of MNIST and Fashion-MNIST, gzipped or plain.
//! - [`dataset`]: the [`ImageDataset`] abstraction both implement, the [`DatasetKind`] chosen by
//!   `--dataset`, its normalisation constants, and [`open`].
//! - [`augment`]: uint8 CHW image -> normalised f32, with random crop, flip and Cutout as in the
//!   original DARTS (spec §9.2).
//! - [`loader`]: the search train/"validation" split (spec §3.1) and a reproducible, resumable,
//!   prefetching [`BatchLoader`].

pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod idx;
pub mod loader;

pub use augment::Transform;
pub use cifar::CifarDataset;
pub use dataset::{DatasetKind, ImageDataset, Split, open};
pub use idx::IdxDataset;
pub use loader::{Batch, BatchLoader, EpochBatches, LoaderState, split_indices};
