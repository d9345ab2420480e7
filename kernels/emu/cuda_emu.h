// cuda_emu.h: the CUDA execution model on the host, so that kernels/*.cu run unchanged on a CPU.
//
// build.rs compiles every kernels/<family>.cu a second time, as C++20 with `-DDARTS_EMU -include
// kernels/emu/cuda_emu.h`, and links it with cuda_emu.cpp (the runtime) and a generated file of
// launch entry points. CI has no GPU, so this is how every kernel is tested there: slowly and
// exactly, against the CPU reference.
//
// The model, and what it costs to keep it honest:
// - A launch runs its blocks one after another on the calling host thread. Every CUDA thread of a
//   block is a fiber (its own 64 KiB stack with a guard page below it) that runs until it returns
//   or reaches a barrier, then yields to a scheduler that resumes the runnable ones. Nothing runs
//   in parallel, so ThreadSanitizer sees no races; instead the order is adversarial and fixed.
//   Between two __syncthreads() the warps run one after another, each as far as it can go
//   (through its shuffles and __syncwarp()s) before the next starts, as a warp may race ahead on
//   the hardware; in even blocks (by linear block index) warps and their lanes go in increasing
//   order, in odd blocks in decreasing order. So a thread that reads shared memory another
//   thread has not written yet (a missing barrier) reads the poison below in one of the two
//   orders, and one that overwrites shared memory another still needs clobbers it in one of them.
// - `__syncthreads()` counts the block's arrivals and completes when every live thread has
//   arrived. A thread that returns from the kernel drops out of the barriers, as on the hardware,
//   so early-exiting threads do not hang it. When no thread can go on and some have not returned
//   (a barrier that not every thread reaches), the launch fails with a deadlock error naming the
//   block, instead of hanging.
// - Warps are groups of 32 consecutive threads (by linear thread index). `__syncwarp()` is the
//   same barrier over the warp's live lanes; shuffles go through a per-warp exchange buffer
//   guarded by it. Nothing assumes lock-step execution.
// - A thread yields only at barriers: one that spins until another thread sets a flag or frees a
//   lock never lets that thread run, and hangs (no kernel here does that; none should).
// - Atomics are std::atomic_ref on the target word.
// - Shared memory: `__shared__` variables are statics placed in one linker section,
//   `darts_shared`, which the runtime fills with 0xFF bytes before every block; dynamic shared
//   memory (DARTS_DYNAMIC_SHARED) is a per-launch arena, poisoned the same way. 0xFFFFFFFF is a
//   NaN as a float and -1 as an int, so a read of shared memory no thread wrote shows up in the
//   results instead of passing as a zero.
//   One rule follows: declare `__shared__` arrays in kernels, not in inline helpers or templates
//   (the compiler refuses to mix those with plain statics in one section: "section type
//   conflict"). Helpers take a pointer to the kernel's scratch array instead.
// - Launches are serialised: one kernel runs at a time in the whole process.
// - Global memory is whatever the host hands the kernel. The bounds-checked emulator (the kernel
//   tests use it) gives every buffer its own mapping between two inaccessible guard pages, its
//   end (rounded up to 64 bytes) against the upper one, the rest of its pages filled with the
//   poison below: a kernel that writes past either end changes that poison, which the launch
//   then reports naming the kernel, and one that reads past it reads NaN into its results, or
//   faults in a guard page. A fault during a launch is reported, naming the kernel, before the
//   process ends (cuda_emu.cpp: guarded buffers). A write of poison itself (a NaN computed from
//   the poison it read there) changes nothing, and goes unseen.
// - Tensor cores: the warp matrix API (`nvcuda::wmma`, TF32 16×16×8) is emulated by
//   kernels/emu/include/mma.h. Other tensor-core instructions and inline PTX cannot be emulated.
#pragma once

#ifndef DARTS_EMU
#error "cuda_emu.h emulates CUDA on the host: compile with -DDARTS_EMU -include cuda_emu.h"
#endif

#include <atomic>
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <type_traits>

// ---- Qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A GNU attribute, unlike alignas, may follow `static` and the section attribute of __shared__.
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("darts_shared"), aligned(16)))
// __restrict__ means the same to g++ and clang++ as to nvcc.

// Dynamic shared memory: `DARTS_DYNAMIC_SHARED(float, smem);` declares `float* smem` pointing at
// the launch's `shared_bytes` of dynamic shared memory (kernels/common.cuh has the nvcc side).
#define DARTS_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::darts_emu::dynamic_shared())

// ---- Built-in types ---------------------------------------------------------------------------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline constexpr int warpSize = 32;

