// cuda_emu.cpp: the runtime behind cuda_emu.h. A pool of host threads, one per CUDA thread of a
// block, runs a launch block by block:
//
//   controller (the caller)             pool threads 0..T-1 of the launch
//   ---------------------------------   -----------------------------------------------------
//   set up barriers, wake the threads   block barrier: the last to arrive sets up the next
//   wait until all have left            block (blockIdx, fresh barriers, poisoned shared
//                                       memory), or marks the launch done
//                                       run the kernel body as thread (x, y, z)
//                                       drop out of the barriers; back to the block barrier
//
// So between blocks there is one barrier round and no round trip through the controller.
#include <algorithm>
#include <array>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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
constexpr std::chrono::seconds kHangTimeout{120};

struct Launch;

// Runs once per block transition, inside the block barrier, while every thread waits.
struct NextBlock {
    Launch* launch;
    void operator()() noexcept;
};

struct Warp {
    std::unique_ptr<std::barrier<>> barrier;
    // Double-buffered: a shuffle writes one half and reads it after the barrier; the next
    // shuffle uses the other half, so a fast lane cannot overwrite a value a slow lane still reads.
    std::array<std::array<std::uint64_t, kWarp>, 2> slots;
};

struct Launch {
    void (*body)(void*);
    void* ctx;
    unsigned threads;
    unsigned long long blocks;
    std::atomic<unsigned long long> next_block{0};  // read by the controller to watch progress
    bool done = false;
    std::unique_ptr<std::barrier<NextBlock>> block_barrier;
    std::unique_ptr<std::barrier<>> sync_barrier;
    std::vector<Warp> warps;
    std::vector<std::max_align_t> dynamic;  // the dynamic shared memory arena
    std::size_t dynamic_bytes;
    std::mutex error_mutex;
    std::string error;

    void record_error(const char* what) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (error.empty()) error = what;
    }

    // Fresh barriers for a block: threads that returned early dropped out of the old ones.
    void reset_barriers() {
        sync_barrier = std::make_unique<std::barrier<>>(threads);
        for (unsigned w = 0; w < warps.size(); ++w) {
            unsigned lanes = std::min(kWarp, threads - w * kWarp);
            warps[w].barrier = std::make_unique<std::barrier<>>(lanes);
        }
    }
};

Launch* current = nullptr;

void poison(void* begin, std::size_t bytes) {
    if (bytes > 0) std::memset(begin, kPoison, bytes);
}

void NextBlock::operator()() noexcept {
    Launch& l = *launch;
    if (l.next_block == l.blocks) {
        l.done = true;
        return;
    }
    unsigned long long b = l.next_block.fetch_add(1);
    block_idx.x = unsigned(b % grid_dim.x);
    block_idx.y = unsigned(b / grid_dim.x % grid_dim.y);
    block_idx.z = unsigned(b / (static_cast<unsigned long long>(grid_dim.x) * grid_dim.y));
    l.reset_barriers();
    if (__start_darts_shared != nullptr) {
        poison(__start_darts_shared, std::size_t(__stop_darts_shared - __start_darts_shared));
    }
    poison(l.dynamic.data(), l.dynamic_bytes);
}

// Threads wait in groups of 32 (one futex word per group), so a launch wakes only the groups it
// uses. The controller waits until every woken thread has left the launch, which is what makes
// it safe to tear the launch down and to start the next one.
class Pool {
public:
    void run(Launch& launch) {
        unsigned groups = (launch.threads + kWarp - 1) / kWarp;
        grow(groups);
        current = &launch;
        running.store(groups * kWarp);
        for (unsigned g = 0; g < groups; ++g) {
            wake[g].fetch_add(1);
            wake[g].notify_all();
        }
        // Wait for the threads, and give up on a launch that stops making progress: a
        // __syncthreads() that some threads of a block never reach hangs the hardware too, but a
        // test should fail rather than hang.
        std::unique_lock<std::mutex> lock(finished_mutex);
        unsigned long long last_block = launch.next_block.load();
        auto last_progress = std::chrono::steady_clock::now();
        while (running.load() != 0) {
            finished.wait_for(lock, std::chrono::seconds(1));
            if (launch.next_block.load() != last_block) {
                last_block = launch.next_block.load();
                last_progress = std::chrono::steady_clock::now();
            } else if (std::chrono::steady_clock::now() - last_progress > kHangTimeout) {
                std::fprintf(stderr,
                             "CUDA emulator: block %llu of %llu made no progress for %lld s; is "
                             "there a __syncthreads() or warp shuffle that not every thread "
                             "reaches? Aborting.\n",
                             last_block, launch.blocks,
                             static_cast<long long>(kHangTimeout.count()));
                std::abort();
            }
        }
        current = nullptr;
    }

private:
    std::array<std::atomic<std::uint64_t>, kMaxThreadsPerBlock / kWarp> wake{};
    std::atomic<unsigned> running{0};
    std::mutex finished_mutex;
    std::condition_variable finished;
    std::vector<std::thread> threads;

