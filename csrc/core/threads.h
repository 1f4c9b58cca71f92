// fastrnn's own thread pool: persistent workers, one spin barrier per recurrent step, fork-safe.
// Not OpenMP: libgomp hangs in a child process forked after the parent used it (DataLoader-style
// workers), and its per-region cost (~4 us here) is as long as a whole small recurrent step.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

namespace fastrnn {

int get_num_threads();
void set_num_threads(int n);  // n >= 1

// Threads a recurrent step may use now: get_num_threads(), or 1 for a while (1 s, doubling up
// to a minute while it repeats) after report_waits() saw threads spend over a quarter of their
// time in parallel regions waiting for each other — which happens when there are more runnable
// threads than cores (another program, DataLoader workers): a descheduled thread then costs every
// per-step barrier a scheduler time slice, and one thread is much faster. Reports are judged
// over at least a millisecond of threads' time (kWaitWindowNs per thread), not one by one: a
// streaming step lasts microseconds, and one interrupt in one of them must not send the next
// hundred thousand steps to one thread. It takes two contended windows in a row: a VM's host
// taking a vCPU away for a few milliseconds stalls one window (one region, however long, closes
// at most one), more threads than cores stall them all. And only long waits count: a descheduled
// thread costs a barrier a scheduler time slice (milliseconds), while the waits of steps of a
// few microseconds on idle cores (barrier round trip, start skew, the last thread's join) can
// reach a quarter of the time at under a microsecond each: the back-off needs the window's mean
// wait per barrier pass over kSlowWaitNs too. `passes`: the barriers each thread passed.
constexpr std::int64_t kWaitWindowNs = 1000000, kSlowWaitNs = 5000;
int step_threads();
// Within its scope the calling thread plans for one thread (get_num_threads() and step_threads()
// return 1): a batch split's job runs a whole forward on its own rows (driver.cpp).
class OneThreadScope {
   public:
    OneThreadScope();
    ~OneThreadScope();
    OneThreadScope(const OneThreadScope&) = delete;
    OneThreadScope& operator=(const OneThreadScope&) = delete;

   private:
    bool previous_;
};
void report_waits(std::int64_t wait_ns, std::int64_t region_ns, int threads, std::int64_t passes = 1);
// Turns that back-off on (the default) or off, clearing any back-off in progress; returns the
// previous setting. Off, results are the same and steps may be slower; tests turn it off so that
// the threads a step uses depend on the planner alone, never on the machine's load.
bool set_backoff(bool enabled);
std::int64_t now_ns();

// What report_waits() has seen since the last reset: regions reported, the threads' summed
// waits and summed time in those regions (thread-nanoseconds), and how many times a report sent
// the steps to one thread (the bench shows it beside its rows).
struct WaitStats {
    std::int64_t regions, wait_ns, thread_ns, backoffs;
};
WaitStats wait_stats(bool reset);
// The round trip of one barrier among `threads` threads of the pool that do nothing else, in
// nanoseconds (median of `rounds` barriers per thread): the fixed cost a parallel step pays.
double barrier_ns(int threads, int rounds);

// Runs fn(tid, nthreads) on n threads, the caller being tid 0, and returns when all are done.
// When the pool is already running another caller's job (several Python threads), the job runs
// on the calling thread alone (nthreads = 1): the kernels' results do not depend on the thread
// count, so only the speed differs. fn must not throw. Returns the nanoseconds the caller
// waited at the end for the other threads. `what` names the region in the calling thread's record.
std::int64_t parallel_run(int n, const std::function<void(int, int)>& fn, const char* what = "");

// What a parallel region ran on, for tests: `asked` threads were planned, `ran` threads called
// the job, `on` is "pool" (fastrnn's), "openmp" (the foreign runtime) or "caller" (one thread:
// planned so, or the pool was busy).
struct RegionRecord {
    const char* what;
    int asked, ran;
    const char* on;
};
// Starts (clearing the record) or stops recording the calling thread's parallel regions.
void record_regions(bool on);
std::vector<RegionRecord> recorded_regions();

// An OpenMP runtime already loaded in the process (torch's libgomp or libiomp5, through their
// GOMP_parallel entry point). While a thread has one set, its parallel regions run on that
// runtime's threads instead of fastrnn's pool: after each operator torch's OpenMP workers spin
// for milliseconds, and a second pool would fight them for the cores.
struct ForeignOmp {
    void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
    int (*thread_num)();
    int (*team_size)();
};
// The calling thread's runtime (nullptr: fastrnn's pool); returns the previous one. A team of
// another size than asked for (OMP_THREAD_LIMIT, OMP_DYNAMIC, nesting) hands the region to the
// pool. A forked child never uses one (libgomp hangs there): set_thread_omp is then a no-op.
const ForeignOmp* set_thread_omp(const ForeignOmp* omp);

// Held (shared) by every BLAS call. fork() takes it exclusively (pthread_atfork), so it waits
// for the BLAS calls other threads have in flight: a child must not inherit OpenBLAS's internal
// locks held by a thread that does not exist there, or its first GEMM waits forever.
class BlasCall {
   public:
    BlasCall();
    ~BlasCall();
    BlasCall(const BlasCall&) = delete;
    BlasCall& operator=(const BlasCall&) = delete;
};

// Barrier for a fixed group of threads, each passing its index in the group. Up to
// kFlagBarrierThreads threads, each announces its arrival count on its own cache line and waits
// until every other count has reached it: one cache-line transfer between two cores per step
// (a shared counter takes three in a row: measured 0.47 us a round trip between this Xeon's two
// cores, 0.12 us with flags -- a streaming step at H = 256 on two threads lasts ~8 us). Larger
// groups share a sense-reversing counter. Either spins briefly, then yields (a VM may deschedule
// a vCPU, and spinning would then starve the thread being waited for).
class Barrier {
   public:
    static constexpr int kFlagBarrierThreads = 8;
    // Only the slots of n threads are set: a one-thread call (a stream step) skips zeroing the rest.
    explicit Barrier(int n) : n_(n) {
        for (int i = 0; i < used_slots(); ++i) {
            slots_[i].arrived.store(0, std::memory_order_relaxed);
            slots_[i].wait_ns.store(0, std::memory_order_relaxed);
        }
    }
    void wait(int tid);
    std::int64_t wait_ns() const;  // summed over threads

   private:
    struct alignas(64) Slot {
        std::atomic<std::uint32_t> arrived;
        std::atomic<std::int64_t> wait_ns;
    };
    int used_slots() const { return n_ < kFlagBarrierThreads ? n_ : kFlagBarrierThreads; }
    const int n_;
    Slot slots_[kFlagBarrierThreads];
    alignas(64) std::atomic<int> count_{0};
    std::atomic<std::uint32_t> phase_{0};
    alignas(64) std::atomic<std::int64_t> wait_ns_{0};
};

}  // namespace fastrnn
