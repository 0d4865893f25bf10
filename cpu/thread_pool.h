// The one thread pool shared by every CPU op (DESIGN.md §2; issue: CPU backend).
//
// Size: PAGEDLLM_THREADS when set (≥ 1), else the machine's physical cores.
// parallel_for runs on the calling thread too (a stream's worker), so a pool
// of N threads has N − 1 workers; calls from several streams at once share
// those workers rather than each bringing their own (no oversubscription),
// and a nested call cannot deadlock (its caller does all the work if it must).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <thread>

namespace pagedllm {

class ThreadPool {
 public:
  static ThreadPool& global();
  // Participants in a parallel_for: the workers plus the calling thread.
  int size() const;
  // Calls fn(begin, end) over [0, n) in chunks of `grain` indices, on the pool
  // and the calling thread, and returns when all are done. The first exception
  // thrown by fn is rethrown here (later chunks are skipped).
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
  // Calls fn(i) once for every i in [0, n), on the pool and the calling thread: participant p
  // walks its own contiguous range [p·n/P, (p+1)·n/P) front to back, and once it is done takes
  // items from the back of whichever range has most left. Items that are consecutive stretches of
  // memory (a GEMV's row blocks) are then read as one stream per thread — the prefetches at the end
  // of one item fetch the start of the next, which the same thread takes — where handing out items
  // in turn (parallel_for) makes every item start cold; stealing from the back keeps the balance.
  void parallel_ranges(int64_t n, const std::function<void(int64_t)>& fn);

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

 private:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  struct Impl;
  Impl* impl_;
};

// The pool size that global() uses: PAGEDLLM_THREADS, else physical cores.
int default_thread_count();
// The same for a machine of `physical_cores` (what cpu_info() reports).
int thread_count_for(int physical_cores);

// How long a thread that runs out of work polls for more before it sleeps: PAGEDLLM_SPIN_US,
// default 1000 (0: sleep at once; at most 100000).
int spin_microseconds();

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls `ready` for up to spin_microseconds(); true as soon as it holds, false if time ran out.
// Between rounds of 64 polls the thread yields its core: a spinning worker must not keep the
// thread that will hand it work (Node's main thread, between decode steps) off the CPU. With
// plain pause loops, the two compute threads of a 2-core machine spun while the engine's
// JavaScript waited for a core, and each step's first enqueue then found the workers asleep:
// 0.51-0.55 ms per token on a 1-layer model, 0.34-0.37 with the yield (the stream idle between
// forwards for most of it).
template <typename Ready>
bool spin_until(Ready&& ready) {
  if (ready()) return true;
  const auto limit = std::chrono::microseconds(spin_microseconds());
  if (limit.count() == 0) return false;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      cpu_relax();
      if (ready()) return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
    std::this_thread::yield();
  }
}

}  // namespace pagedllm
