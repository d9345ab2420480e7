//! CIFAR-10, binary version (spec §9.1): `data_batch_1.bin` … `data_batch_5.bin` (train, in that
//! order) and `test_batch.bin`. Each file is a run of 3,073-byte records: one label byte (0..9),
//! then 3,072 pixel bytes, the red, green and blue 32x32 planes, each row-major. A full file holds
//! 10,000 records (30,730,000 bytes); the reader accepts any whole number of records.
//!
//! The files are memory-mapped; only the labels are copied out (and checked) when opening.

use std::fs;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::data::dataset::{Bytes, ImageDataset, Split, format_error, io_error, map_file};
use crate::{Error, Result};

/// Image side length.
pub const SIDE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Pixel bytes per image.
pub const IMAGE_BYTES: usize = CHANNELS * SIDE * SIDE;
/// Bytes per record: the label byte and the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes.
pub const CLASSES: usize = 10;
/// Name of the folder the official archive unpacks to.
pub const FOLDER: &str = "cifar-10-batches-bin";
/// Name of the official archive.
pub const ARCHIVE: &str = "cifar-10-binary.tar.gz";

/// The file names of `split`, in data set order.
pub fn file_names(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
        Split::Test => &["test_batch.bin"],
    }
}

/// One mapped batch file.
struct BatchFile {
    map: Bytes,
    /// Index of this file's first image in the data set.
    start: usize,
}

/// One split of CIFAR-10, memory-mapped.
pub struct CifarDataset {
    files: Vec<BatchFile>,
    labels: Vec<u8>,
}

impl CifarDataset {
    /// Opens `split` from `dir`, which may hold the `.bin` files itself, hold them in a
    /// `cifar-10-batches-bin/` subfolder, or hold only `cifar-10-binary.tar.gz`, which is then
    /// unpacked next to itself once (later calls find the folder).
    pub fn open(dir: &Path, split: Split) -> Result<CifarDataset> {
        let folder = locate(dir, split)?;
        let paths: Vec<PathBuf> = file_names(split).iter().map(|n| folder.join(n)).collect();
        CifarDataset::from_files(&paths)
    }

    /// Opens the given batch files as one data set, images in the order of `paths`.
    pub fn from_files(paths: &[PathBuf]) -> Result<CifarDataset> {
        if paths.is_empty() {
            return Err(Error::invalid("CifarDataset::from_files", "no files given"));
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut labels = Vec::new();
        for path in paths {
            let map = map_file(path).map_err(|e| match e {
                Error::Format { path, message } => Error::Format {
                    path,
                    message: format!(
                        "{message}; expected CIFAR-10 records of {RECORD_BYTES} bytes"
                    ),
                },
                other => other,
            })?;
            if map.len() % RECORD_BYTES != 0 {
                return Err(format_error(
                    path,
                    format!(
                        "size {} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 \
                         records (1 label byte + {IMAGE_BYTES} pixel bytes; a full batch file \
                         is {} bytes): truncated or not a CIFAR-10 binary batch",
                        map.len(),
                        10_000 * RECORD_BYTES
                    ),
                ));
            }
            let start = labels.len();
            for (r, record) in map.chunks_exact(RECORD_BYTES).enumerate() {
                let label = record[0];
                if label as usize >= CLASSES {
                    return Err(format_error(
                        path,
                        format!(
                            "record {r} has label {label}; expected a class in 0..{}",
                            CLASSES - 1
                        ),
                    ));
                }
                labels.push(label);
            }
            files.push(BatchFile { map, start });
        }
        Ok(CifarDataset { files, labels })
    }
}

impl ImageDataset for CifarDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn channels(&self) -> usize {
        CHANNELS
    }

    fn height(&self) -> usize {
        SIDE
    }

    fn width(&self) -> usize {
        SIDE
    }

    fn classes(&self) -> usize {
        CLASSES
    }

    fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }

    fn pixels(&self, i: usize) -> &[u8] {
        assert!(i < self.len(), "image {i} of a set of {}", self.len());
        let f = self.files.partition_point(|file| file.start <= i) - 1;
        let file = &self.files[f];
        let offset = (i - file.start) * RECORD_BYTES + 1;
        &file.map[offset..offset + IMAGE_BYTES]
    }
}

/// The folder holding `split`'s files: `dir`, `dir/cifar-10-batches-bin`, or the latter after
/// unpacking `dir/cifar-10-binary.tar.gz`.
fn locate(dir: &Path, split: Split) -> Result<PathBuf> {
    let has_files = |folder: &Path| file_names(split).iter().any(|n| folder.join(n).is_file());
    let nested = dir.join(FOLDER);
    if has_files(dir) {
        return Ok(dir.to_path_buf());
    }
    if has_files(&nested) {
        return Ok(nested);
    }
    let archive = dir.join(ARCHIVE);
    if archive.is_file() {
        unpack(&archive, dir)?;
        return Ok(nested);
    }
    Err(io_error(
        dir,
        format!(
            "no CIFAR-10 binary files found: expected {} in this folder or in {FOLDER}/, or \
             {ARCHIVE}",
            file_names(split).join(", ")
        ),
    ))
}

/// Unpacks `archive` into `dir/cifar-10-batches-bin`: first into a private temporary folder, then
/// renamed into place, so an interrupted unpack never looks like a finished one and two processes
/// unpacking at once do not see each other's half-written files.
fn unpack(archive: &Path, dir: &Path) -> Result<()> {
    let target = dir.join(FOLDER);
    let temp = dir.join(format!(".{FOLDER}.unpacking-{}", std::process::id()));
    let result = unpack_into(archive, &temp).and_then(|()| {
        let unpacked = temp.join(FOLDER);
        if !unpacked.is_dir() {
            return Err(format_error(
                archive,
                format!("archive has no {FOLDER}/ folder"),
            ));
        }
        match fs::rename(&unpacked, &target) {
            Ok(()) => Ok(()),
            // Another process finished first: its folder is complete, use it.
            Err(_) if target.is_dir() => Ok(()),
            Err(e) => Err(io_error(
                &target,
                format!("cannot move the unpacked folder into place: {e}"),
            )),
        }
    });
    // Best effort: a leftover temporary folder is harmless, and is never mistaken for data.
    let _ = fs::remove_dir_all(&temp);
    result
}

/// Unpacks the gzipped tar `archive` into the fresh folder `temp`.
fn unpack_into(archive: &Path, temp: &Path) -> Result<()> {
    if temp.exists() {
        fs::remove_dir_all(temp)
            .map_err(|e| io_error(temp, format!("cannot remove a stale folder: {e}")))?;
    }
    fs::create_dir_all(temp).map_err(|e| io_error(temp, format!("cannot create: {e}")))?;
    let file =
        fs::File::open(archive).map_err(|e| io_error(archive, format!("cannot open: {e}")))?;
    tar::Archive::new(GzDecoder::new(file))
        .unpack(temp)
        .map_err(|e| {
            format_error(
                archive,
                format!("cannot unpack the gzipped tar archive: {e}"),
            )
        })
}
