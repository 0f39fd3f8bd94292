// ThreadSanitizer driver for csrc/parallel.cpp, built and run by .ci/sanitize:
//   g++ -std=c++17 -O1 -g -fsanitize=thread -Icsrc tests/native/threads_tsan.cpp csrc/parallel.cpp -pthread
// The pool's regions (disjoint outputs, an exception, thread-count changes, regions back to back
// and after the workers fell asleep) and the BackgroundWorker's hand-offs (a job the thread runs, a
// job the caller takes back before the thread begins it, a job's exception, a job dropped or
// finished by the destructor) must show no data race, and compute the expected sums.
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>

#include "parallel.hpp"

using namespace fastmlp;

namespace {

void busy(int micros) {
    const auto t = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t < std::chrono::microseconds(micros)) {
    }
}

bool check(bool ok, const char* what) {
    if (!ok) std::printf("FAILED: %s\n", what);
    return ok;
}

bool pool() {
    bool ok = true;
    std::vector<long> out(64);
    for (int round = 0; round < 300; ++round) {
        set_num_threads(1 + round % 3);
        parallel_for(static_cast<int>(out.size()), [&](int i) { out[i] = long(i) * round; });
        long sum = 0;
        for (long v : out) sum += v;
        ok &= check(sum == 2016L * round, "parallel_for sums");
        if (round % 50 == 0) busy(200);  // the workers go to sleep
        if (round % 97 == 0) {
            bool thrown = false;
            try {
                parallel_for(8, [](int i) {
                    if (i == 3) throw std::runtime_error("task 3");
                });
            } catch (const std::runtime_error&) {
                thrown = true;
            }
            ok &= check(thrown, "parallel_for rethrows");
        }
    }
    set_num_threads(2);
    return ok;
}

bool worker() {
    bool ok = true;
    long total = 0, expect = 0;
    for (int round = 0; round < 20; ++round) {
        std::vector<int> buf(1000);
        BackgroundWorker w;  // after buf: destroyed first, as the engine's worker_
        for (int e = 0; e < 200; ++e) {
            const int val = e + round;
            w.start([&buf, val] {
                for (int& b : buf) b = val;
            });
            busy((e * 37 + round * 11) % 700);  // begun or not, asleep or polling
            w.finish();
            for (int b : buf) total += b;
            expect += 1000L * val;
            if (e % 50 == 7) {
                w.start([] { throw std::runtime_error("job failed"); });
                bool thrown = false;
                try {
                    w.finish();
                } catch (const std::runtime_error&) {
                    thrown = true;
                }
                ok &= check(thrown, "finish rethrows the job's exception");
            }
        }
        if (round % 3 == 0)
            w.start([&buf] {
                for (int& b : buf) b = -1;
            });  // dropped, or finished, by the destructor
    }
    return ok && check(total == expect, "BackgroundWorker results");
}

}  // namespace

int main() {
    const bool ok = pool() && worker();
    std::puts(ok ? "threads_tsan: ok" : "threads_tsan: FAILED");
    return ok ? 0 : 1;
}
