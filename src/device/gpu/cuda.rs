//! The CUDA executor, through cudarc: one context, one owned stream, the PTX of every family
//! loaded once, a `CudaFunction` per kernel indexed by [`KernelId`], and a size-keyed pool of
//! device allocations.
//!
//! cudarc loads the driver at run time (`dynamic-loading`), so binaries start on machines without
//! CUDA; but it panics rather than returning an error when the driver is missing, so
//! [`CudaExecutor::new`] probes for it before any other cudarc call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::kernels::{Family, HAS_PTX, KernelId, PTX_ARCH};
use super::{
    ConvWindow, Counters, DeviceMemory, Executor, GemmPrecision, GemmSetting, GpuError, KernelArg,
    LaunchConfig, Storage, check_args,
};

// SAFETY: a #[repr(C)] struct of twelve i32s, laid out as the kernels' `ConvWindow`; any bits
// are a valid value, and it holds no pointers.
unsafe impl DeviceRepr for ConvWindow {}

/// The first compute capability (times ten) with TF32 tensor cores: Ampere, sm_80.
const TF32_MIN_ARCH: u32 = 80;

impl From<DriverError> for GpuError {
    fn from(e: DriverError) -> GpuError {
        GpuError::Driver(e.to_string())
    }
}

/// Free allocations by size in bytes, for reuse.
type Pool = Arc<Mutex<HashMap<usize, Vec<CudaSlice<u8>>>>>;

/// A device allocation that goes back to its executor's pool when dropped.
pub(crate) struct PooledSlice {
    slice: Option<CudaSlice<u8>>,
    pool: Pool,
}

impl PooledSlice {
    fn slice(&self) -> &CudaSlice<u8> {
        self.slice
            .as_ref()
            .expect("a pooled slice is only emptied on drop")
    }

    fn slice_mut(&mut self) -> &mut CudaSlice<u8> {
        self.slice
            .as_mut()
            .expect("a pooled slice is only emptied on drop")
    }
}

impl Drop for PooledSlice {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.entry(slice.len()).or_default().push(slice);
        }
    }
}

/// Runs kernels on one CUDA GPU. All work goes to one stream, in order; copies to the host wait
/// for the work queued before them.
pub struct CudaExecutor {
    stream: Arc<CudaStream>,
    /// One function per kernel, at index `KernelId as usize`.
    functions: Vec<CudaFunction>,
    pool: Pool,
    description: String,
    /// Compute capability, times ten (90 for an H100 or H200).
    compute_capability: u32,
    /// Which GEMM kernel runs.
    gemm: GemmSetting,
    /// Launches and copies so far.
    counters: Counters,
    /// Bytes taken from the driver so far (live buffers plus the pool); the pool never hands
    /// memory back before [`CudaExecutor::trim`], so this is the high-water mark.
    reserved: AtomicUsize,
}

