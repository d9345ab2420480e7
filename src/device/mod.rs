//! Where tensors live and where ops run. The device is chosen once, at start-up (the data and the
//! model are moved there), and every op then runs where its inputs are: model code never looks at
//! it. Three devices exist: the CPU reference backend, a CUDA GPU, and the CUDA emulator, which runs
//! the very same kernels and launch code as the GPU on the host.

pub mod cpu;
pub mod gpu;

use std::fmt;
use std::sync::{Mutex, OnceLock};

use gpu::{CudaExecutor, EmuExecutor, Executor, GemmPrecision};

/// A place that holds tensor storage and runs kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU reference backend: plain Rust, parallel over batch and channels with rayon.
    #[default]
    Cpu,
    /// The CUDA kernels run on the host by the emulator: exact and slow (tiny configurations).
    Emu,
    /// CUDA GPU number `n`, running the kernels of `kernels/*.cu` through cudarc.
    Cuda(usize),
}

impl Device {
    /// Parses a `--device` value: `cpu`, `emu`, `cuda` (GPU 0) or `cuda:N`. Whether the device
    /// can actually run here is checked by [`Device::executor`] (or [`Device::check_available`]).
    pub fn parse(name: &str) -> crate::Result<Device> {
        let unknown = || {
            crate::Error::invalid(
                "device",
                format!("unknown device `{name}` (expected cpu, emu, cuda or cuda:N)"),
            )
        };
        match name {
            "cpu" => Ok(Device::Cpu),
            "emu" => Ok(Device::Emu),
            "cuda" => Ok(Device::Cuda(0)),
            n => match n.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(ordinal)) => Ok(Device::Cuda(ordinal)),
                _ => Err(unknown()),
            },
        }
    }

    /// The device used when none is asked for: GPU 0 when a driver, a GPU and PTX are all
    /// present, else the CPU.
    pub fn default_device() -> Device {
        if Device::Cuda(0).executor().is_ok() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }

    /// Whether this is a GPU executor's device (CUDA or the emulator).
    pub fn is_gpu(self) -> bool {
        self != Device::Cpu
    }

    /// Fails with a message saying what is missing when this device cannot run here (no CUDA
    /// driver, no such GPU, no PTX in this build); the CPU and the emulator always can.
    pub fn check_available(self) -> crate::Result<()> {
        self.executor().map(|_| ())
    }

    /// The executor that runs this device's kernels (`None` for the CPU), created on first use
    /// and kept for the life of the process: one CUDA context and stream per GPU. The emulator is
    /// the bounds-checked one ([`EmuExecutor::bounds_checked`]) when the environment variable
    /// [`EMU_BOUNDS_CHECK_VAR`] is `1` at its first use.
    pub fn executor(self) -> crate::Result<Option<&'static dyn Executor>> {
        static EMU: OnceLock<EmuExecutor> = OnceLock::new();
        static CUDA: OnceLock<Mutex<Vec<(usize, &'static CudaExecutor)>>> = OnceLock::new();
        match self {
            Device::Cpu => Ok(None),
            Device::Emu => {
                Ok(Some(EMU.get_or_init(
                    || match std::env::var(EMU_BOUNDS_CHECK_VAR).as_deref() {
                        Ok("1") => EmuExecutor::bounds_checked(),
                        _ => EmuExecutor::new(),
                    },
                )))
            }
            Device::Cuda(ordinal) => {
                let opened = CUDA.get_or_init(|| Mutex::new(Vec::new()));
                let mut opened = opened.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(&(_, exec)) = opened.iter().find(|(o, _)| *o == ordinal) {
                    return Ok(Some(exec));
                }
                let exec: &'static CudaExecutor =
                    Box::leak(Box::new(CudaExecutor::new(ordinal).map_err(|e| {
                        crate::Error::invalid("device", format!("{self} cannot be used: {e}"))
                    })?));
                opened.push((ordinal, exec));
                Ok(Some(exec))
            }
        }
    }
}

/// The environment variable that, set to `1`, makes `--device emu` the bounds-checked emulator:
/// a kernel that writes outside its buffers fails, one that reads far outside them faults with a
/// report naming it. Each buffer is then a mapping of its own, which is slower.
pub const EMU_BOUNDS_CHECK_VAR: &str = "DARTS_EMU_BOUNDS_CHECK";

impl Device {
    /// Waits until the work queued on this device has finished (a no-op on the CPU, whose ops
    /// finish before they return): timings of GPU work call it before reading the clock.
    pub fn synchronize(self) -> crate::Result<()> {
        if let Some(exec) = self.executor()? {
            exec.synchronize()?;
        }
        Ok(())
    }

    /// A description for reports: `cpu`, `emulator`, or the GPU's name and architecture, with
    /// `, TF32 GEMMs` where the GEMMs run on TF32 tensor cores.
    pub fn describe(self) -> crate::Result<String> {
        Ok(match self.executor()? {
            None => "cpu".into(),
            Some(exec) => match exec.gemm_precision() {
                GemmPrecision::F32 => exec.describe(),
                GemmPrecision::Tf32 => format!("{}, TF32 GEMMs", exec.describe()),
            },
        })
    }

    /// Makes this device's GEMMs (dense layers, convolutions) run at `precision` from now on.
    /// TF32 is a GPU choice: the CPU, and a GPU older than sm_80, refuse it.
    pub fn set_gemm_precision(self, precision: GemmPrecision) -> crate::Result<()> {
        match self.executor()? {
            Some(exec) => exec.set_gemm_precision(precision).map_err(|e| {
                crate::Error::invalid("device", format!("{self} cannot use {precision:?}: {e}"))
            }),
            None if precision == GemmPrecision::F32 => Ok(()),
            None => Err(crate::Error::invalid(
                "device",
                "TF32 GEMMs run on a GPU (--device cuda, or emu to emulate them); the CPU computes \
                 in float",
            )),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Emu => write!(f, "emu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
