// The kernels' thread pool (parallel.hpp). Baseline code: no ISA-specific instructions.
#include "parallel.hpp"

#include <pthread.h>
#include <sched.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace fastmlp {
namespace {

int default_threads() {
    if (const char* env = std::getenv("FASTMLP_NUM_THREADS")) {
        char* end = nullptr;
        const long n = std::strtol(env, &end, 10);
        if (end != env && *end == '\0' && n >= 1) return static_cast<int>(std::min(n, 1024L));
    }
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::min(1024, std::max(1, CPU_COUNT(&set)));
#endif
    return static_cast<int>(std::min(1024u, std::max(1u, std::thread::hardware_concurrency())));
}

// One parallel region: tasks are claimed from `next` by whichever thread is free.
struct Region {
    void (*fn)(void*, int) = nullptr;
    void* ctx = nullptr;
    int ntasks = 0;
    int helpers = 0;  // workers [0, helpers) may join
    unsigned csr = 0;  // the caller's floating-point control (flush-to-zero, rounding): the workers' too
    std::atomic<int> next{0};
    std::atomic<int> done{0};
    std::exception_ptr error;
    std::mutex error_mutex;

    void work() {
        for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < ntasks;) {
            try {
                fn(ctx, i);
            } catch (...) {
                std::lock_guard<std::mutex> g(error_mutex);
                if (!error) error = std::current_exception();
            }
            done.fetch_add(1, std::memory_order_release);
        }
    }
};

// Spin (with pause) while cond() holds, for about `spin` at most (the clock read every 64 pauses);
// returns whether it still holds. A wait that ends within the spin (the usual case: the other
// thread is running) costs no system call; after it, the caller gives its core away.
template <typename Cond>
bool spin_while(Cond&& cond, std::chrono::microseconds spin) {
    using clock = std::chrono::steady_clock;
    auto until = clock::time_point::min();
    for (int i = 0; cond(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if ((i & 63) != 63) continue;
        const auto now = clock::now();
        if (until == clock::time_point::min()) {
            until = now + spin;
        } else if (now >= until) {
            return cond();
        }
    }
    return false;
}

// Spin, then yield the core between checks (the other core taken by another process).
template <typename Cond>
void spin_then_yield(Cond&& cond) {
    if (spin_while(cond, std::chrono::microseconds(50)))
        while (cond()) std::this_thread::yield();
}

class Pool {
public:
    int threads() const { return threads_.load(std::memory_order_relaxed); }
    void set_threads(int n) { threads_.store(std::max(1, n), std::memory_order_relaxed); }

    // Returns false (having run nothing) when another region holds the pool, the caller's own
    // included (a task that starts a region runs it serially).
    //
    // The hand-off takes no lock while the workers spin: the region is published through region_
    // and generation_, a worker announces itself in inside_ before it reads region_, and the caller
    // clears region_ before it waits for inside_ to reach 0 (all sequentially consistent, so that
    // one of the two sees the other's store). Sleeping workers are woken through the condition
    // variable, only when some are asleep.
    bool run(int ntasks, void (*fn)(void*, int), void* ctx) {
        thread_local bool calling = false;  // this thread is the caller of a running region
        if (calling) return false;
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (!busy.owns_lock()) return false;
        calling = true;
        struct Reset {
            bool& flag;
            ~Reset() { flag = false; }
        } reset{calling};
        const int helpers = std::min(ntasks, threads()) - 1;
        ensure_workers(helpers);
        Region region;
        region.fn = fn;
        region.ctx = ctx;
        region.ntasks = ntasks;
        region.helpers = helpers;
#if defined(__SSE__)
        region.csr = _mm_getcsr();
#endif
        region_.store(&region);
        generation_.fetch_add(1);
        if (sleepers_.load() > 0) {
            std::lock_guard<std::mutex> g(mutex_);  // a worker between its check and its wait sees the new generation
            wake_.notify_all();
        }
        // Tasks go to whichever thread is free, so a worker that is slow to wake (the other core
        // busy) costs nothing: the caller takes its tasks.
        region.work();
        spin_then_yield([&] { return region.done.load(std::memory_order_acquire) < ntasks; });
        region_.store(nullptr);  // no worker joins from now on
        spin_then_yield([&] { return inside_.load() > 0; });
        if (region.error) std::rethrow_exception(region.error);
        return true;
    }

    // After fork() only the forking thread exists in the child: forget the workers (never joined)
    // and start new ones when needed.
    void forget_after_fork() {
        for (std::thread& t : workers_) t.detach();
        workers_.clear();
        new (&mutex_) std::mutex();
        new (&busy_) std::mutex();
        new (&wake_) std::condition_variable();
        region_.store(nullptr);
        inside_.store(0);
        sleepers_.store(0);
    }

private:
    void ensure_workers(int n) {
        while (static_cast<int>(workers_.size()) < n) {
            const int id = static_cast<int>(workers_.size());
            workers_.emplace_back([this, id] { loop(id); });
        }
    }

    void loop(int id) {
        std::uint64_t seen = generation_.load();
        for (;;) {
            // A short spin first: the next region of a training step usually starts within
            // microseconds. Then sleep until one does.
            auto same = [&] { return generation_.load(std::memory_order_acquire) == seen; };
            if (spin_while(same, std::chrono::microseconds(50))) {
                std::unique_lock<std::mutex> lock(mutex_);
                sleepers_.fetch_add(1);
                wake_.wait(lock, [&] { return generation_.load() != seen; });
                sleepers_.fetch_sub(1);
            }
            seen = generation_.load();
            inside_.fetch_add(1);
            Region* region = region_.load();
            if (region && id < region->helpers) {
#if defined(__SSE__)
                // The tasks compute as the caller would (FlushDenormals): the same bits on any thread.
                const unsigned saved = _mm_getcsr();
                _mm_setcsr(region->csr);
                region->work();
                _mm_setcsr(saved);
#else
                region->work();
#endif
            }
            inside_.fetch_sub(1, std::memory_order_release);
        }
    }

    std::atomic<int> threads_{default_threads()};
    std::vector<std::thread> workers_;  // live for the whole process
    std::mutex busy_;                   // held by the region running on the pool
    std::mutex mutex_;                  // sleeping workers wait on wake_ under it
    std::condition_variable wake_;
    alignas(64) std::atomic<std::uint64_t> generation_{0};
    std::atomic<Region*> region_{nullptr};
    alignas(64) std::atomic<int> inside_{0};  // workers that may be reading region_ or inside a region
    alignas(64) std::atomic<int> sleepers_{0};  // workers waiting on wake_
};

Pool& pool() {
    static Pool* p = [] {
        Pool* created = new Pool();  // never destroyed: its workers run until the process exits
        pthread_atfork(nullptr, nullptr, [] { pool().forget_after_fork(); });
        return created;
    }();
    return *p;
}

}  // namespace

