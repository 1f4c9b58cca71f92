#include "threads.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FASTRNN_RELAX() _mm_pause()
#else
#define FASTRNN_RELAX() std::this_thread::yield()
#endif

namespace fastrnn {

namespace {

std::atomic<int> g_num_threads{1};

// Waits until pred() holds: spins for about `spin_us`, then yields the CPU between checks.
template <class Pred>
void spin_then_yield(Pred pred, int spin_us) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
    bool yielding = false;
    for (int i = 0; !pred(); ++i) {
        if ((i & 63) != 63 || (!yielding && std::chrono::steady_clock::now() < until)) {
            FASTRNN_RELAX();
        } else {
            yielding = true;
            std::this_thread::yield();
        }
    }
}

// Until when (steady clock, ns) recurrent steps run on one thread, and for how long the next
// report of heavy waiting sends them there.
std::atomic<std::int64_t> g_single_until{0};
std::atomic<std::int64_t> g_backoff_ns{1000000000};
std::atomic<bool> g_backoff_enabled{true};
std::atomic<std::int64_t> g_window_wait{0}, g_window_thread_ns{0}, g_window_passes{0};  // not judged yet
std::atomic<bool> g_last_window_slow{false};  // the window judged before this one was contended
std::atomic<std::int64_t> g_stat_regions{0}, g_stat_wait{0}, g_stat_thread_ns{0}, g_stat_backoffs{0};

// The calling thread's record of its parallel regions (tests read what the planner chose).
struct RegionLog {
    bool on = false;
    std::vector<RegionRecord> records;
};
thread_local RegionLog t_log;

class Pool {
   public:
    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(m_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
    }

    std::int64_t run(int n, const std::function<void(int, int)>& fn, bool& alone) {
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        alone = !busy.owns_lock();
        if (alone) {  // another caller's job is running: do this one alone
            fn(0, 1);
            return 0;
        }
        while (int(threads_.size()) < n - 1) {
            const int tid = int(threads_.size()) + 1;
            threads_.emplace_back([this, tid] { worker(tid); });
        }
        job_ = &fn;
        remaining_.store(n - 1, std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lk(m_);
            const std::uint64_t next = ((gen_.load(std::memory_order_relaxed) >> 32) + 1) << 32;
            gen_.store(next | std::uint32_t(n), std::memory_order_release);
        }
        cv_.notify_all();
        fn(0, n);
        const std::int64_t t0 = now_ns();
        spin_then_yield([&] { return remaining_.load(std::memory_order_acquire) == 0; }, 100);
        return now_ns() - t0;
    }

