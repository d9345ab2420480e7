// cuda_emu.cpp: the runtime behind cuda_emu.h. A launch runs on the calling host thread, block by
// block; every CUDA thread of a block is a fiber (its own stack, switched cooperatively):
//
//   scheduler (the caller)                    fiber t (CUDA thread t of the block)
//   ---------------------------------------   ------------------------------------------------
//   poison shared memory, reset barriers      run the kernel body as thread (x, y, z) until it
//   sweep: warp by warp, resume the warp's    returns or arrives at a barrier:
//   runnable lanes again and again until        __syncthreads(): the block barrier
//   none is left (all at __syncthreads() or     __syncwarp(), shuffles: its warp's barrier
//   returned); then the next warp               then switch back to the scheduler
//   sweep again until all have returned;      return: drop out of both barriers
//   a sweep that resumes none: deadlock
//
// A barrier completes (its generation moves on) when every live thread it covers has arrived; a
// fiber waiting on it is runnable from then on (for the block barrier: from the next sweep). So
// one sweep carries the block from one __syncthreads() to the next, each warp racing ahead of the
// ones after it, in increasing warp and lane order in even blocks and decreasing in odd ones.
// A block costs a couple of context switches per thread and barrier, instead of the futex round
// trips of one OS thread per CUDA thread.
//
// The switch is a few lines of assembly on x86-64 (below) and <ucontext.h> elsewhere, or anywhere
// when built with -DDARTS_EMU_UCONTEXT (slower: it saves the signal mask with a system call).
//
// Guarded buffers, the bounds check: the bounds-checked executor (src/device/gpu/emu.rs) maps each
// buffer with darts_emu_guarded_map (at the end of this file), laid out as
//
//   | guard page | poison ... | buffer, rounded up to 64 bytes (the rest poison) | guard page |
//
// so that an access past the end or before the start either lands in the poison or faults in a
// guard page. A read of the poison brings NaN into the results. A write to it is found when the
// launch ends: the launch checks the poison around every guarded buffer it could reach (its
// pointer arguments, and the buffers whose addresses a table argument holds), and one that
// changed fails the launch and is poisoned again. A fault while a kernel runs goes through
// on_fault, which names the kernel on stderr and hands the fault back to the handler that was
// there before (Rust's, which ends the process): the closest the host gets to the GPU's "illegal
// address" error.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__ELF__) && !defined(DARTS_EMU_UCONTEXT)
#define DARTS_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

// The linker defines these around the `darts_shared` section that holds every `__shared__`
// variable; weak, so that a build whose kernels declare none still links.
extern "C" char __start_darts_shared[] __attribute__((weak));
extern "C" char __stop_darts_shared[] __attribute__((weak));

