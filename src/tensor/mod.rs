//! `Tensor`: a shape and f32 data on a device. Contiguous, row-major (NCHW for images), immutable:
//! ops make new tensors, and cloning a tensor only bumps a reference count.
//!
//! Data lives on the CPU (a `Vec<f32>`) or on a GPU executor (a [`DeviceBuffer`] on CUDA or on the
//! emulator). Ops look at [`Tensor::storage`] and run the matching backend; data crosses between
//! host and device only through [`Tensor::to_device`] and [`Tensor::to_host`], at the edges of a
//! run (a batch in, metrics and checkpoints out).

mod math;

use std::sync::Arc;

use crate::device::Device;
use crate::device::gpu::{self, DeviceBuffer, Executor};
use crate::rng::Rng;
use crate::{Error, Result};

/// The storage behind a tensor, one variant per kind of device.
#[derive(Debug)]
enum Storage {
    Cpu(Vec<f32>),
    Gpu {
        device: Device,
        exec: &'static dyn Executor,
        buffer: DeviceBuffer<f32>,
    },
}

/// A tensor's data as an op sees it: a host slice, or a device buffer with the executor that
/// runs kernels on it.
pub enum Data<'a> {
    /// On the CPU.
    Cpu(&'a [f32]),
    /// On a GPU executor (CUDA or the emulator).
    Gpu(&'static dyn Executor, &'a DeviceBuffer<f32>),
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

    /// A tensor of `shape` holding a device buffer of `device` (an op's output).
    pub fn from_buffer(
        buffer: DeviceBuffer<f32>,
        shape: &[usize],
        device: Device,
    ) -> Result<Tensor> {
        check_shape("Tensor::from_buffer", shape)?;
        let exec = device.executor()?.ok_or_else(|| {
            Error::invalid(
                "Tensor::from_buffer",
                "a device buffer cannot live on the CPU",
            )
        })?;
        if buffer.len() != shape.iter().product::<usize>() {
            return Err(Error::shape(
                "Tensor::from_buffer",
                format!("{} elements for shape {shape:?}", buffer.len()),
                shape,
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(Storage::Gpu {
                device,
                exec,
                buffer,
            }),
        })
    }

    /// A tensor of `shape` filled with `value`, on `device`.
    pub fn full_on(shape: &[usize], value: f32, device: Device) -> Result<Tensor> {
        check_shape("Tensor::full_on", shape)?;
        match device.executor()? {
            None => Tensor::full(shape, value),
            Some(exec) => {
                let buffer = gpu::shape::fill(exec, shape.iter().product(), value)?;
                Tensor::from_buffer(buffer, shape, device)
            }
        }
    }

    /// Zeros of `shape` on `device`.
    pub fn zeros_on(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::full_on(shape, 0.0, device)
    }

    /// Zeros of this tensor's shape, on its device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros_on(&self.shape, self.device())
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        match *self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu { device, .. } => device,
        }
    }

    /// The data, for an op to run on: a host slice or a device buffer.
    pub fn storage(&self) -> Data<'_> {
        match &*self.storage {
            Storage::Cpu(v) => Data::Cpu(v),
            Storage::Gpu { exec, buffer, .. } => Data::Gpu(*exec, buffer),
        }
    }

    /// The data as a host slice.
    ///
    /// # Panics
    /// When the tensor lives on a GPU device: copy it first with [`Tensor::to_host`]. (Ops never
    /// call this on device tensors; it is for host-side code and tests.)
    pub fn data(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
            Storage::Gpu { device, .. } => panic!(
                "Tensor::data on a tensor that lives on {device}: copy it with to_host() first"
            ),
        }
    }

    /// A copy of the data on the host (see [`Tensor::data`] for device tensors).
    pub fn to_vec(&self) -> Vec<f32> {
        self.data().to_vec()
    }

    /// This tensor on `device`: itself (no copy) when it is already there, else a copy. Copies
    /// between two GPU devices go through the host.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let host = match &*self.storage {
            Storage::Cpu(_) => self.clone(),
            Storage::Gpu { exec, buffer, .. } => {
                Tensor::from_vec((*exec).to_host(buffer)?, &self.shape)?
            }
        };
        match device.executor()? {
            None => Ok(host),
            Some(exec) => Tensor::from_buffer(exec.to_device(host.data())?, &self.shape, device),
        }
    }

    /// This tensor on the CPU (a copy from a device; itself when already there).
    pub fn to_host(&self) -> Result<Tensor> {
        self.to_device(Device::Cpu)
    }

    /// The single value of a one-element tensor, from any device.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape("Tensor::item", "one element", &self.shape));
        }
        Ok(self.to_host()?.data()[0])
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

    /// The host data, taken out when this is the only reference to it, else copied (a device
    /// tensor is copied to the host).
    pub fn into_vec(self) -> Result<Vec<f32>> {
        match Arc::try_unwrap(self.storage) {
            Ok(Storage::Cpu(v)) => Ok(v),
            Ok(Storage::Gpu { exec, buffer, .. }) => Ok(exec.to_host(&buffer)?),
            Err(shared) => match &*shared {
                Storage::Cpu(v) => Ok(v.clone()),
                Storage::Gpu { exec, buffer, .. } => Ok((*exec).to_host(buffer)?),
            },
        }
    }

    /// Makes this tensor the only owner of its storage, copying it when it is shared, so that an
    /// in-place update never changes a tensor shared elsewhere.
    fn make_unique(&mut self) -> Result<&mut Storage> {
        if Arc::get_mut(&mut self.storage).is_none() {
            let copy = match &*self.storage {
                Storage::Cpu(v) => Storage::Cpu(v.clone()),
                Storage::Gpu {
                    device,
                    exec,
                    buffer,
                } => Storage::Gpu {
                    device: *device,
                    exec: *exec,
                    buffer: exec.duplicate(buffer)?,
                },
            };
            self.storage = Arc::new(copy);
        }
        Ok(Arc::get_mut(&mut self.storage).expect("the storage was just made unique"))
    }

    /// The host data, for an in-place update (optimizers update weights and their state this
    /// way): reused when this tensor holds the only reference to it, copied first otherwise.
    /// Fails for a tensor on a GPU device.
    pub fn host_mut(&mut self) -> Result<&mut [f32]> {
        let device = self.device();
        match self.make_unique()? {
            Storage::Cpu(v) => Ok(v),
            Storage::Gpu { .. } => Err(Error::invalid(
                "Tensor::host_mut",
                format!("the tensor lives on {device}, not on the CPU"),
            )),
        }
    }

    /// The device buffer, for an in-place update by a kernel; reused or copied as in
    /// [`Tensor::host_mut`]. Fails for a tensor on the CPU.
    pub fn device_mut(&mut self) -> Result<&mut DeviceBuffer<f32>> {
        match self.make_unique()? {
            Storage::Gpu { buffer, .. } => Ok(buffer),
            Storage::Cpu(_) => Err(Error::invalid(
                "Tensor::device_mut",
                "the tensor lives on the CPU, not on a GPU device",
            )),
        }
    }

    /// Whether both tensors share one storage (a reshape of the other, or a clone).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }
}