namespace darts_emu {

// Where the running CUDA thread stands in the launch: its thread index, warp and lane. The
// runtime sets it before resuming a thread's fiber and saves it back when the fiber yields.
struct ThreadState {
    uint3 thread_idx;
    unsigned warp;
    unsigned lane;
    unsigned exchange_phase;  // which half of the warp's double-buffered exchange to use next
};
inline thread_local ThreadState this_thread{};

// Set by the runtime: the block being run, and the launch's shape. Only the runtime writes them,
// between blocks, when no thread of a block is running.
inline uint3 block_idx{};
inline dim3 block_dim{};
inline dim3 grid_dim{};

void sync_threads();
void sync_warp();
void* dynamic_shared();
// Publishes this lane's `size` bytes at `value`, waits for the warp, and copies lane `src_lane`'s
// bytes into `out`. Every live lane of the warp must call it the same number of times.
void warp_exchange(const void* value, void* out, unsigned size, unsigned src_lane);

// A pointer argument of a launch, for the bounds check: the buffers a kernel can reach are its
// pointer arguments and, for a table of 64-bit words (a multi-tensor launch), the buffers whose
// addresses the table holds.
struct BufferArg {
    const void* pointer;
    bool table;
};

// Runs `body(ctx)` as every thread of a grid of blocks of kernel `name` (named in the report of
// a memory fault), whose pointer arguments are `buffers[0 .. buffer_count)`. Returns 0, or
// non-zero with a message in `error` (a bad launch shape, an exception thrown by a kernel thread,
// a deadlock, or a write outside a guarded buffer).
int launch_erased(const char* name, const BufferArg* buffers, std::size_t buffer_count,
                  const unsigned grid[3], const unsigned block[3], unsigned shared_bytes,
                  char* error, std::size_t error_len, void (*body)(void*), void* ctx);

template <class F>
int launch(const char* name, std::initializer_list<BufferArg> buffers, const unsigned grid[3],
           const unsigned block[3], unsigned shared_bytes, char* error, std::size_t error_len,
           F&& kernel) {
    using Body = std::remove_reference_t<F>;
    return launch_erased(name, buffers.begin(), buffers.size(), grid, block, shared_bytes, error,
                         error_len, [](void* ctx) { (*static_cast<Body*>(ctx))(); }, &kernel);
}

template <class T>
T shuffle(T value, unsigned src_lane) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle up to 8 bytes");
    T out;
    warp_exchange(&value, &out, sizeof(T), src_lane);
    return out;
}

}  // namespace darts_emu

#define threadIdx (::darts_emu::this_thread.thread_idx)
#define blockIdx (::darts_emu::block_idx)
#define blockDim (::darts_emu::block_dim)
#define gridDim (::darts_emu::grid_dim)

// ---- Synchronisation --------------------------------------------------------------------------
inline void __syncthreads() { darts_emu::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    darts_emu::sync_warp();
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { throw std::runtime_error("__trap() called"); }

// ---- Warp shuffles ----------------------------------------------------------------------------
// The mask is not checked: every live lane of the warp must take part, as kernels here always do.
// A lane outside the `width`-lane segment reads its own value, as on the hardware; a lane that
// does not exist (a block whose size is not a multiple of 32) reads poison.
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    (void)mask;
    unsigned lane = darts_emu::this_thread.lane;
    unsigned base = lane & ~unsigned(width - 1);
    return darts_emu::shuffle(var, base + (unsigned(src_lane) & unsigned(width - 1)));
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    unsigned lane = darts_emu::this_thread.lane;
    unsigned base = lane & ~unsigned(width - 1);
    return darts_emu::shuffle(var, lane >= base + delta ? lane - delta : lane);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    unsigned lane = darts_emu::this_thread.lane;
    unsigned end = (lane & ~unsigned(width - 1)) + unsigned(width);
    return darts_emu::shuffle(var, lane + delta < end ? lane + delta : lane);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    (void)mask;
    unsigned lane = darts_emu::this_thread.lane;
    unsigned end = (lane & ~unsigned(width - 1)) + unsigned(width);
    unsigned src = lane ^ unsigned(lane_mask);
    return darts_emu::shuffle(var, src < end ? src : lane);
}

// ---- Atomics ----------------------------------------------------------------------------------
template <class T>
T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}
template <class T>
T atomicSub(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_sub(value);
}
template <class T>
T atomicExch(T* address, T value) {
    return std::atomic_ref<T>(*address).exchange(value);
}
template <class T>
T atomicCAS(T* address, T compare, T value) {
    std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
    return compare;
}
template <class T>
T atomicMax(T* address, T value) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (old < value && !ref.compare_exchange_weak(old, value)) {
    }
    return old;
}
template <class T>
T atomicMin(T* address, T value) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (value < old && !ref.compare_exchange_weak(old, value)) {
    }
    return old;
}

// ---- Math -------------------------------------------------------------------------------------
// The fast intrinsics become the accurate host functions; kernels compare with tolerances anyway.
// The _rn arithmetic intrinsics exist so that kernels can forbid nvcc's a*b+c -> fma contraction
// where the CPU reference rounds twice; the host build uses -ffp-contract=off throughout.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
template <class T>
T __ldg(const T* address) {
    return *address;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
