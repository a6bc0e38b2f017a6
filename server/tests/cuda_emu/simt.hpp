// A CPU emulation of the CUDA execution model, just enough to run server/src/kv_cache/paged_attention.cu
// unchanged. Every CUDA thread of a block is a fiber (ucontext), scheduled round-robin on one OS thread:
// `__syncthreads` waits until every thread of the block has arrived, `__shfl_xor_sync` is a two-phase exchange
// over the thread's warp (32 threads), `__shared__` a static shared by the block's threads. Threads run the
// blocks in order, meeting at a barrier between blocks so that one block's `__shared__` statics are not
// overwritten while another thread still reads them. Divergence inside a warp around a shuffle is not
// supported (our kernels have none: every lane of a warp runs the same loop). Deterministic: same input, same
// interleaving, same output.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define LLAMA_SIMT_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

Dim3 threadIdx;  // of the running fiber (the scheduler sets them before each switch)
Dim3 blockIdx;
Dim3 blockDim;
Dim3 gridDim;

struct EmuBarrier {
    unsigned count = 0, arrived = 0;
    uint64_t generation = 0;
};

struct EmuFiber {
    ucontext_t ctx;
    std::vector<char> stack;
    Dim3 tid, bid;
    unsigned warp = 0, lane = 0;
    bool done = false;
};

static ucontext_t emu_scheduler;
static std::vector<EmuFiber>* emu_fibers;
static unsigned emu_running;
static EmuBarrier emu_block_barrier;
static std::vector<EmuBarrier> emu_warp_barriers;
static std::vector<float> emu_shuffle;  // one slot per thread
static const std::function<void()>* emu_kernel;

inline void emu_yield() { swapcontext(&(*emu_fibers)[emu_running].ctx, &emu_scheduler); }

inline void emu_wait(EmuBarrier& b) {
    if (++b.arrived == b.count) {
        b.arrived = 0;
        b.generation++;
        return;
    }
    const uint64_t mine = b.generation;
    while (b.generation == mine) emu_yield();
}

inline void __syncthreads() { emu_wait(emu_block_barrier); }

inline float __shfl_xor_sync(unsigned /*mask*/, float x, int offset) {
    EmuFiber& f = (*emu_fibers)[emu_running];
    const unsigned base = f.warp * 32;
    emu_shuffle[base + f.lane] = x;
    emu_wait(emu_warp_barriers[f.warp]);
    const float other = emu_shuffle[base + (f.lane ^ (unsigned)offset)];
    emu_wait(emu_warp_barriers[f.warp]);
    return other;
}

inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(uint32_t u) { return __uint_as_float(u); }
inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// IEEE half conversions, round to nearest even (what cvt.rn.f16.f32 does): GCC's _Float16.
inline float emu_f16_to_f32(uint16_t h) {
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}
inline uint16_t emu_f32_to_f16(float f) {
    _Float16 v = (_Float16)f;
    uint16_t h;
    std::memcpy(&h, &v, 2);
    return h;
}

inline void emu_fiber_main() {
    EmuFiber& f = (*emu_fibers)[emu_running];
    for (unsigned bz = 0; bz < gridDim.z; bz++)
        for (unsigned by = 0; by < gridDim.y; by++)
            for (unsigned bx = 0; bx < gridDim.x; bx++) {
                f.bid = Dim3{bx, by, bz};
                blockIdx = f.bid;
                (*emu_kernel)();
                emu_wait(emu_block_barrier);
            }
    f.done = true;
}

// Runs `kernel` over the grid: one fiber per CUDA thread of a block, each running every block in turn.
inline void emu_launch(Dim3 grid, Dim3 block, const std::function<void()>& kernel) {
    const unsigned threads = block.x * block.y * block.z;
    gridDim = grid;
    blockDim = block;
    emu_kernel = &kernel;
    emu_block_barrier = EmuBarrier{threads, 0, 0};
    emu_warp_barriers.clear();
    for (unsigned w = 0; w * 32 < threads; w++)  // a last, partial warp has fewer lanes
        emu_warp_barriers.push_back(EmuBarrier{std::min(32u, threads - w * 32), 0, 0});
    emu_shuffle.assign(emu_warp_barriers.size() * 32, 0.0f);
    std::vector<EmuFiber> fibers(threads);
    emu_fibers = &fibers;
    for (unsigned t = 0; t < threads; t++) {
        EmuFiber& f = fibers[t];
        f.tid = Dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        f.warp = t / 32;
        f.lane = t % 32;
        f.stack.resize(256 * 1024);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = &emu_scheduler;
        makecontext(&f.ctx, emu_fiber_main, 0);
    }
    for (unsigned live = threads; live > 0;) {
        live = 0;
        for (unsigned t = 0; t < threads; t++) {
            if (fibers[t].done) continue;
            emu_running = t;
            threadIdx = fibers[t].tid;
            blockIdx = fibers[t].bid;
            swapcontext(&emu_scheduler, &fibers[t].ctx);
            live += !fibers[t].done;
        }
    }
}