namespace darts_emu {
namespace {

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxDynamicShared = 48 * 1024;
constexpr unsigned kWarp = 32;
constexpr unsigned char kPoison = 0xFF;
// Each fiber's stack, below which one inaccessible guard page turns an overflow into a SIGSEGV
// instead of silent corruption. Kernels keep small locals; printf and exception unwinding fit too.
constexpr std::size_t kStackBytes = 64 * 1024;

struct Fiber;

// ---- Context switch ---------------------------------------------------------------------------
#ifdef DARTS_EMU_ASM_SWITCH

// A suspended context is its stack pointer; the stack holds, from there up: MXCSR and the x87
// control word (8 bytes), r15, r14, r13, r12, rbx, rbp and the address to return to. These are
// what the System V ABI asks a callee to preserve; everything else the caller of
// darts_emu_switch already treats as clobbered, as for any call.
struct Context {
    void* sp = nullptr;
};

extern "C" void darts_emu_switch(void** save_sp, void* load_sp);
extern "C" void darts_emu_fiber_start();

// darts_emu_switch(save_sp, load_sp): push the callee-saved state, store rsp in *save_sp, load
// load_sp into rsp, pop the state saved there and return into that context.
// darts_emu_fiber_start: where a new fiber's first switch returns to. r12 holds the fiber and r13
// the entry function (placed by `prepare`); rsp is 16-byte aligned here, as the call needs. The
// entry never returns. `.cfi_undefined rip` marks the bottom of the fiber's call stack for
// unwinders and debuggers.
asm(R"(
    .pushsection .text
    .globl darts_emu_switch
    .hidden darts_emu_switch
    .type darts_emu_switch, @function
darts_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size darts_emu_switch, .-darts_emu_switch

    .globl darts_emu_fiber_start
    .hidden darts_emu_fiber_start
    .type darts_emu_fiber_start, @function
darts_emu_fiber_start:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size darts_emu_fiber_start, .-darts_emu_fiber_start
    .popsection
)");

// Lays out a fresh context on the stack ending at `top` that, switched to, calls entry(fiber)
// with the caller's floating-point control state.
void prepare(Context& c, char* top, Fiber* fiber, void (*entry)(Fiber*)) {
    auto* p = reinterpret_cast<std::uint64_t*>(top);  // 16-byte aligned
    std::uint32_t fp_control[2] = {};
    asm("stmxcsr %0\n\tfnstcw %1" : "=m"(fp_control[0]), "=m"(fp_control[1]));
    p[-1] = reinterpret_cast<std::uint64_t>(&darts_emu_fiber_start);  // popped by `ret`
    p[-2] = 0;                                                        // rbp
    p[-3] = 0;                                                        // rbx
    p[-4] = reinterpret_cast<std::uint64_t>(fiber);                   // r12
    p[-5] = reinterpret_cast<std::uint64_t>(entry);                   // r13
    p[-6] = 0;                                                        // r14
    p[-7] = 0;                                                        // r15
    std::memcpy(&p[-8], fp_control, sizeof(fp_control));
    c.sp = &p[-8];
}

void switch_context(Context& from, Context& to) { darts_emu_switch(&from.sp, to.sp); }

#else

struct Context {
    ucontext_t uc;
};

// makecontext passes only int arguments, so a new fiber finds itself here instead.
Fiber* starting_fiber = nullptr;
void (*starting_entry)(Fiber*) = nullptr;

void start_fiber() { starting_entry(starting_fiber); }

void prepare(Context& c, char* top, Fiber* fiber, void (*entry)(Fiber*)) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = top - kStackBytes;
    c.uc.uc_stack.ss_size = kStackBytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, start_fiber, 0);
    starting_fiber = fiber;  // fibers start one at a time, each right after `prepare` ran for it
    starting_entry = entry;
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

#endif

// ---- Fibers and barriers ----------------------------------------------------------------------

enum class Status : unsigned char { NotStarted, AtBlockBarrier, AtWarpBarrier, Returned };

struct Fiber {
    Context context;
    char* stack_top = nullptr;
    ThreadState state{};
    Status status = Status::NotStarted;
    unsigned long long waits_for = 0;  // the barrier generation it arrived in
};

// Counts arrivals of the live threads it covers; `generation` moves on when all have arrived.
struct Barrier {
    unsigned live = 0;
    unsigned arrived = 0;
    unsigned long long generation = 0;

    void reset(unsigned threads) {
        live = threads;
        arrived = 0;
    }
    void arrive(Fiber& f, Status status) {
        f.status = status;
        f.waits_for = generation;
        if (++arrived == live) complete();
    }
    // A thread that returns drops out, which completes the barrier if all the others are there.
    void drop() {
        --live;
        if (arrived > 0 && arrived == live) complete();
    }
    void complete() {
        arrived = 0;
        ++generation;
    }
};

struct Warp {
    Barrier barrier;
    // Double-buffered: a shuffle writes one half and reads it after the barrier; the next
    // shuffle uses the other half, so a fast lane cannot overwrite a value a slow lane still reads.
    std::array<std::array<std::uint64_t, kWarp>, 2> slots;
};

struct Launch {
    void (*body)(void*);
    void* ctx;
    unsigned threads;
    Barrier block_barrier;
    std::vector<Warp> warps;
    std::vector<std::max_align_t> dynamic;  // the dynamic shared memory arena
    std::size_t dynamic_bytes;
    std::string error;

