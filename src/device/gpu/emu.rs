//! The emulated GPU: device memory is host memory, and a launch runs the kernel's host build
//! (`kernels/*.cu` compiled as C++ against `kernels/emu/cuda_emu.h`) block by block on the calling
//! thread, one fiber per CUDA thread. Slow and exact; CI runs every kernel here.
//!
//! The bounds-checked emulator ([`EmuExecutor::bounds_checked`]) also does what the GPU would do
//! to a kernel that indexes past its buffers, and more: each buffer lies between two guard pages
//! in poisoned memory, a read outside it brings NaN into the results or faults (the emulator then
//! names the kernel before the process ends), and a write outside it, found when the launch ends,
//! is the launch's error.

use std::cell::UnsafeCell;
use std::ptr::NonNull;

use super::kernels::{self, KernelId};
use super::{
    ConvWindow, Counters, DeviceMemory, Executor, GemmPrecision, GemmSetting, GpuError, KernelArg,
    LaunchConfig, Storage, check_args,
};

/// Runs kernels on the host through the CUDA emulator. Launches are synchronous and serialised
/// across the process; fresh memory is filled with `0xFF` bytes (NaN as a float).
#[derive(Debug, Default)]
pub struct EmuExecutor {
    gemm: GemmSetting,
    counters: Counters,
    bounds_checked: bool,
}

impl EmuExecutor {
    /// The emulator (it needs no set-up), with float GEMMs.
    pub const fn new() -> EmuExecutor {
        EmuExecutor {
            gemm: GemmSetting::new(),
            counters: Counters::new(),
            bounds_checked: false,
        }
    }

    /// The emulator with every buffer between guard pages in poisoned memory: a launch that
    /// writes outside one of the buffers it can reach fails with an error naming the kernel, the
    /// buffer's size and where the write went, and one that reads outside reads NaN or faults.
    /// Each allocation is a mapping of its own (a few system calls, and at least three pages).
    pub const fn bounds_checked() -> EmuExecutor {
        EmuExecutor {
            bounds_checked: true,
            ..EmuExecutor::new()
        }
    }
}

// The guarded buffers of kernels/emu/cuda_emu.cpp.
unsafe extern "C" {
    fn darts_emu_guarded_map(bytes: usize) -> *mut u8;
    fn darts_emu_guarded_unmap(buffer: *mut u8, bytes: usize);
}

/// 64 bytes, aligned like a cache line, so that kernels may read `float4`s from any buffer.
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

/// Host memory standing in for device memory: heap lines, or a guarded mapping of the
/// bounds-checked emulator. It is written through raw pointers (by kernels and copies), never
/// through Rust references, hence the `UnsafeCell`.
pub(crate) enum HostBlock {
    Heap(Box<[UnsafeCell<Line>]>),
    Guarded(GuardedBlock),
}

/// `bytes` bytes from `darts_emu_guarded_map`, unmapped on drop.
pub(crate) struct GuardedBlock {
    start: NonNull<u8>,
    bytes: usize,
}

// SAFETY (both): the bytes are only touched by `write` (reached through `&mut DeviceMemory`),
// `read`, and kernels, whose launch contract forbids other threads from using a buffer a kernel
// writes while it runs; so shared references across threads never race. A guarded block owns its
// mapping alone, so it may be dropped on any thread.
unsafe impl Sync for HostBlock {}
unsafe impl Send for GuardedBlock {}

impl Drop for GuardedBlock {
    fn drop(&mut self) {
        // SAFETY: `start` came from darts_emu_guarded_map(bytes) and is unmapped once, here.
        unsafe { darts_emu_guarded_unmap(self.start.as_ptr(), self.bytes) }
    }
}

impl HostBlock {
    /// `bytes` bytes of `0xFF`, in a guarded mapping when `guarded`.
    fn new(bytes: usize, guarded: bool) -> Result<HostBlock, GpuError> {
        if !guarded {
            return Ok(HostBlock::Heap(
                (0..bytes.div_ceil(64))
                    .map(|_| UnsafeCell::new(Line([0xFF; 64])))
                    .collect(),
            ));
        }
        // SAFETY: maps fresh memory (bytes > 0, checked by the caller) and touches nothing else.
        let start = unsafe { darts_emu_guarded_map(bytes) };
        match NonNull::new(start) {
            Some(start) => Ok(HostBlock::Guarded(GuardedBlock { start, bytes })),
            None => Err(GpuError::Buffer(format!(
                "the bounds-checked emulator cannot map a buffer of {bytes} bytes"
            ))),
        }
    }

    fn pointer(&self) -> *mut u8 {
        match self {
            HostBlock::Heap(lines) => UnsafeCell::raw_get(lines.as_ptr()).cast(),
            HostBlock::Guarded(block) => block.start.as_ptr(),
        }
    }

    /// The bytes a copy may touch: the heap lines whole, or the guarded buffer's own bytes.
    fn capacity(&self) -> usize {
        match self {
            HostBlock::Heap(lines) => lines.len() * 64,
            HostBlock::Guarded(block) => block.bytes,
        }
    }

