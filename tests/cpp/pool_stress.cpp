// Stress test of fastrnn's thread pool (csrc/core/threads.cpp), built and run by
// tests/test_threads.py (and under ThreadSanitizer by .ci/sanitize).
//
// Jobs alternate between thread counts, as the driver's do (the count depends on the layer's
// size, its directions and the stall back-off). Every job must run exactly once on each of its
// threads, and its threads must pass a shared barrier in step. Exit status 0: all jobs correct.
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "core/threads.h"

int main(int argc, char** argv) {
    const long jobs = argc > 1 ? std::atol(argv[1]) : 20000;
    const int sizes[] = {2, 4, 1, 3, 4, 2};
    long bad = 0;
    for (long j = 0; j < jobs; ++j) {
        const int n = sizes[j % 6];
        std::atomic<int> calls[8];
        for (auto& c : calls) c.store(0);
        std::atomic<int> after_barrier{0};
        std::atomic<int> wrong_count{0};
        fastrnn::Barrier bar(n);
        fastrnn::parallel_run(n, [&](int tid, int nt) {
            if (nt != n) wrong_count.fetch_add(1);
            calls[tid].fetch_add(1);
            bar.wait();  // nobody passes before all n arrived
            if (calls[(tid + 1) % n].load() != 1) wrong_count.fetch_add(1);
            after_barrier.fetch_add(1);
        });
        bool ok = wrong_count.load() == 0 && after_barrier.load() == n;
        for (int t = 0; t < 8; ++t) ok = ok && calls[t].load() == (t < n ? 1 : 0);
        if (!ok && ++bad <= 5) std::printf("job %ld (n=%d) ran incorrectly\n", j, n);
    }
    std::printf("%ld of %ld jobs incorrect\n", bad, jobs);
    return bad != 0;
}
