// The kernels' thread pool: a fixed set of persistent workers that run the tasks of one parallel
// region at a time.
//
// Determinism contract: callers split work into tasks whose outputs are disjoint and whose results
// do not depend on which thread runs them or how many threads there are (output tiles, never a
// split reduction). The pool then only changes speed, never bits: a region that finds the pool busy
// (another engine training in another thread) or the pool set to one thread simply runs its tasks
// in the calling thread.
//
// Waiting: a worker spins for a few microseconds after a region (the next one usually follows at
// once), then sleeps on a condition variable, so that an idle pool never holds a core that another
// process needs.
#pragma once

#include <functional>
#include <memory>
#include <type_traits>

namespace fastmlp {

// Threads the kernels use (the caller included): FASTMLP_NUM_THREADS when set, otherwise the CPUs
// this process may run on; at most 1024.
int num_threads();
// Set the count (>= 1); takes effect at the next parallel region.
void set_num_threads(int n);

// Run fn(ctx, i) for every i in [0, ntasks), on up to min(ntasks, num_threads()) threads, the caller
// included; returns when all are done. An exception thrown by a task is rethrown here (the first
// one); the other tasks still run to completion.
void parallel_for(int ntasks, void (*fn)(void* ctx, int task), void* ctx);

// The same with a callable: parallel_for(n, [&](int i) { ... }).
template <typename F>
inline void parallel_for(int ntasks, F&& f) {
    using Fn = std::remove_reference_t<F>;
    if (ntasks == 1) {
        f(0);
        return;
    }
    parallel_for(ntasks, [](void* ctx, int i) { (*static_cast<Fn*>(ctx))(i); },
                 const_cast<void*>(static_cast<const void*>(&f)));
}

// One background thread for work that overlaps the caller's own (train_epochs makes the next
// epoch's shuffled rows on it while the current epoch trains). start(job) posts a job and returns
// at once; finish() returns once it is done, and rethrows its exception: a job the thread has not
// begun (its core busy with another process, say) is taken back and run by the caller, so the
// caller never waits for a thread that is not running. Between jobs the thread polls for up to
// kSpinMicros (pausing, then yielding the core), so that a job posted soon after needs no system
// call to wake it, then sleeps on a condition variable. One job at a time (start finishes the
// previous one first); not for use from several threads. The destructor drops a job not begun,
// waits for one in progress, and joins the thread.
class BackgroundWorker {
public:
    static constexpr int kSpinMicros = 500;

    BackgroundWorker();
    ~BackgroundWorker();
    BackgroundWorker(const BackgroundWorker&) = delete;
    BackgroundWorker& operator=(const BackgroundWorker&) = delete;

    void start(std::function<void()> job);
    void finish();

private:
    struct State;
    std::unique_ptr<State> s_;
};

}  // namespace fastmlp