    void record_error(const std::string& what) {
        if (error.empty()) error = what;
    }
    // Whether `f` can go on in the sweep that began at block barrier generation `phase`: a thread
    // released from __syncthreads() during the sweep waits for the next one.
    bool runnable(const Fiber& f, unsigned long long phase) const {
        switch (f.status) {
            case Status::NotStarted:
                return true;
            case Status::AtBlockBarrier:
                return f.waits_for < phase;
            case Status::AtWarpBarrier:
                return warps[f.state.warp].barrier.generation != f.waits_for;
            case Status::Returned:
                return false;
        }
        return false;
    }
};

// All of these belong to the one launch running (launches are serialised by `launch_mutex`).
std::mutex launch_mutex;
Launch* current = nullptr;
Fiber* running = nullptr;
Context scheduler;
// The fibers, created as launches need them and reused; reserved up front so they never move.
std::vector<Fiber> fibers;

void poison(void* begin, std::size_t bytes) {
    if (bytes > 0) std::memset(begin, kPoison, bytes);
}

// ---- Guarded buffers --------------------------------------------------------------------------

std::size_t page_size() {
    static const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    return page;
}

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// Where a guarded buffer of `bytes` lies in its mapping.
struct GuardedLayout {
    std::size_t occupied;  // `bytes` rounded up to 64
    std::size_t span;      // `occupied` rounded up to whole pages: the mapping between the guards

    explicit GuardedLayout(std::size_t bytes)
        : occupied(round_up(bytes, 64)), span(round_up(round_up(bytes, 64), page_size())) {}

