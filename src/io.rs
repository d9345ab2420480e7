//! Files: named tensors in safetensors format (f32, little-endian, with string metadata) and
//! atomic writes, so a crash or a full disk never leaves a half-written checkpoint in place.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::tensor::Tensor;
use crate::{Error, Result};

fn format_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, flushed to disk, and a
/// rename: readers see either the old file or the new one, never a partial write.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid("write", format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

/// Saves named tensors and string metadata as one safetensors file, atomically.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let raw: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| {
            let host = t.to_host()?;
            Ok(host.data().iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect::<Result<_>>()?;
    let mut views = BTreeMap::new();
    for ((name, tensor), bytes) in tensors.iter().zip(&raw) {
        let view = TensorView::new(Dtype::F32, tensor.shape().to_vec(), bytes)
            .map_err(|e| format_error(path, e.to_string()))?;
        if views.insert(name.clone(), view).is_some() {
            return Err(format_error(
                path,
                format!("tensor name `{name}` appears twice"),
            ));
        }
    }
    let metadata: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| format_error(path, e.to_string()))?;
    write_atomically(path, &bytes)
}

/// The contents of a safetensors file: tensors by name (sorted) and the metadata.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Removes and returns the tensor `name`, or an error naming the file and the tensor.
    pub fn take(&mut self, path: &Path, name: &str) -> Result<Tensor> {
        self.tensors
            .remove(name)
            .ok_or_else(|| format_error(path, format!("no tensor named `{name}`")))
    }

    /// The metadata entry `key`, or an error naming the file and the key.
    pub fn meta(&self, path: &Path, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format_error(path, format!("no metadata entry `{key}`")))
    }
}

/// Reads a safetensors file of f32 tensors; a missing, truncated or non-f32 file is an error
/// naming the file.
pub fn load_tensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| format_error(path, e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format_error(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(format_error(
                path,
                format!("`{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, Tensor::from_vec(data, view.shape())?);
    }
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(TensorFile { tensors, metadata })
}
