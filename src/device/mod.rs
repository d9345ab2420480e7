//! Where tensors live and where ops run. The device is chosen once, at start-up; model code never
//! looks at it. Today the CPU reference backend is the only one; the CUDA backend and its host
//! emulator join it as further variants.

pub mod cpu;
pub mod gpu;

use std::fmt;

/// A place that holds tensor storage and runs kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU reference backend: plain Rust, parallel over batch and channels with rayon.
    #[default]
    Cpu,
}

impl Device {
    /// Parses a `--device` value. Only `cpu` exists in this build; `cuda` and `emu` say so.
    pub fn parse(name: &str) -> crate::Result<Device> {
        match name {
            "cpu" => Ok(Device::Cpu),
            n if n == "cuda" || n.starts_with("cuda:") || n == "emu" => Err(crate::Error::invalid(
                "device",
                format!("device `{n}` is not available in this build: only `cpu` is implemented"),
            )),
            n => Err(crate::Error::invalid(
                "device",
                format!("unknown device `{n}` (expected cpu, cuda[:N] or emu)"),
            )),
        }
    }

    /// The device used when none is asked for: a GPU when present, else the CPU.
    pub fn default_device() -> Device {
        Device::Cpu
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}
