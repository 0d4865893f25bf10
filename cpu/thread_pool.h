// The one thread pool shared by every CPU op (DESIGN.md §2; issue: CPU backend).
//
// Size: PAGEDLLM_THREADS when set (≥ 1), else the machine's physical cores.
// parallel_for runs on the calling thread too (a stream's worker), so a pool
// of N threads has N − 1 workers; calls from several streams at once share
// those workers rather than each bringing their own (no oversubscription),
// and a nested call cannot deadlock (its caller does all the work if it must).
#pragma once

#include <cstdint>
#include <functional>

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

}  // namespace pagedllm
