// fastrnn's own thread pool: persistent workers, one spin barrier per recurrent step, fork-safe.
// Not OpenMP: libgomp hangs in a child process forked after the parent used it (DataLoader-style
// workers), and its per-region cost (~4 us here) is as long as a whole small recurrent step.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>

namespace fastrnn {

int get_num_threads();
void set_num_threads(int n);  // n >= 1

// Threads a recurrent step may use now: get_num_threads(), or 1 for about a second after
// report_stalls() saw barriers waiting on descheduled threads (more runnable threads than
// cores: per-step barriers would then cost a scheduler time slice each).
int step_threads();
void report_stalls(std::int64_t stalls, std::int64_t waits);

// Runs fn(tid, nthreads) on n threads, the caller being tid 0, and returns when all are done.
// When the pool is already running another caller's job (several Python threads), the job runs
// on the calling thread alone (nthreads = 1): the kernels' results do not depend on the thread
// count, so only the speed differs. fn must not throw.
void parallel_run(int n, const std::function<void(int, int)>& fn);

// Barrier for a fixed group of threads: sense-reversing, spins briefly, then yields (a VM may
// deschedule a vCPU, and spinning would then starve the thread being waited for).
class Barrier {
   public:
    explicit Barrier(int n) : n_(n) {}
    void wait();
    std::int64_t waits() const { return waits_.load(std::memory_order_relaxed); }
    std::int64_t stalls() const { return stalls_.load(std::memory_order_relaxed); }  // waits that outlasted the spin

   private:
    const int n_;
    std::atomic<int> count_{0};
    std::atomic<std::uint32_t> phase_{0};
    std::atomic<std::int64_t> waits_{0}, stalls_{0};
};

}  // namespace fastrnn