impl CudaExecutor {
    /// Opens GPU `ordinal` and loads every kernel family's PTX. Fails with
    /// [`GpuError::Unavailable`] when there is no driver, no such GPU, or no PTX in this build.
    pub fn new(ordinal: usize) -> Result<CudaExecutor, GpuError> {
        // SAFETY: only tries to dlopen libcuda; nothing in it is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GpuError::Unavailable(
                "no CUDA driver (libcuda.so) on this machine".into(),
            ));
        }
        if !HAS_PTX {
            return Err(GpuError::Unavailable(
                "this build has no PTX: nvcc was not found when the crate was built; run \
                 tools/install-cuda-toolchain.sh (or set NVCC), then build again"
                    .into(),
            ));
        }
        let count = CudaContext::device_count()?;
        if ordinal >= count.max(0) as usize {
            return Err(GpuError::Unavailable(format!(
                "cuda:{ordinal} was asked for, but the driver sees {count} GPU(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: everything this executor does goes to the one stream below, in order, so the
        // per-buffer events cudarc would record to order work across streams are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let modules = Family::ALL
            .iter()
            .map(|family| ctx.load_module(Ptx::from_src(family.ptx())))
            .collect::<Result<Vec<_>, _>>()?;
        let functions = KernelId::ALL
            .iter()
            .map(|k| modules[k.family() as usize].load_function(k.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let (major, minor) = ctx.compute_capability()?;
        Ok(CudaExecutor {
            description: format!("cuda:{ordinal} ({}, sm_{major}{minor})", ctx.name()?),
            stream,
            functions,
            pool: Arc::new(Mutex::new(HashMap::new())),
            compute_capability: (major * 10 + minor) as u32,
            gemm: GemmSetting::new(),
            counters: Counters::new(),
            reserved: AtomicUsize::new(0),
        })
    }

    /// A new allocation of `bytes` from the driver. When the GPU is out of memory, the pool's
    /// free allocations (of other sizes, or the cached allocator would have reused one) go back
    /// to the driver and the allocation is tried once more, as PyTorch's caching allocator does.
    fn fresh(&self, bytes: usize) -> Result<CudaSlice<u8>, GpuError> {
        // SAFETY: the memory is left uninitialised; the host only ever sees it as bytes copied
        // out, and any bit pattern is a valid f32, i32 or u32.
        let slice = match unsafe { self.stream.alloc::<u8>(bytes) } {
            Err(e) if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                self.trim();
                // SAFETY: as above.
                unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| {
                    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                        GpuError::Driver(format!(
                            "{}: out of memory allocating {:.1} MiB, with {:.1} MiB already \
                             allocated by this process (try a smaller --batch-size)",
                            self.description,
                            mib(bytes),
                            mib(self.reserved.load(Ordering::Relaxed)),
                        ))
                    } else {
                        e.into()
                    }
                })?
            }
            result => result?,
        };
        self.reserved.fetch_add(bytes, Ordering::Relaxed);
        Ok(slice)
    }

    /// Frees the allocations kept for reuse.
    pub fn trim(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let freed: usize = pool.values().flatten().map(CudaSlice::len).sum();
        pool.clear();
        self.reserved.fetch_sub(freed, Ordering::Relaxed);
    }
}

/// Bytes in MiB, for messages.
fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn device(memory: &DeviceMemory) -> Result<&PooledSlice, GpuError> {
    match &memory.storage {
        Storage::Cuda(slice) => Ok(slice),
        Storage::Host(_) => Err(GpuError::Buffer(
            "an emulator buffer was handed to the CUDA executor".into(),
        )),
    }
}

impl Executor for CudaExecutor {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn alloc_bytes(&self, bytes: usize) -> Result<DeviceMemory, GpuError> {
        if bytes == 0 {
            return Err(GpuError::Buffer("cannot allocate 0 bytes".into()));
        }
        let reused = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&bytes)
            .and_then(Vec::pop);
        let slice = match reused {
            Some(slice) => slice,
            None => self.fresh(bytes)?,
        };
        Ok(DeviceMemory {
            bytes,
            storage: Storage::Cuda(PooledSlice {
                slice: Some(slice),
                pool: Arc::clone(&self.pool),
            }),
        })
    }

    fn write_bytes(&self, src: &[u8], dst: &mut DeviceMemory) -> Result<(), GpuError> {
        if src.len() > dst.bytes {
            return Err(GpuError::Buffer(format!(
                "writing {} bytes into {}",
                src.len(),
                dst.bytes
            )));
        }
        let slice = match &mut dst.storage {
            Storage::Cuda(slice) => slice.slice_mut(),
            Storage::Host(_) => {
                return Err(GpuError::Buffer(
                    "an emulator buffer was handed to the CUDA executor".into(),
                ));
            }
        };
        // From pageable memory the driver stages `src` before returning, so it may go away.
        self.stream.memcpy_htod(src, slice)?;
        self.counters.record_upload();
        Ok(())
    }

    fn read_bytes(&self, src: &DeviceMemory, dst: &mut [u8]) -> Result<(), GpuError> {
        if dst.len() != src.bytes {
            return Err(GpuError::Buffer(format!(
                "reading {} bytes into {}",
                src.bytes,
                dst.len()
            )));
        }
        self.stream.memcpy_dtoh(device(src)?.slice(), dst)?;
        // A copy into pageable memory is complete when the call returns; the explicit wait makes
        // that independent of the driver's staging rules.
        self.stream.synchronize()?;
        self.counters.record_download();
        Ok(())
    }

    unsafe fn launch(
        &self,
        kernel: KernelId,
        config: LaunchConfig,
        args: &[KernelArg<'_>],
    ) -> Result<(), GpuError> {
        config.check(kernel)?;
        check_args(kernel, args)?;
        let mut builder = self.stream.launch_builder(&self.functions[kernel as usize]);
        // cudarc keeps the address of every argument until the launch: the scalars are read in
        // place from `args`, which outlives `builder`.
        for arg in args {
            match arg {
                KernelArg::Buffer(memory, _) => builder.arg(device(memory)?.slice()),
                // A device pointer is 64 bits wide, so a zero u64 passes a null pointer.
                KernelArg::Null(_) => builder.arg(&0u64),
                KernelArg::I32(v) => builder.arg(v),
                KernelArg::U32(v) => builder.arg(v),
                KernelArg::F32(v) => builder.arg(v),
                KernelArg::U64(v) => builder.arg(v),
                KernelArg::ConvWindow(v) => builder.arg(v),
            };
        }
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (gx, gy, gz),
            block_dim: (bx, by, bz),
            shared_mem_bytes: config.shared_bytes,
        };
        // SAFETY: the arguments match the kernel's parameters (`check_args`), every buffer is a
        // live allocation of this executor's context, and the caller promised the kernel stays
        // inside them.
        unsafe { builder.launch(cfg) }?;
        self.counters.record_launch(kernel);
        Ok(())
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.stream.synchronize()?;
        Ok(())
    }

    fn address(&self, memory: &DeviceMemory) -> Result<u64, GpuError> {
        // Every launch and copy goes to `self.stream`, in order, and event tracking is off, so
        // the guard that would order other streams after this use has nothing to do.
        let (address, _guard) = device(memory)?.slice().device_ptr(&self.stream);
        Ok(address)
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn gemm_precision(&self) -> GemmPrecision {
        self.gemm.get()
    }

    fn set_gemm_precision(&self, precision: GemmPrecision) -> Result<(), GpuError> {
        if precision == GemmPrecision::Tf32 {
            let device = self.compute_capability;
            if device < TF32_MIN_ARCH {
                return Err(GpuError::Unavailable(format!(
                    "TF32 tensor cores need sm_80 or newer; {} is sm_{device}",
                    self.description
                )));
            }
            if PTX_ARCH < TF32_MIN_ARCH {
                return Err(GpuError::Unavailable(format!(
                    "this build's PTX targets compute_{PTX_ARCH}, which has no TF32 tensor cores; \
                     build again with DARTS_CUDA_ARCH=compute_80 (the default) or newer"
                )));
            }
        }
        self.gemm.set(precision);
        Ok(())
    }

    fn reserved_bytes(&self) -> Option<u64> {
        Some(self.reserved.load(Ordering::Relaxed) as u64)
    }

    fn profiler_capture(&self, on: bool) -> Result<(), GpuError> {
        self.stream.context().bind_to_thread()?;
        if on {
            cudarc::driver::profiler_start()?;
        } else {
            cudarc::driver::profiler_stop()?;
        }
        Ok(())
    }
}
