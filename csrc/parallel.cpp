// The kernels' thread pool (parallel.hpp). Baseline code: no ISA-specific instructions.
#include "parallel.hpp"

#include <pthread.h>
#include <sched.h>

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

class Pool {
public:
    int threads() const { return threads_.load(std::memory_order_relaxed); }
    void set_threads(int n) { threads_.store(std::max(1, n), std::memory_order_relaxed); }

    // Returns false (having run nothing) when another region holds the pool, the caller's own
    // included (a task that starts a region runs it serially).
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
        {
            std::lock_guard<std::mutex> g(mutex_);
            region_ = &region;
            active_ = helpers;
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        // Tasks go to whichever thread is free, so a worker that is slow to wake (the other core
        // busy) costs nothing: the caller takes its tasks.
        region.work();
        while (region.done.load(std::memory_order_acquire) < ntasks) std::this_thread::yield();
        {
            std::lock_guard<std::mutex> g(mutex_);
            region_ = nullptr;  // no worker joins from now on
        }
        while (inside_.load(std::memory_order_acquire) > 0) std::this_thread::yield();
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
        region_ = nullptr;
        inside_.store(0);
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
            // A short spin first: the next region of a training step usually starts within microseconds.
            const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
            while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < spin_until) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            }
            Region* region = nullptr;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load() != seen; });
                seen = generation_.load();
                if (region_ && id < active_) {
                    region = region_;
                    inside_.fetch_add(1, std::memory_order_relaxed);
                }
            }
            if (region) {
                region->work();
                inside_.fetch_sub(1, std::memory_order_release);
            }
        }
    }

    std::atomic<int> threads_{default_threads()};
    std::vector<std::thread> workers_;  // live for the whole process
    std::mutex busy_;                   // held by the region running on the pool
    std::mutex mutex_;                  // guards region_, active_ and changes of generation_
    std::condition_variable wake_;
    std::atomic<std::uint64_t> generation_{0};
    Region* region_ = nullptr;
    int active_ = 0;              // workers [0, active_) join the current region
    std::atomic<int> inside_{0};  // workers inside the current region
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

}  // namespace fastmlp