    void grow(unsigned groups) {
        while (threads.size() < groups * kWarp) {
            unsigned id = unsigned(threads.size());
            // The thread starts waiting from the generation before the launch that needs it,
            // read here, before `run` bumps it: read in the new thread it could miss that launch.
            std::uint64_t seen = wake[id / kWarp].load();
            threads.emplace_back([this, id, seen] { serve(id, seen); });
            threads.back().detach();
        }
    }

    void serve(unsigned id, std::uint64_t seen) {
        std::atomic<std::uint64_t>& my_wake = wake[id / kWarp];
        for (;;) {
            my_wake.wait(seen);
            seen = my_wake.load();
            Launch& l = *current;
            if (id < l.threads) run_thread(l, id);
            if (running.fetch_sub(1) == 1) {
                std::lock_guard<std::mutex> lock(finished_mutex);
                finished.notify_all();
            }
        }
    }

    static void run_thread(Launch& l, unsigned id) {
        ThreadState& t = this_thread;
        t.thread_idx.x = id % block_dim.x;
        t.thread_idx.y = id / block_dim.x % block_dim.y;
        t.thread_idx.z = id / (block_dim.x * block_dim.y);
        t.warp = id / kWarp;
        t.lane = id % kWarp;
        for (;;) {
            l.block_barrier->arrive_and_wait();
            if (l.done) return;
            t.exchange_phase = 0;
            try {
                l.body(l.ctx);
            } catch (const std::exception& e) {
                l.record_error(e.what());
            } catch (...) {
                l.record_error("a kernel thread threw an unknown exception");
            }
            l.sync_barrier->arrive_and_drop();
            l.warps[t.warp].barrier->arrive_and_drop();
        }
    }
};

// Lives as long as the process; its threads are detached and never joined.
Pool& pool() {
    static Pool* p = new Pool();
    return *p;
}

std::mutex launch_mutex;

int fail(char* error, std::size_t error_len, const std::string& message) {
    if (error_len > 0) {
        std::size_t n = std::min(error_len - 1, message.size());
        std::memcpy(error, message.data(), n);
        error[n] = '\0';
    }
    return 1;
}

}  // namespace

void sync_threads() { current->sync_barrier->arrive_and_wait(); }

void sync_warp() { current->warps[this_thread.warp].barrier->arrive_and_wait(); }

void* dynamic_shared() { return current->dynamic.data(); }

void warp_exchange(const void* value, void* out, unsigned size, unsigned src_lane) {
    ThreadState& t = this_thread;
    Warp& w = current->warps[t.warp];
    auto& slots = w.slots[t.exchange_phase];
    t.exchange_phase ^= 1;
    std::memcpy(&slots[t.lane], value, size);
    w.barrier->arrive_and_wait();
    std::memcpy(out, &slots[src_lane % kWarp], size);
}

int launch_erased(const unsigned grid[3], const unsigned block[3], unsigned shared_bytes,
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
    Launch l;
    l.body = body;
    l.ctx = ctx;
    l.threads = unsigned(threads);
    l.blocks = blocks;
    l.warps = std::vector<Warp>((l.threads + kWarp - 1) / kWarp);
    for (Warp& w : l.warps) {
        for (auto& half : w.slots) poison(half.data(), sizeof(half));
    }
    l.dynamic_bytes = shared_bytes;
    l.dynamic.resize((shared_bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t));
    l.block_barrier = std::make_unique<std::barrier<NextBlock>>(l.threads, NextBlock{&l});
    grid_dim = dim3(grid[0], grid[1], grid[2]);
    block_dim = dim3(block[0], block[1], block[2]);
    pool().run(l);
    if (!l.error.empty()) return fail(error, error_len, l.error);
    return 0;
}

}  // namespace darts_emu