int num_threads() { return pool().threads(); }

void set_num_threads(int n) { pool().set_threads(n); }

void parallel_for(int ntasks, void (*fn)(void*, int), void* ctx) {
    if (ntasks <= 0) return;
    if (ntasks == 1 || num_threads() == 1 || !pool().run(ntasks, fn, ctx))
        for (int i = 0; i < ntasks; ++i) fn(ctx, i);
}

struct BackgroundWorker::State {
    enum : int { kIdle, kPosted, kRunning, kDone };
    std::atomic<int> stage{kIdle};  // the job's: posted, then claimed (by the thread or the caller), then done
    std::atomic<bool> sleeping{false}, quit{false};
    std::mutex m;
    std::condition_variable cv;
    std::function<void()> job;
    std::exception_ptr error;
    std::thread thread;

    void run() {
        try {
            job();
        } catch (...) {
            error = std::current_exception();
        }
        job = nullptr;
    }

    bool posted() const { return stage.load() == kPosted || quit.load(); }

    void loop() {
        using clock = std::chrono::steady_clock;
        for (;;) {
            const auto since = clock::now();
            while (!posted()) {
                const auto waited = clock::now() - since;
                if (waited > std::chrono::microseconds(kSpinMicros)) break;
                if (waited > std::chrono::microseconds(50)) {
                    std::this_thread::yield();
                } else {
#if defined(__SSE2__)
                    _mm_pause();
#endif
                }
            }
            if (!posted()) {
                std::unique_lock<std::mutex> lock(m);
                sleeping.store(true);
                cv.wait(lock, [&] { return posted(); });
                sleeping.store(false);
            }
            int expected = kPosted;
            if (stage.compare_exchange_strong(expected, kRunning)) {
                run();
                stage.store(kDone);
            } else if (quit.load()) {
                return;
            }
        }
    }
};

BackgroundWorker::BackgroundWorker() : s_(new State) {
    s_->thread = std::thread([st = s_.get()] { st->loop(); });
}

BackgroundWorker::~BackgroundWorker() {
    int expected = State::kPosted;
    if (s_->stage.compare_exchange_strong(expected, State::kIdle)) {
        s_->job = nullptr;  // not begun: dropped
    } else {
        try {
            finish();
        } catch (...) {  // a failed job's error: nobody asked for it
        }
    }
    s_->quit.store(true);
    {
        std::lock_guard<std::mutex> lock(s_->m);
    }
    s_->cv.notify_all();
    s_->thread.join();
}

void BackgroundWorker::start(std::function<void()> job) {
    finish();
    s_->job = std::move(job);
    s_->stage.store(State::kPosted);
    if (s_->sleeping.load()) {  // seq_cst with the thread's store and check: it cannot miss the job
        std::lock_guard<std::mutex> lock(s_->m);
        s_->cv.notify_all();
    }
}

void BackgroundWorker::finish() {
    int expected = State::kPosted;
    if (s_->stage.compare_exchange_strong(expected, State::kRunning)) {
        s_->run();  // not begun: the caller runs it
    } else if (expected == State::kRunning) {
        // The thread runs it now: its last part, spinning (then yielding the core).
        for (int i = 0; s_->stage.load() != State::kDone; ++i) {
            if (i < 4096) {
#if defined(__SSE2__)
                _mm_pause();
#endif
            } else {
                std::this_thread::yield();
            }
        }
    }
    s_->stage.store(State::kIdle);
    if (s_->error) {
        std::exception_ptr err = s_->error;
        s_->error = nullptr;
        std::rethrow_exception(err);
    }
}

}  // namespace fastmlp