   private:
    void worker(int tid) {
        std::uint64_t seen = 0;
        for (;;) {
            // Spin a little first: the driver starts regions back to back (layer after layer).
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
            while (gen_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
                for (int i = 0; i < 64; ++i) FASTRNN_RELAX();
            if (gen_.load(std::memory_order_acquire) == seen) {
                std::unique_lock<std::mutex> lk(m_);
                cv_.wait(lk, [&] { return stop_ || gen_.load(std::memory_order_acquire) != seen; });
                if (stop_) return;
            }
            seen = gen_.load(std::memory_order_acquire);
            const int n = int(seen & 0xffffffffu);  // this generation's thread count
            if (tid < n) {
                (*job_)(tid, n);
                remaining_.fetch_sub(1, std::memory_order_acq_rel);
            }
        }
    }

    std::vector<std::thread> threads_;
    std::mutex busy_;  // one job at a time
    std::mutex m_;
    std::condition_variable cv_;
    bool stop_ = false;
    // Job generation (high 32 bits) and its thread count (low 32 bits) in one word, so a worker
    // that wakes late reads the thread count of the job it joins: with a separate count, a worker
    // not needed by the last job could read the next job's count, run that job, then run it again
    // for its new generation (twice the decrements: the caller hung or returned early).
    std::atomic<std::uint64_t> gen_{0};
    std::atomic<int> remaining_{0};
    const std::function<void(int, int)>* job_ = nullptr;
};

Pool* g_pool = nullptr;
std::mutex g_pool_mutex;

// In a forked child only the forking thread exists: the parent's workers are gone and the
// pool's mutexes may be held by them. Abandon that pool (no destructor: its state is not ours
// to clean up) and start a fresh one on first use.
void reset_pool_in_child() {
    g_pool = nullptr;
    new (&g_pool_mutex) std::mutex();
}

// The BlasCall lock; writer-preferring where glibc offers it, so a fork is not starved by
// threads that call BLAS back to back. Registered at load time, after OpenBLAS's own handler
// (scipy_openblas32 is loaded first), so ours runs first before a fork: OpenBLAS then shuts its
// threads down with no call in flight.
#ifdef PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#define FASTRNN_RWLOCK_INIT PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#else
#define FASTRNN_RWLOCK_INIT PTHREAD_RWLOCK_INITIALIZER
#endif
pthread_rwlock_t g_blas_lock = FASTRNN_RWLOCK_INIT;
void blas_lock_exclusive() { pthread_rwlock_wrlock(&g_blas_lock); }
void blas_unlock() { pthread_rwlock_unlock(&g_blas_lock); }
// In the child, the lock's state still counts the parent's threads waiting for it: start afresh.
void blas_reset_in_child() {
    const pthread_rwlock_t fresh = FASTRNN_RWLOCK_INIT;
    g_blas_lock = fresh;
}
const int g_blas_atfork = pthread_atfork(blas_lock_exclusive, blas_unlock, blas_reset_in_child);

Pool& pool() {
    static const int registered = pthread_atfork(nullptr, nullptr, reset_pool_in_child);
    (void)registered;
    std::lock_guard<std::mutex> lk(g_pool_mutex);
    if (!g_pool) g_pool = new Pool();  // lives until exit: worker threads must outlive callers
    return *g_pool;
}

}  // namespace

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

BlasCall::BlasCall() { pthread_rwlock_rdlock(&g_blas_lock); }
BlasCall::~BlasCall() { pthread_rwlock_unlock(&g_blas_lock); }

namespace {
thread_local bool t_one_thread = false;
}  // namespace

OneThreadScope::OneThreadScope() : previous_(t_one_thread) { t_one_thread = true; }
OneThreadScope::~OneThreadScope() { t_one_thread = previous_; }

int get_num_threads() { return t_one_thread ? 1 : g_num_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_num_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

int step_threads() {
    const bool backed_off = g_backoff_enabled.load(std::memory_order_relaxed) &&
                            now_ns() < g_single_until.load(std::memory_order_relaxed);
    return backed_off ? 1 : get_num_threads();
}

bool set_backoff(bool enabled) {
    g_single_until.store(0, std::memory_order_relaxed);
    g_window_wait.store(0);
    g_window_thread_ns.store(0);
    g_window_passes.store(0);
    g_last_window_slow.store(false);
    g_backoff_ns.store(1000000000, std::memory_order_relaxed);
    return g_backoff_enabled.exchange(enabled);
}

void report_waits(std::int64_t wait_ns, std::int64_t region_ns, int threads, std::int64_t passes) {
    if (threads <= 1 || region_ns <= 0) return;
    g_stat_regions.fetch_add(1, std::memory_order_relaxed);
    g_stat_wait.fetch_add(wait_ns, std::memory_order_relaxed);
    g_stat_thread_ns.fetch_add(std::int64_t(threads) * region_ns, std::memory_order_relaxed);
    if (!g_backoff_enabled.load(std::memory_order_relaxed)) return;
    // The window: one parallel job runs at a time (the pool's busy lock), so its reports do not
    // race each other; a report from a caller that ran alone adds nothing (it waited 0).
    const std::int64_t thread_ns = g_window_thread_ns.fetch_add(std::int64_t(threads) * region_ns) +
                                   std::int64_t(threads) * region_ns;
    const std::int64_t waited = g_window_wait.fetch_add(wait_ns) + wait_ns;
    const std::int64_t pass_count = g_window_passes.fetch_add(std::int64_t(threads) * passes) + std::int64_t(threads) * passes;
    if (thread_ns < std::int64_t(threads) * kWaitWindowNs) return;
    g_window_thread_ns.store(0);
    g_window_wait.store(0);
    g_window_passes.store(0);
    const bool slow = 4 * waited > thread_ns && waited > kSlowWaitNs * pass_count;
    // Two contended windows in a row: more threads than cores stay contended, while a VM whose
    // host takes a vCPU away for a few milliseconds stalls one window (on a 2-vCPU Zen 3 VM every
    // few seconds, each sending the next second to one thread). A long region is one window: a
    // stall inside it makes it long.
    const bool was_slow = g_last_window_slow.exchange(slow, std::memory_order_relaxed);
    if (slow && was_slow) {
        g_last_window_slow.store(false, std::memory_order_relaxed);
        g_stat_backoffs.fetch_add(1, std::memory_order_relaxed);
        const std::int64_t backoff = g_backoff_ns.load(std::memory_order_relaxed);
        g_single_until.store(now_ns() + backoff, std::memory_order_relaxed);
        g_backoff_ns.store(std::min<std::int64_t>(2 * backoff, 60000000000), std::memory_order_relaxed);
    } else if (!slow) {
        g_backoff_ns.store(1000000000, std::memory_order_relaxed);
    }
}

WaitStats wait_stats(bool reset) {
    const auto take = [reset](std::atomic<std::int64_t>& a) {
        return reset ? a.exchange(0, std::memory_order_relaxed) : a.load(std::memory_order_relaxed);
    };
    const std::int64_t regions = take(g_stat_regions), wait = take(g_stat_wait), thread_ns = take(g_stat_thread_ns);
    return WaitStats{regions, wait, thread_ns, take(g_stat_backoffs)};
}

double barrier_ns(int threads, int rounds) {
    if (threads < 2 || rounds < 1) return 0.0;
    Barrier bar(threads);
    std::vector<std::int64_t> times(std::size_t(threads) * std::size_t(rounds));
    const std::function<void(int, int)> job = [&](int tid, int n) {
        if (n != threads) return;  // the pool was busy: nothing to measure
        for (int i = 0; i < rounds; ++i) {
            const std::int64_t t0 = now_ns();
            bar.wait(tid);
            times[std::size_t(tid) * std::size_t(rounds) + std::size_t(i)] = now_ns() - t0;
        }
    };
    parallel_run(threads, job, "barrier_ns");
    // Each round's cost is what its slowest arrival waited: the earliest thread waits the longest.
    std::vector<std::int64_t> per_round(std::size_t(rounds), 0);
    for (int i = 0; i < rounds; ++i)
        for (int t = 0; t < threads; ++t)
            per_round[std::size_t(i)] = std::max(per_round[std::size_t(i)], times[std::size_t(t) * std::size_t(rounds) + std::size_t(i)]);
    std::nth_element(per_round.begin(), per_round.begin() + rounds / 2, per_round.end());
    return double(per_round[std::size_t(rounds / 2)]);
}

namespace {
thread_local const ForeignOmp* t_omp = nullptr;
// Set in a forked child (and inherited by its own children). libgomp cannot run a team in a
// process forked after its parent ran one: the child waits forever for the parent's workers,
// which do not exist there. Such a process runs its regions on fastrnn's pool, which resets
// itself in the child (reset_pool_in_child).
std::atomic<bool> g_forked_child{false};
const int g_omp_atfork = pthread_atfork(nullptr, nullptr, [] {
    t_omp = nullptr;
    g_forked_child.store(true);
});

struct OmpJob {
    const std::function<void(int, int)>* fn;
    const ForeignOmp* omp;
    int n;
    bool short_team;  // the runtime gave fewer threads than asked for: nobody ran the job
};

// Runs on every thread of the OpenMP team. A team of another size than asked for (thread limit,
// OMP_DYNAMIC, nested region) runs nothing: every thread sees the same size, and the job then
// runs on fastrnn's pool with the threads it was planned for.
void omp_trampoline(void* data) {
    OmpJob& job = *static_cast<OmpJob*>(data);
    const int tid = job.omp->thread_num(), size = job.omp->team_size();
    if (size == job.n)
        (*job.fn)(tid, job.n);
    else if (tid == 0)
        job.short_team = true;
}

std::int64_t run_region(int n, const std::function<void(int, int)>& fn, const char*& on) {
    if (n <= 1) {
        on = "caller";
        fn(0, 1);
        return 0;
    }
    if (t_omp) {
        OmpJob job{&fn, t_omp, n, false};
        t_omp->parallel(omp_trampoline, &job, unsigned(n), 0);
        on = "openmp";
        if (!job.short_team) return 0;  // the runtime joins its team itself
    }
    bool alone = false;
    const std::int64_t waited = pool().run(n, fn, alone);
    on = alone ? "caller" : "pool";
    return waited;
}
}  // namespace

const ForeignOmp* set_thread_omp(const ForeignOmp* omp) {
    const ForeignOmp* previous = t_omp;
    t_omp = g_forked_child.load() ? nullptr : omp;
    return previous;
}

std::int64_t parallel_run(int n, const std::function<void(int, int)>& fn, const char* what) {
    const char* on = "";
    if (!t_log.on) return run_region(n, fn, on);
    std::atomic<int> ran{0};
    const std::function<void(int, int)> counted = [&](int tid, int nt) {
        ran.fetch_add(1, std::memory_order_relaxed);
        fn(tid, nt);
    };
    const std::int64_t waited = run_region(n, counted, on);
    t_log.records.push_back(RegionRecord{what, n, ran.load(), on});
    return waited;
}

void record_regions(bool on) {
    t_log.on = on;
    if (on) t_log.records.clear();
}

std::vector<RegionRecord> recorded_regions() { return t_log.records; }

void Barrier::wait(int tid) {
    if (n_ <= 1) return;
    if (n_ <= kFlagBarrierThreads) {
        Slot& mine = slots_[tid];
        const std::uint32_t target = mine.arrived.load(std::memory_order_relaxed) + 1;
        mine.arrived.store(target, std::memory_order_release);
        const auto all_arrived = [&] {
            for (int j = 0; j < n_; ++j)  // counts only grow: a thread already past reads as arrived
                if (std::int32_t(slots_[j].arrived.load(std::memory_order_acquire) - target) < 0) return false;
            return true;
        };
        if (all_arrived()) return;
        const std::int64_t t0 = now_ns();
        spin_then_yield(all_arrived, 200);
        mine.wait_ns.store(mine.wait_ns.load(std::memory_order_relaxed) + now_ns() - t0, std::memory_order_relaxed);
        return;
    }
    const std::uint32_t phase = phase_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
        count_.store(0, std::memory_order_relaxed);
        phase_.store(phase + 1, std::memory_order_release);
        return;
    }
    const std::int64_t t0 = now_ns();
    spin_then_yield([&] { return phase_.load(std::memory_order_acquire) != phase; }, 200);
    wait_ns_.fetch_add(now_ns() - t0, std::memory_order_relaxed);
}

std::int64_t Barrier::wait_ns() const {
    std::int64_t sum = wait_ns_.load(std::memory_order_relaxed);
    for (int i = 0; i < used_slots(); ++i) sum += slots_[i].wait_ns.load(std::memory_order_relaxed);
    return sum;
}

}  // namespace fastrnn