    /// Copies `src` to the start of the block (`src` fits: checked by the caller).
    fn write(&self, src: &[u8]) {
        assert!(src.len() <= self.capacity());
        // SAFETY: `src` fits in the block (asserted), the block is not borrowed as a Rust slice
        // anywhere, and no kernel runs on it now (the caller holds it mutably or, for `read`,
        // after the synchronous launch returned).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.pointer(), src.len()) }
    }

    /// Copies the start of the block into `dst` (`dst` fits: checked by the caller).
    fn read(&self, dst: &mut [u8]) {
        assert!(dst.len() <= self.capacity());
        // SAFETY: as in `write`, with the roles of the two regions swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(self.pointer().cast_const(), dst.as_mut_ptr(), dst.len())
        }
    }
}

/// A kernel argument as the emulator's entry points take it: a host pointer or a scalar.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EmuArg {
    Pointer(*mut u8),
    I32(i32),
    U32(u32),
    F32(f32),
    U64(u64),
    ConvWindow(ConvWindow),
}

// The generated dispatch reads the arguments back by kind; `check_args` has already matched
// every kind to the kernel's parameter, so a mismatch here is a bug in this file.
impl EmuArg {
    pub(crate) fn pointer(self) -> *mut u8 {
        match self {
            EmuArg::Pointer(p) => p,
            other => unreachable!("expected a pointer, got {other:?}"),
        }
    }

    pub(crate) fn scalar<T: Scalar>(self) -> T {
        T::from_arg(self).unwrap_or_else(|| {
            unreachable!("expected a {}, got {self:?}", std::any::type_name::<T>())
        })
    }
}

/// A by-value kernel parameter type.
pub(crate) trait Scalar: Sized {
    fn from_arg(arg: EmuArg) -> Option<Self>;
}

impl Scalar for i32 {
    fn from_arg(arg: EmuArg) -> Option<i32> {
        if let EmuArg::I32(v) = arg {
            Some(v)
        } else {
            None
        }
    }
}

impl Scalar for u32 {
    fn from_arg(arg: EmuArg) -> Option<u32> {
        if let EmuArg::U32(v) = arg {
            Some(v)
        } else {
            None
        }
    }
}

impl Scalar for f32 {
    fn from_arg(arg: EmuArg) -> Option<f32> {
        if let EmuArg::F32(v) = arg {
            Some(v)
        } else {
            None
        }
    }
}

impl Scalar for u64 {
    fn from_arg(arg: EmuArg) -> Option<u64> {
        if let EmuArg::U64(v) = arg {
            Some(v)
        } else {
            None
        }
    }
}

impl Scalar for ConvWindow {
    fn from_arg(arg: EmuArg) -> Option<ConvWindow> {
        if let EmuArg::ConvWindow(v) = arg {
            Some(v)
        } else {
            None
        }
    }
}

fn host(memory: &DeviceMemory) -> Result<&HostBlock, GpuError> {
    match &memory.storage {
        Storage::Host(block) => Ok(block),
        Storage::Cuda(_) => Err(GpuError::Buffer(
            "a CUDA buffer was handed to the emulator".into(),
        )),
    }
}

impl Executor for EmuExecutor {
    fn describe(&self) -> String {
        "emulator".into()
    }

    fn alloc_bytes(&self, bytes: usize) -> Result<DeviceMemory, GpuError> {
        if bytes == 0 {
            return Err(GpuError::Buffer("cannot allocate 0 bytes".into()));
        }
        Ok(DeviceMemory {
            bytes,
            storage: Storage::Host(HostBlock::new(bytes, self.bounds_checked)?),
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
        host(dst)?.write(src);
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
        host(src)?.read(dst);
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
        self.counters.record_launch(kernel);
        let args = args
            .iter()
            .map(|arg| {
                Ok(match *arg {
                    KernelArg::Buffer(memory, _) => EmuArg::Pointer(host(memory)?.pointer()),
                    KernelArg::Null(_) => EmuArg::Pointer(std::ptr::null_mut()),
                    KernelArg::I32(v) => EmuArg::I32(v),
                    KernelArg::U32(v) => EmuArg::U32(v),
                    KernelArg::F32(v) => EmuArg::F32(v),
                    KernelArg::U64(v) => EmuArg::U64(v),
                    KernelArg::ConvWindow(v) => EmuArg::ConvWindow(v),
                })
            })
            .collect::<Result<Vec<EmuArg>, GpuError>>()?;
        let mut message = [0u8; 512];
        // SAFETY: `check_args` matched the arguments to the kernel's parameters, every pointer is
        // the start of a live `HostBlock`, and the caller promised the kernel stays inside them.
        let status = unsafe { kernels::emu_dispatch(kernel, &config, &args, &mut message) };
        if status == 0 {
            return Ok(());
        }
        let end = message
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(message.len());
        Err(GpuError::Kernel {
            kernel: kernel.name(),
            message: String::from_utf8_lossy(&message[..end]).into_owned(),
        })
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        Ok(())
    }

    fn address(&self, memory: &DeviceMemory) -> Result<u64, GpuError> {
        Ok(host(memory)?.pointer() as u64)
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn gemm_precision(&self) -> GemmPrecision {
        self.gemm.get()
    }

    /// The emulator runs either kernel (TF32 through its emulated tensor cores).
    fn set_gemm_precision(&self, precision: GemmPrecision) -> Result<(), GpuError> {
        self.gemm.set(precision);
        Ok(())
    }
}
