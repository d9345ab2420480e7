//! `Tensor`: a shape and f32 data on a device. Contiguous, row-major (NCHW for images), immutable:
//! ops make new tensors, and cloning a tensor only bumps a reference count.

use std::sync::Arc;

use crate::device::Device;
use crate::rng::Rng;
use crate::{Error, Result};

/// The storage behind a tensor, one variant per device.
#[derive(Debug)]
enum Storage {
    Cpu(Vec<f32>),
}

/// An immutable, contiguous f32 tensor.
#[derive(Debug, Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

/// Checks that `shape` has no zero-sized dimension; `op` names the caller for the error.
pub fn check_shape(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.contains(&0) {
        return Err(Error::ZeroSizedDim {
            op,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

impl Tensor {
    /// A tensor holding `data` with `shape`; the element count must match and no dimension may be 0.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        check_shape("Tensor::from_vec", shape)?;
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!("{} elements for shape {shape:?}", numel),
                &[data.len()],
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(Storage::Cpu(data)),
        })
    }

    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f32) -> Result<Tensor> {
        check_shape("Tensor::full", shape)?;
        Tensor::from_vec(vec![value; shape.iter().product()], shape)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Result<Tensor> {
        Tensor::full(shape, 0.0)
    }

    /// A scalar (shape `[1]`).
    pub fn scalar(value: f32) -> Tensor {
        Tensor {
            shape: vec![1],
            storage: Arc::new(Storage::Cpu(vec![value])),
        }
    }

    /// Uniform samples in [lo, hi) drawn in order from `rng`.
    pub fn uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Result<Tensor> {
        check_shape("Tensor::uniform", shape)?;
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.uniform(lo, hi)).collect(), shape)
    }

    /// Normal samples with the given mean and standard deviation, drawn in order from `rng`.
    pub fn normal(shape: &[usize], mean: f32, std: f32, rng: &mut Rng) -> Result<Tensor> {
        check_shape("Tensor::normal", shape)?;
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| mean + std * rng.normal()).collect(), shape)
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        match *self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// The data as a host slice (CPU tensors only).
    pub fn data(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
        }
    }

    /// A copy of the data on the host.
    pub fn to_vec(&self) -> Vec<f32> {
        self.data().to_vec()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape("Tensor::item", "one element", &self.shape));
        }
        Ok(self.data()[0])
    }

    /// The same data seen with another shape of equal element count (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        check_shape("Tensor::reshape", shape)?;
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::shape(
                "Tensor::reshape",
                format!("{} elements to fit {shape:?}", self.numel()),
                &self.shape,
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Arc::clone(&self.storage),
        })
    }

    /// A new tensor of this shape holding `f` applied to every element.
    pub fn map(&self, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
        let data = self.data().iter().map(|&x| f(x)).collect();
        Tensor {
            shape: self.shape.clone(),
            storage: Arc::new(Storage::Cpu(data)),
        }
    }

    /// A new tensor of this shape holding `f(self[i], other[i])`; the shapes must match.
    pub fn zip_map(&self, other: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
        if self.shape != other.shape {
            return Err(Error::shape(
                "Tensor::zip_map",
                format!("{:?}", self.shape),
                &other.shape,
            ));
        }
        let data = self
            .data()
            .iter()
            .zip(other.data())
            .map(|(&a, &b)| f(a, b))
            .collect();
        Ok(Tensor {
            shape: self.shape.clone(),
            storage: Arc::new(Storage::Cpu(data)),
        })
    }

    /// Takes the data out when this is the only reference to it, else copies it.
    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.storage) {
            Ok(Storage::Cpu(v)) => v,
            Err(shared) => match &*shared {
                Storage::Cpu(v) => v.clone(),
            },
        }
    }

    /// Whether both tensors share one storage (a reshape of the other, or a clone).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }
}
