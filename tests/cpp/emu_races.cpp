// The CUDA host emulator (csrc/cuda/emu.h) must expose the bugs a GPU would: two kernels with a
// race, each next to its correct version, run under several seeds of the emulator's schedule.
//   1. A block reads what another block of the same ordinary launch writes (a prefix over
//      blocks): right only when blocks run in index order, which a GPU does not promise.
//   2. A missing __syncthreads between reading a neighbour's shared-memory slot and overwriting
//      one's own (write after read): right only when threads run in index order.
// Prints, per kernel, on how many seeds the result was wrong; exits 0 when every racy kernel was
// caught on some seed and every correct one was right on all of them. Run by tests/test_cuda.py.
#include <cstdio>
#include <vector>

#include "cuda/exec.h"

using namespace fastrnn::cuda;

constexpr int kBlocks = 16, kThreads = 32, kSeeds = 8;

// 1: out[b] = b + out[b - 1] in one launch (racy), or one launch per block (correct).
bool prefix(bool one_launch) {
    std::vector<double> out(kBlocks, -1.0);
    double* o = out.data();
    auto body = [&](std::int64_t first) {
        return [=] {
            const std::int64_t b = first + block_index();
            if (thread_index() == 0) store(o + b, double(b) + (b > 0 ? load(o + b - 1) : 0.0));
        };
    };
    if (one_launch) {
        emu::launch(kBlocks, kThreads, 0, false, 0, body(0));
    } else {
        for (std::int64_t b = 0; b < kBlocks; ++b) emu::launch(1, kThreads, 0, false, 0, body(b));
    }
    for (int b = 0; b < kBlocks; ++b)
        if (out[std::size_t(b)] != b * (b + 1) / 2.0) return false;
    return true;
}

// 2: out[t] = 2 * in[t + 1] (0 for the last thread), through shared memory.
bool shift(bool barrier) {
    std::vector<double> in(kThreads), out(kThreads, -1.0);
    for (int t = 0; t < kThreads; ++t) in[std::size_t(t)] = t + 1;
    const double* i = in.data();
    double* o = out.data();
    emu::launch(1, kThreads, sizeof(double) * kThreads, false, 0, [=] {
        double* s = shared_memory<double>();
        const int t = thread_index();
        s[t] = load(i + t);
        sync_block();
        const double next = t + 1 < kThreads ? s[t + 1] : 0.0;
        if (barrier) sync_block();  // everyone has read before anyone overwrites
        s[t] = 2 * next;
        sync_block();
        store(o + t, s[t]);
    });
    for (int t = 0; t < kThreads; ++t)
        if (out[std::size_t(t)] != (t + 1 < kThreads ? 2.0 * (t + 2) : 0.0)) return false;
    return true;
}

int main() {
    int wrong[4] = {0, 0, 0, 0};  // racy prefix, correct prefix, racy shift, correct shift
    for (int seed = 0; seed < kSeeds; ++seed) {
        emu::set_schedule(std::uint64_t(seed), false);
        wrong[0] += !prefix(true);
        wrong[1] += !prefix(false);
        wrong[2] += !shift(false);
        wrong[3] += !shift(true);
    }
    std::printf("wrong results in %d seeds: cross-block prefix %d, per-block launches %d, "
                "missing barrier %d, with barrier %d\n", kSeeds, wrong[0], wrong[1], wrong[2], wrong[3]);
    return wrong[0] > 0 && wrong[1] == 0 && wrong[2] > 0 && wrong[3] == 0 ? 0 : 1;
}