    // The first byte after the lower guard page, from the buffer's start.
    template <class Byte>
    Byte* pages(Byte* buffer) const {
        return buffer - (span - occupied);
    }
};

// The live guarded buffers (start -> bytes), for the check at the end of a launch.
std::mutex guarded_mutex;
std::map<const char*, std::size_t> guarded_buffers;

// The live guarded buffer whose mapping (poison included) holds `address`, if any: the first one
// starting above it (`address` in its poison before) or the last one starting at or below it.
const std::pair<const char* const, std::size_t>* guarded_buffer_at(const char* address) {
    auto above = guarded_buffers.upper_bound(address);
    if (above != guarded_buffers.end() &&
        address >= GuardedLayout(above->second).pages(above->first)) {
        return &*above;
    }
    if (above == guarded_buffers.begin()) return nullptr;
    auto at = std::prev(above);
    return address < at->first + GuardedLayout(at->second).occupied ? &*at : nullptr;
}

// The poison around a guarded buffer that a kernel overwrote, if any: how many bytes and the first
// one's offset from the buffer's start (negative before it). Poisons those bytes again.
struct Damage {
    std::size_t bytes = 0;
    std::ptrdiff_t first = 0;
};

Damage repair(const char* start, std::size_t bytes) {
    const GuardedLayout layout(bytes);
    char* buffer = const_cast<char*>(start);
    Damage damage;
    auto scan = [&](char* from, char* to) {
        for (char* p = from; p < to; ++p) {
            if (static_cast<unsigned char>(*p) == kPoison) continue;
            if (damage.bytes++ == 0) damage.first = p - buffer;
            *p = char(kPoison);
        }
    };
    scan(layout.pages(buffer), buffer);
    scan(buffer + bytes, buffer + layout.occupied);
    return damage;
}

// The error for the first guarded buffer that a launch with pointer arguments `args[0 .. count)`
// could reach and wrote outside of, or "". All of them are checked and repaired, so a later launch
// does not report this one's damage. Arguments that are not guarded buffers are skipped.
std::string check_guarded_buffers(const BufferArg* args, std::size_t count) {
    std::lock_guard<std::mutex> lock(guarded_mutex);
    if (guarded_buffers.empty()) return "";
    std::vector<const std::pair<const char* const, std::size_t>*> reached;
    auto reach = [&](const void* address) {
        const auto* buffer = guarded_buffer_at(static_cast<const char*>(address));
        if (buffer && std::find(reached.begin(), reached.end(), buffer) == reached.end()) {
            reached.push_back(buffer);
        }
    };
    for (std::size_t a = 0; a < count; ++a) {
        if (args[a].pointer == nullptr) continue;
        reach(args[a].pointer);
        const auto* table = guarded_buffer_at(static_cast<const char*>(args[a].pointer));
        if (!args[a].table || table == nullptr) continue;
        const auto* words = reinterpret_cast<const std::uint64_t*>(table->first);
        for (std::size_t w = 0; w < table->second / sizeof(std::uint64_t); ++w) {
            reach(reinterpret_cast<const void*>(std::uintptr_t(words[w])));
        }
    }
    std::string error;
    for (const auto* buffer : reached) {
        const Damage damage = repair(buffer->first, buffer->second);
        if (damage.bytes == 0 || !error.empty()) continue;
        const std::string where =
            damage.first < 0
                ? std::to_string(-damage.first) + " bytes before its start"
                : std::to_string(std::size_t(damage.first) - buffer->second) + " bytes past its end";
        error = "wrote outside a buffer of " + std::to_string(buffer->second) + " bytes: " +
                std::to_string(damage.bytes) +
                " bytes of the poison around it changed, the first " + where;
    }
    return error;
}

// ---- Fault report -----------------------------------------------------------------------------

// The kernel being run, for the fault report; null between launches.
std::atomic<const char*> running_kernel{nullptr};
// The SIGSEGV action before on_fault, which a fault is handed back to.
struct sigaction previous_fault_action;
std::once_flag fault_report_installed;

// write(2) of a C string to stderr: async-signal-safe, unlike stdio.
void write_stderr(const char* text) {
    std::size_t left = std::strlen(text);
    while (left > 0) {
        const ssize_t n = write(STDERR_FILENO, text, left);
        if (n <= 0) return;
        text += n;
        left -= std::size_t(n);
    }
}

// SIGSEGV: names the running kernel (if any) and the address, then puts the previous action back
// and returns, so the faulting access runs again under it.
void on_fault(int sig, siginfo_t* info, void*) {
    const char* kernel = running_kernel.load(std::memory_order_relaxed);
    if (kernel != nullptr) {
        char address[2 + 16 + 1] = "0x";
        auto value = reinterpret_cast<std::uintptr_t>(info->si_addr);
        for (int digit = 0; digit < 16; ++digit) {
            address[2 + digit] = "0123456789abcdef"[(value >> (60 - 4 * digit)) & 0xF];
        }
        address[18] = '\0';
        write_stderr("darts emulator: kernel ");
        write_stderr(kernel);
        write_stderr(" faulted at address ");
        write_stderr(address);
        write_stderr(": an access outside its buffers (on a GPU, an illegal address error), or a "
                     "CUDA thread's stack overflow\n");
    }
    sigaction(sig, &previous_fault_action, nullptr);
}

// Installs on_fault, once per process, on the signal stack of the faulting thread where it has one
// (Rust's runtime gives its threads one).
void install_fault_report() {
    std::call_once(fault_report_installed, [] {
        struct sigaction action {};
        action.sa_sigaction = on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &previous_fault_action);
    });
}

// Runs the kernel body as one CUDA thread. An exception (`__trap()`) stops this thread only and
// never leaves the fiber: the first one becomes the launch's error.
void fiber_main(Fiber* f) noexcept {
    Launch& l = *current;
    try {
        l.body(l.ctx);
    } catch (const std::exception& e) {
        l.record_error(e.what());
    } catch (...) {
        l.record_error("a kernel thread threw an unknown exception");
    }
    f->status = Status::Returned;
    switch_context(f->context, scheduler);  // never resumed
    __builtin_unreachable();
}

// Switches from the running fiber back to the scheduler; returns when the scheduler resumes it.
void yield() { switch_context(running->context, scheduler); }

// Grows the fiber pool to `n` fibers; false if the stacks cannot be mapped.
bool ensure_fibers(unsigned n) {
    if (fibers.capacity() < kMaxThreadsPerBlock) fibers.reserve(kMaxThreadsPerBlock);
    static const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    while (fibers.size() < n) {
        void* base = mmap(nullptr, page + kStackBytes, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) return false;
        if (mprotect(base, page, PROT_NONE) != 0) {
            munmap(base, page + kStackBytes);
            return false;
        }
        fibers.emplace_back();
        fibers.back().stack_top = static_cast<char*>(base) + page + kStackBytes;
    }
    return true;
}

