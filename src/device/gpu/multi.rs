//! Multi-tensor launches: one kernel over many buffers (every parameter of a network) instead of
//! one launch per buffer, as PyTorch's `_foreach` optimizers do. On a GPU each launch costs a few
//! microseconds of host time whatever its size, and a DARTS search network has about 1,400
//! parameter tensors, most of them small.
//!
//! The kernel reads a table of 64-bit words from device memory (`kernels/common.cuh` reads it):
//! [`SLOTS`] words per tensor, the addresses of up to `SLOTS − 1` buffers (0 for a slot not in use)
//! and the tensor's length; then one word per block, `tensor << 32 | chunk`, so block `b` handles
//! elements `[chunk · CHUNK, min((chunk + 1) · CHUNK, n))` of its tensor. The chunks follow from
//! the lengths alone, so a reduction over them adds in the same order on every run. Building the
//! table costs one copy to the device per launch.

use super::{DeviceBuffer, DeviceMemory, Element, Executor, GpuError, LaunchConfig, int, invalid};

/// Words per tensor in the table: buffer addresses, then the length.
pub const SLOTS: usize = 4;

/// Elements per block: 8 per thread of a [`THREADS`]-thread block.
pub const CHUNK: usize = 2048;

/// Threads per block: a multiple of 32 (the reductions need it).
pub const THREADS: u32 = 256;

/// One tensor of a multi-tensor launch: its buffers in the kernel's slot order (`None` for a slot
/// it does not use), each holding at least `len` elements (checked by [`Table::new`]).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The buffers, slot by slot.
    pub buffers: [Option<&'a DeviceMemory>; SLOTS - 1],
    /// The elements to touch in each.
    pub len: usize,
}

impl<'a> Entry<'a> {
    /// An entry over `len` elements of the given typed buffers.
    pub fn new<T: Element>(buffers: [Option<&'a DeviceBuffer<T>>; SLOTS - 1], len: usize) -> Self {
        Entry {
            buffers: buffers.map(|b| b.map(|b| &b.memory)),
            len,
        }
    }
}

/// A table on the device, ready for a multi-tensor kernel.
#[derive(Debug)]
pub struct Table {
    /// The words the kernel reads.
    pub words: DeviceBuffer<u64>,
    /// The number of tensors, the kernel's `tensors` argument.
    pub tensors: i32,
    /// The number of blocks (chunks in all).
    pub blocks: usize,
}

impl Table {
    /// Builds and uploads the table of `entries` for `op`: every buffer must hold at least its
    /// entry's length in elements of `T`, and there must be at least one non-empty tensor.
    pub fn new<T: Element>(
        exec: &dyn Executor,
        op: &'static str,
        entries: &[Entry<'_>],
    ) -> Result<Table, GpuError> {
        let tensors = int(op, entries.len())?;
        let mut words = Vec::with_capacity(SLOTS * entries.len());
        let mut chunks = Vec::new();
        for (t, entry) in entries.iter().enumerate() {
            for buffer in entry.buffers {
                words.push(match buffer {
                    Some(memory) if memory.bytes() / size_of::<T>() < entry.len => {
                        return Err(invalid(
                            op,
                            format!(
                                "tensor {t}: a buffer of {} elements for {} elements",
                                memory.bytes() / size_of::<T>(),
                                entry.len
                            ),
                        ));
                    }
                    Some(memory) => exec.address(memory)?,
                    None => 0,
                });
            }
            words.push(entry.len as u64);
            let pieces = entry.len.div_ceil(CHUNK);
            let chunk_limit = u32::MAX as usize;
            if pieces > chunk_limit {
                return Err(invalid(op, format!("tensor {t} is too long")));
            }
            chunks.extend((0..pieces).map(|c| ((t as u64) << 32) | c as u64));
        }
        if chunks.is_empty() {
            return Err(invalid(op, "no elements to work on".into()));
        }
        let blocks = chunks.len();
        int(op, blocks)?;
        words.extend(chunks);
        Ok(Table {
            words: exec.to_device(&words)?,
            tensors,
            blocks,
        })
    }

    /// The launch: one block of [`THREADS`] per chunk.
    pub fn config(&self) -> LaunchConfig {
        LaunchConfig::linear(self.blocks as u32, THREADS)
    }

    /// [`CHUNK`] as the kernels' `chunk_len` argument.
    pub fn chunk_len(&self) -> i32 {
        CHUNK as i32
    }
}
