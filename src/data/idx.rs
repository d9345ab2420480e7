//! The IDX format of MNIST and Fashion-MNIST: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or gzipped (`.gz`).
//!
//! A file starts with a big-endian header: the magic number `0x0000_08NN` (`08` = unsigned bytes,
//! `NN` = number of dimensions), then one u32 per dimension. Images are `0x0000_0803`
//! (count, rows, columns), labels `0x0000_0801` (count). The body is the bytes, row-major.
//! Compression is detected from the gzip magic bytes, not the name. Plain image files are
//! memory-mapped; gzipped ones are decompressed into memory once.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::data::dataset::{
    Bytes, DatasetKind, ImageDataset, Split, format_error, io_error, map_file,
};
use crate::{Error, Result};

/// Magic number of an IDX file of unsigned-byte images (3 dimensions: count, rows, columns).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte labels (1 dimension: count).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// One split of an IDX data set: single-channel images of the size the header gives.
pub struct IdxDataset {
    images: Bytes,
    /// Header length of the image file: where the first image starts.
    offset: usize,
    height: usize,
    width: usize,
    labels: Vec<u8>,
    classes: usize,
}

impl IdxDataset {
    /// Opens `split` of the MNIST-like set `kind` in `dir`. File names may use `-` or `.` before
    /// `idx` and may end in `.gz`; the files may also sit in torchvision's `FashionMNIST/raw/` or
    /// `MNIST/raw/` below `dir`.
    pub fn open_dir(dir: &Path, split: Split, kind: DatasetKind) -> Result<IdxDataset> {
        let (images, labels) = find_files(dir, split, kind)?;
        IdxDataset::open(&images, &labels, kind.classes())
    }

    /// Opens an image file and its label file; every label must be below `classes`.
    pub fn open(images_path: &Path, labels_path: &Path, classes: usize) -> Result<IdxDataset> {
        let images = read_bytes(images_path)?;
        let dims = parse_header(images_path, &images, IMAGES_MAGIC, "images")?;
        let (count, height, width) = (dims[0], dims[1], dims[2]);
        if height == 0 || width == 0 {
            return Err(format_error(
                images_path,
                format!("header gives an image size of {height}x{width}"),
            ));
        }
        let labels = read_bytes(labels_path)?;
        let label_dims = parse_header(labels_path, &labels, LABELS_MAGIC, "labels")?;
        if label_dims[0] != count {
            return Err(format_error(
                labels_path,
                format!(
                    "{} labels, but {} holds {count} images",
                    label_dims[0],
                    images_path.display()
                ),
            ));
        }
        let labels = labels[header_len(1)..].to_vec();
        if let Some(r) = labels.iter().position(|&l| l as usize >= classes) {
            return Err(format_error(
                labels_path,
                format!(
                    "image {r} has label {}; expected a class in 0..{}",
                    labels[r],
                    classes - 1
                ),
            ));
        }
        Ok(IdxDataset {
            images,
            offset: header_len(3),
            height,
            width,
            labels,
            classes,
        })
    }
}

impl ImageDataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn channels(&self) -> usize {
        1
    }

    fn height(&self) -> usize {
        self.height
    }

    fn width(&self) -> usize {
        self.width
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }

    fn pixels(&self, i: usize) -> &[u8] {
        assert!(i < self.len(), "image {i} of a set of {}", self.len());
        let size = self.height * self.width;
        let start = self.offset + i * size;
        &self.images[start..start + size]
    }
}

/// Length of an IDX header with `dims` dimensions.
fn header_len(dims: usize) -> usize {
    4 + 4 * dims
}

/// Checks the header of `bytes` (magic `magic`, so `magic & 0xff` dimensions) and that the body
/// holds exactly the bytes the dimensions call for; returns the dimensions.
fn parse_header(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<Vec<usize>> {
    let ndims = (magic & 0xff) as usize;
    let len = header_len(ndims);
    let word = |k: usize| u32::from_be_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
    if bytes.len() < 4 {
        return Err(format_error(
            path,
            format!("{} bytes is too short for an IDX header", bytes.len()),
        ));
    }
    let found = word(0);
    if found != magic {
        return Err(format_error(
            path,
            format!("bad magic number 0x{found:08x}; expected 0x{magic:08x} (IDX {what})"),
        ));
    }
    if bytes.len() < len {
        return Err(format_error(
            path,
            format!(
                "{} bytes is too short for a {len}-byte IDX header",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims).map(|d| word(4 + 4 * d) as usize).collect();
    if dims[0] == 0 {
        return Err(format_error(path, format!("header gives 0 {what}")));
    }
    let body: usize = dims.iter().product();
    if bytes.len() - len != body {
        return Err(format_error(
            path,
            format!(
                "header gives dimensions {dims:?}, i.e. {body} body bytes, but the file has {} \
                 bytes after the {len}-byte header",
                bytes.len() - len
            ),
        ));
    }
    Ok(dims)
}

/// The contents of `path`: decompressed when it starts with the gzip magic bytes, mapped
/// otherwise.
fn read_bytes(path: &Path) -> Result<Bytes> {
    let mut magic = [0u8; 2];
    let mut file = File::open(path).map_err(|e| io_error(path, format!("cannot open: {e}")))?;
    let n = file
        .read(&mut magic)
        .map_err(|e| io_error(path, format!("cannot read: {e}")))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        let file = File::open(path).map_err(|e| io_error(path, format!("cannot open: {e}")))?;
        let mut out = Vec::new();
        MultiGzDecoder::new(file)
            .read_to_end(&mut out)
            .map_err(|e| format_error(path, format!("cannot decompress gzip data: {e}")))?;
        Ok(Bytes::Owned(out))
    } else {
        map_file(path)
    }
}

/// The image and label files of `split` under `dir` (see [`IdxDataset::open_dir`]).
fn find_files(dir: &Path, split: Split, kind: DatasetKind) -> Result<(PathBuf, PathBuf)> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let torchvision = match kind {
        DatasetKind::Mnist => "MNIST",
        _ => "FashionMNIST",
    };
    for folder in [dir.to_path_buf(), dir.join(torchvision).join("raw")] {
        if let Some(images) = find_file(&folder, prefix, "images", 3) {
            let labels = find_file(&folder, prefix, "labels", 1).ok_or_else(|| {
                io_error(
                    &folder.join(format!("{prefix}-labels-idx1-ubyte")),
                    format!(
                        "missing (with or without .gz), next to {}",
                        images.display()
                    ),
                )
            })?;
            return Ok((images, labels));
        }
    }
    Err(Error::Io {
        path: dir.display().to_string(),
        message: format!(
            "no {kind} files found: expected {prefix}-images-idx3-ubyte[.gz] and \
             {prefix}-labels-idx1-ubyte[.gz] in this folder or in {torchvision}/raw/"
        ),
    })
}

/// The first of `{prefix}-{what}-idx{dims}-ubyte`, `{prefix}-{what}.idx{dims}-ubyte`, each plain
/// or `.gz`, that exists in `folder`.
fn find_file(folder: &Path, prefix: &str, what: &str, dims: usize) -> Option<PathBuf> {
    ["-", "."]
        .iter()
        .flat_map(|sep| ["", ".gz"].map(|ext| format!("{prefix}-{what}{sep}idx{dims}-ubyte{ext}")))
        .map(|name| folder.join(name))
        .find(|p| p.is_file())
}