// Resumes fiber `f` until it returns or reaches a barrier.
void resume(Launch& l, Fiber& f) {
    if (f.status == Status::NotStarted) prepare(f.context, f.stack_top, &f, fiber_main);
    this_thread = f.state;
    running = &f;
    switch_context(scheduler, f.context);
    f.state = this_thread;
    if (f.status == Status::Returned) {
        l.block_barrier.drop();
        l.warps[f.state.warp].barrier.drop();
    }
}

// Runs one block to the end: true, or false (with the launch's error set) on a deadlock. Each
// sweep takes the block from one __syncthreads() to the next, warp by warp: a warp runs as far as
// it can (through its shuffles and __syncwarp()s) before the next warp starts, the way a warp
// may race ahead of the others on the hardware.
bool run_block(Launch& l, bool increasing) {
    const unsigned n = l.threads;
    for (unsigned id = 0; id < n; ++id) {
        Fiber& f = fibers[id];
        f.state.thread_idx.x = id % block_dim.x;
        f.state.thread_idx.y = id / block_dim.x % block_dim.y;
        f.state.thread_idx.z = id / (block_dim.x * block_dim.y);
        f.state.warp = id / kWarp;
        f.state.lane = id % kWarp;
        f.state.exchange_phase = 0;
        f.status = Status::NotStarted;
    }
    l.block_barrier.reset(n);
    const unsigned warps = unsigned(l.warps.size());
    for (unsigned w = 0; w < warps; ++w) l.warps[w].barrier.reset(std::min(kWarp, n - w * kWarp));
    unsigned returned = 0;
    while (returned < n) {
        const unsigned long long phase = l.block_barrier.generation;
        bool resumed = false;
        for (unsigned k = 0; k < warps; ++k) {
            const unsigned first = (increasing ? k : warps - 1 - k) * kWarp;
            const unsigned lanes = std::min(kWarp, n - first);
            for (bool again = true; again;) {
                again = false;
                for (unsigned j = 0; j < lanes; ++j) {
                    Fiber& f = fibers[first + (increasing ? j : lanes - 1 - j)];
                    if (!l.runnable(f, phase)) continue;
                    again = resumed = true;
                    resume(l, f);
                    returned += f.status == Status::Returned;
                }
            }
        }
        if (!resumed) {
            unsigned at_block = 0;
            for (unsigned id = 0; id < n; ++id) {
                at_block += fibers[id].status == Status::AtBlockBarrier;
            }
            l.record_error("deadlock in block (" + std::to_string(block_idx.x) + ", " +
                           std::to_string(block_idx.y) + ", " + std::to_string(block_idx.z) +
                           "): " + std::to_string(at_block) + " threads wait in __syncthreads(), " +
                           std::to_string(n - returned - at_block) +
                           " in a warp barrier (__syncwarp() or a shuffle), " +
                           std::to_string(returned) +
                           " have returned; is there a barrier that not every thread reaches?");
            return false;
        }
    }
    return true;
}

int fail(char* error, std::size_t error_len, const std::string& message) {
    if (error_len > 0) {
        std::size_t n = std::min(error_len - 1, message.size());
        std::memcpy(error, message.data(), n);
        error[n] = '\0';
    }
    return 1;
}

}  // namespace

void sync_threads() {
    current->block_barrier.arrive(*running, Status::AtBlockBarrier);
    yield();
}

void sync_warp() {
    current->warps[this_thread.warp].barrier.arrive(*running, Status::AtWarpBarrier);
    yield();
}

void* dynamic_shared() { return current->dynamic.data(); }

void warp_exchange(const void* value, void* out, unsigned size, unsigned src_lane) {
    ThreadState& t = this_thread;
    auto& slots = current->warps[t.warp].slots[t.exchange_phase];
    t.exchange_phase ^= 1;
    std::memcpy(&slots[t.lane], value, size);
    sync_warp();
    std::memcpy(out, &slots[src_lane % kWarp], size);
}

