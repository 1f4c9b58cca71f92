// Stress test of fastrnn's thread pool (csrc/core/threads.cpp), built and run by
// tests/test_threads.py (and under ThreadSanitizer by .ci/sanitize).
//
// Jobs alternate between thread counts, as the driver's do (the count depends on the layer's
// size, its directions and the stall back-off). Every job must run exactly once on each of its
// threads, and its threads must pass a shared barrier in step, three times over (the flag barrier
// of up to 8 threads and the shared counter beyond). Exit status 0: all jobs correct.
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "core/threads.h"

int main(int argc, char** argv) {
    const long jobs = argc > 1 ? std::atol(argv[1]) : 20000;
    const int sizes[] = {2, 4, 1, 3, 4, 2, 10};
    constexpr int kMax = 10, kRounds = 3;
    long bad = 0;
    for (long j = 0; j < jobs; ++j) {
        const int n = sizes[j % 7];
        std::atomic<int> calls[kMax][kRounds];
        for (auto& row : calls)
            for (auto& c : row) c.store(0);
        std::atomic<int> after_barrier{0};
        std::atomic<int> wrong_count{0};
        fastrnn::Barrier bar(n);
        fastrnn::parallel_run(n, [&](int tid, int nt) {
            if (nt != n) wrong_count.fetch_add(1);
            for (int r = 0; r < kRounds; ++r) {
                calls[tid][r].fetch_add(1);
                bar.wait(tid);  // nobody passes before all n arrived
                for (int t = 0; t < n; ++t)
                    if (calls[t][r].load() != 1) wrong_count.fetch_add(1);
            }
            after_barrier.fetch_add(1);
        });
        bool ok = wrong_count.load() == 0 && after_barrier.load() == n;
        for (int t = 0; t < kMax; ++t)
            for (int r = 0; r < kRounds; ++r) ok = ok && calls[t][r].load() == (t < n ? 1 : 0);
        if (!ok && ++bad <= 5) std::printf("job %ld (n=%d) ran incorrectly\n", j, n);
    }
    std::printf("%ld of %ld jobs incorrect\n", bad, jobs);
    return bad != 0;
}
