//! The common face of every image data set ([`ImageDataset`]), the data sets the CLI knows
//! ([`DatasetKind`]) with their normalisation constants, and [`open`], which loads one split.

use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use memmap2::Mmap;

use crate::data::cifar::CifarDataset;
use crate::data::idx::IdxDataset;
use crate::{Error, Result};

/// A labelled set of uint8 images of one size, stored channel-major (CHW) per image.
///
/// `label(i)` and `pixels(i)` panic for `i >= len()`, like slice indexing; loaders check their
/// indices once, up front.
pub trait ImageDataset: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    /// True when the set holds no image (the readers never produce such a set).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Channels per image (3 for CIFAR-10, 1 for MNIST-like sets).
    fn channels(&self) -> usize;
    /// Image height in pixels.
    fn height(&self) -> usize;
    /// Image width in pixels.
    fn width(&self) -> usize;
    /// Number of classes; every label is below it.
    fn classes(&self) -> usize;
    /// The class of image `i`.
    fn label(&self, i: usize) -> usize;
    /// The `channels * height * width` pixel bytes of image `i`, CHW, rows top to bottom.
    fn pixels(&self, i: usize) -> &[u8];
}

/// Which half of a data set to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training images (CIFAR-10: 50,000; MNIST-like: 60,000).
    Train,
    /// The test images (10,000 for all three).
    Test,
}

/// The data sets `--dataset` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// CIFAR-10, binary version (`cifar10`).
    Cifar10,
    /// Fashion-MNIST, IDX files (`fashion-mnist`).
    FashionMnist,
    /// MNIST, IDX files (`mnist`).
    Mnist,
}

impl DatasetKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [DatasetKind; 3] = [
        DatasetKind::Cifar10,
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
    ];

    /// The name `--dataset` takes.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
        }
    }

    /// Number of classes (10 for all three).
    pub fn classes(self) -> usize {
        10
    }

    /// Per-channel mean of the training images scaled to [0, 1], used to normalise.
    pub fn mean(self) -> &'static [f32] {
        match self {
            DatasetKind::Cifar10 => &[0.491_399_68, 0.482_158_27, 0.446_531_24],
            DatasetKind::FashionMnist => &[0.2860],
            DatasetKind::Mnist => &[0.1307],
        }
    }

    /// Per-channel standard deviation matching [`DatasetKind::mean`].
    pub fn std(self) -> &'static [f32] {
        match self {
            DatasetKind::Cifar10 => &[0.247_032_33, 0.243_485_05, 0.261_587_68],
            DatasetKind::FashionMnist => &[0.3530],
            DatasetKind::Mnist => &[0.3081],
        }
    }

    /// Where a system package installs the data set, if one does (Debian's
    /// `dataset-fashion-mnist` puts the four `.gz` IDX files here).
    pub fn system_dir(self) -> Option<&'static Path> {
        match self {
            DatasetKind::FashionMnist => Some(Path::new("/usr/share/datasets/fashion-mnist")),
            DatasetKind::Cifar10 | DatasetKind::Mnist => None,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = Error;

    /// Parses the `--dataset` names `cifar10`, `fashion-mnist` and `mnist`.
    fn from_str(s: &str) -> Result<DatasetKind> {
        DatasetKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
                Error::invalid(
                    "--dataset",
                    format!(
                        "unknown data set '{s}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Loads `split` of the data set `kind` found in `dir` (see [`CifarDataset::open`] and
/// [`IdxDataset::open_dir`] for the layouts accepted).
pub fn open(kind: DatasetKind, dir: &Path, split: Split) -> Result<Arc<dyn ImageDataset>> {
    Ok(match kind {
        DatasetKind::Cifar10 => Arc::new(CifarDataset::open(dir, split)?),
        DatasetKind::FashionMnist | DatasetKind::Mnist => {
            Arc::new(IdxDataset::open_dir(dir, split, kind)?)
        }
    })
}

/// The bytes of a data file: memory-mapped when stored plain, owned when decompressed.
pub(crate) enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(vec) => vec,
        }
    }
}

/// An [`Error::Io`] for `path`.
pub(crate) fn io_error(path: &Path, message: impl fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// An [`Error::Format`] for `path`.
pub(crate) fn format_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Maps the non-empty file at `path` read-only into memory.
pub(crate) fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| io_error(path, format!("cannot open: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| io_error(path, format!("cannot read metadata: {e}")))?
        .len();
    if size == 0 {
        return Err(format_error(path, "file is empty"));
    }
    // SAFETY: the mapping is read-only and private to this process. Its contents are only sound
    // as long as no one truncates or rewrites the file while it is mapped; data set files are
    // inputs that nothing in this program writes, and the dataset owning the mapping keeps it
    // alive for as long as slices into it are handed out.
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| io_error(path, format!("cannot memory-map: {e}")))?;
    Ok(Bytes::Mapped(map))
}