int launch_erased(const char* name, const BufferArg* buffers, std::size_t buffer_count,
                  const unsigned grid[3], const unsigned block[3], unsigned shared_bytes,
                  char* error, std::size_t error_len, void (*body)(void*), void* ctx) {
    unsigned long long threads = 1ull * block[0] * block[1] * block[2];
    unsigned long long blocks = 1ull * grid[0] * grid[1] * grid[2];
    if (threads == 0 || threads > kMaxThreadsPerBlock || blocks == 0) {
        return fail(error, error_len,
                    "bad launch shape: need 1..1024 threads per block and at least one block");
    }
    if (shared_bytes > kMaxDynamicShared) {
        return fail(error, error_len, "more than 48 KiB of dynamic shared memory");
    }
    std::lock_guard<std::mutex> lock(launch_mutex);
    if (!ensure_fibers(unsigned(threads))) {
        return fail(error, error_len, "cannot map the emulator's fiber stacks");
    }
    Launch l;
    l.body = body;
    l.ctx = ctx;
    l.threads = unsigned(threads);
    l.warps = std::vector<Warp>((l.threads + kWarp - 1) / kWarp);
    for (Warp& w : l.warps) {
        for (auto& half : w.slots) poison(half.data(), sizeof(half));
    }
    l.dynamic_bytes = shared_bytes;
    l.dynamic.resize((shared_bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t));
    grid_dim = dim3(grid[0], grid[1], grid[2]);
    block_dim = dim3(block[0], block[1], block[2]);
    current = &l;
    install_fault_report();
    running_kernel.store(name, std::memory_order_relaxed);
    // Stop at the end of the first block that fails: the launch has failed already.
    for (unsigned long long b = 0; b < blocks && l.error.empty(); ++b) {
        block_idx.x = unsigned(b % grid_dim.x);
        block_idx.y = unsigned(b / grid_dim.x % grid_dim.y);
        block_idx.z = unsigned(b / (static_cast<unsigned long long>(grid_dim.x) * grid_dim.y));
        if (__start_darts_shared != nullptr) {
            poison(__start_darts_shared, std::size_t(__stop_darts_shared - __start_darts_shared));
        }
        poison(l.dynamic.data(), l.dynamic_bytes);
        if (!run_block(l, b % 2 == 0)) break;
    }
    running_kernel.store(nullptr, std::memory_order_relaxed);
    l.record_error(check_guarded_buffers(buffers, buffer_count));
    current = nullptr;
    running = nullptr;
    if (!l.error.empty()) return fail(error, error_len, l.error);
    return 0;
}

}  // namespace darts_emu

// ---- Guarded buffers: the bounds-checked executor's allocations -------------------------------

// A buffer of `bytes` (> 0) between two guard pages, its rounded-up end against the upper one,
// filled with poison and checked at the end of every launch; null if it cannot be mapped.
extern "C" void* darts_emu_guarded_map(std::size_t bytes) {
    using namespace darts_emu;
    const std::size_t page = page_size();
    const GuardedLayout layout(bytes);
    void* base = mmap(nullptr, layout.span + 2 * page, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    char* pages = static_cast<char*>(base) + page;
    if (mprotect(pages, layout.span, PROT_READ | PROT_WRITE) != 0) {
        munmap(base, layout.span + 2 * page);
        return nullptr;
    }
    poison(pages, layout.span);
    char* buffer = pages + (layout.span - layout.occupied);
    std::lock_guard<std::mutex> lock(guarded_mutex);
    guarded_buffers.emplace(buffer, bytes);
    return buffer;
}

// Unmaps a buffer of darts_emu_guarded_map(bytes), guards and all.
extern "C" void darts_emu_guarded_unmap(void* buffer, std::size_t bytes) {
    using namespace darts_emu;
    char* start = static_cast<char*>(buffer);
    {
        std::lock_guard<std::mutex> lock(guarded_mutex);
        guarded_buffers.erase(start);
    }
    const GuardedLayout layout(bytes);
    munmap(layout.pages(start) - page_size(), layout.span + 2 * page_size());
}
