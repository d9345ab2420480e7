//! The named parameter store: every weight and buffer of a model under the name PyTorch's
//! `state_dict` would give it (`cells.3._ops.5._ops.4.op.1.weight`), so checkpoints map one-to-one
//! and original checkpoints can be imported. Saved and loaded as safetensors (`crate::io`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::device::Device;
use crate::io::{load_tensors, save_tensors};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A handle to one entry of a [`ParamStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(usize);

impl ParamId {
    /// The position of the entry in the store (insertion order).
    pub fn index(self) -> usize {
        self.0
    }
}

/// One named tensor: a trainable parameter or a buffer (like BN running statistics).
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    value: Tensor,
    trainable: bool,
}

/// Named model tensors in insertion order.
#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

/// `prefix.name`, or `name` when the prefix is empty: how nested modules build their names.
pub fn join_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    fn add(&mut self, name: String, value: Tensor, trainable: bool) -> Result<ParamId> {
        if self.by_name.contains_key(&name) {
            return Err(Error::invalid(
                "ParamStore::add",
                format!("a tensor named `{name}` already exists"),
            ));
        }
        self.by_name.insert(name.clone(), self.entries.len());
        self.entries.push(Entry {
            name,
            value,
            trainable,
        });
        Ok(ParamId(self.entries.len() - 1))
    }

    /// Adds a trainable parameter; names must be unique.
    pub fn add_param(&mut self, name: impl Into<String>, value: Tensor) -> Result<ParamId> {
        self.add(name.into(), value, true)
    }

    /// Adds a buffer: saved with the model, never given a gradient.
    pub fn add_buffer(&mut self, name: impl Into<String>, value: Tensor) -> Result<ParamId> {
        self.add(name.into(), value, false)
    }

    /// The current value of an entry.
    pub fn get(&self, id: ParamId) -> &Tensor {
        &self.entries[id.0].value
    }

    /// Replaces an entry's value; the shape must stay the same.
    pub fn set(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let entry = &mut self.entries[id.0];
        if entry.value.shape() != value.shape() {
            return Err(Error::shape(
                "ParamStore::set",
                format!("{:?} for `{}`", entry.value.shape(), entry.name),
                value.shape(),
            ));
        }
        entry.value = value;
        Ok(())
    }

    /// Runs `f` on the values of `ids`, moved out of the store for the call and put back after
    /// it, whatever it returns: an optimizer updates them in place without copying a weight
    /// the store still shares. `f` must keep every shape.
    pub fn update_values<T>(&mut self, ids: &[ParamId], f: impl FnOnce(&mut [Tensor]) -> T) -> T {
        let mut values: Vec<Tensor> = ids
            .iter()
            .map(|id| std::mem::replace(&mut self.entries[id.0].value, Tensor::scalar(0.0)))
            .collect();
        let result = f(&mut values);
        for (id, value) in ids.iter().zip(values) {
            self.entries[id.0].value = value;
        }
        result
    }

    /// The name of an entry.
    pub fn name(&self, id: ParamId) -> &str {
        &self.entries[id.0].name
    }

    /// Looks an entry up by name.
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).map(|&i| ParamId(i))
    }

    /// Whether the entry is a trainable parameter (not a buffer).
    pub fn is_trainable(&self, id: ParamId) -> bool {
        self.entries[id.0].trainable
    }

    /// Every entry, in insertion order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.entries.len()).map(ParamId)
    }

    /// The trainable parameters, in insertion order (the order optimizers see them in).
    pub fn trainable_ids(&self) -> Vec<ParamId> {
        self.ids().filter(|&id| self.is_trainable(id)).collect()
    }

    /// The number of trainable scalars (what DARTS logs as "param size").
    pub fn num_parameters(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.trainable)
            .map(|e| e.value.numel())
            .sum()
    }

    /// Every entry as (name, tensor), in insertion order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    /// Replaces every entry from `tensors` (e.g. a checkpoint): each entry must be present with its
    /// shape, and no extra name may appear, so a mismatched model is never half-loaded. Each value
    /// goes to the device of the entry it replaces. `source` names where the tensors came from,
    /// for the error.
    pub fn load_named(
        &mut self,
        source: &Path,
        mut tensors: BTreeMap<String, Tensor>,
    ) -> Result<()> {
        let mut loaded = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let value = tensors
                .remove(&entry.name)
                .ok_or_else(|| format_error(source, format!("no tensor named `{}`", entry.name)))?;
            if value.shape() != entry.value.shape() {
                return Err(format_error(
                    source,
                    format!(
                        "`{}` has shape {:?}, the model expects {:?}",
                        entry.name,
                        value.shape(),
                        entry.value.shape()
                    ),
                ));
            }
            loaded.push(value);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(format_error(
                source,
                format!("tensor `{extra}` does not belong to this model"),
            ));
        }
        let loaded: Vec<Tensor> = self
            .entries
            .iter()
            .zip(loaded)
            .map(|(entry, value)| value.to_device(entry.value.device()))
            .collect::<Result<_>>()?;
        for (entry, value) in self.entries.iter_mut().zip(loaded) {
            entry.value = value;
        }
        Ok(())
    }

    /// Moves every entry to `device` (a copy of each; nothing changes if one copy fails).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        let moved: Vec<Tensor> = self
            .entries
            .iter()
            .map(|e| e.value.to_device(device))
            .collect::<Result<_>>()?;
        for (entry, value) in self.entries.iter_mut().zip(moved) {
            entry.value = value;
        }
        Ok(())
    }

    /// Writes every entry to `path` in safetensors format, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_tensors(path, &self.named_tensors(), &BTreeMap::new())
    }

    /// Reads a safetensors file written by [`ParamStore::save`] (or converted from a PyTorch
    /// `state_dict`), with the checks of [`ParamStore::load_named`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let file = load_tensors(path)?;
        self.load_named(path, file.tensors)
    }
}

fn format_error(path: &Path, message: String) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message,
    }
}
