// ThreadPool: a queue of parallel_for jobs; each job hands out chunks through
// an atomic counter, workers and the caller take chunks until none are left.
//
// Waiting spins before it sleeps (spin_until): a decode step is a hundred or so
// parallel_for calls microseconds apart, and waking a thread through a futex
// costs tens of microseconds on a VM, as much as a small GEMV. Idle workers
// spin (yielding their core between polls) for PAGEDLLM_SPIN_US (default 1 ms) after their last job, then sleep
// on a condition variable; a caller queues a job and notifies only when some
// worker sleeps, and spins for its job's last chunk before it sleeps too.
#include "thread_pool.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "pagedllm/device.h"

namespace pagedllm {

namespace {

struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, grain, chunks;
  std::atomic<int64_t> next{0};  // next chunk to hand out
  std::atomic<int64_t> done{0};  // chunks finished
  std::mutex error_mutex;
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  bool caller_sleeping = false;  // under the pool's mutex

  // Runs chunks until none are left; true when this call finished the last one.
  bool work() {
    bool finished_last = false;
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          const int64_t begin = c * grain;
          (*fn)(begin, begin + grain < n ? begin + grain : n);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          failed = true;
        }
      }
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) finished_last = true;
    }
    return finished_last;
  }
};

}  // namespace

struct ThreadPool::Impl {
  std::mutex mutex;
  std::condition_variable work_ready;  // sleeping workers wait here for jobs
  std::condition_variable job_done;    // callers that stopped spinning wait here for their job's last chunk
  std::deque<std::shared_ptr<Job>> jobs;
  std::atomic<uint64_t> posted{0};     // bumped (under `mutex`) each time a job is queued
  int sleepers = 0;                    // workers waiting on work_ready (under `mutex`)
  std::vector<std::thread> workers;
  bool stopping = false;

  // The front job with chunks left (dropping handed-out ones); null if none. Under `mutex`.
  std::shared_ptr<Job> take() {
    while (!jobs.empty()) {
      if (jobs.front()->next.load(std::memory_order_relaxed) < jobs.front()->chunks) return jobs.front();
      jobs.pop_front();
    }
    return nullptr;
  }

  void finished(Job& job) {
    std::lock_guard<std::mutex> lock(mutex);
    if (job.caller_sleeping) job_done.notify_all();
  }

  void worker_loop() {
    bool spun_out = false;
    for (;;) {
      std::shared_ptr<Job> job;
      uint64_t seen;
      {
        std::unique_lock<std::mutex> lock(mutex);
        for (;;) {
          if (stopping) return;
          job = take();
          seen = posted.load(std::memory_order_relaxed);
          if (job || !spun_out) break;
          ++sleepers;
          work_ready.wait(lock, [&] { return stopping || posted.load(std::memory_order_relaxed) != seen; });
          --sleepers;
          spun_out = false;
        }
      }
      if (job) {
        if (job->work()) finished(*job);
        continue;
      }
      spun_out = !spin_until([&] { return posted.load(std::memory_order_acquire) != seen; });
    }
  }
};

int spin_microseconds() {
  static const int us = [] {
    const char* env = std::getenv("PAGEDLLM_SPIN_US");
    const int v = env && *env ? std::atoi(env) : 1000;
    return v < 0 ? 0 : v > 100000 ? 100000 : v;
  }();
  return us;
}

int default_thread_count() { return thread_count_for(cpu_info().physical_cores); }

int thread_count_for(int physical) {
  if (const char* env = std::getenv("PAGEDLLM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n > 1024 ? 1024 : n;
  }
  return physical > 0 ? physical : static_cast<int>(std::thread::hardware_concurrency() ? std::thread::hardware_concurrency() : 1);
}

ThreadPool& ThreadPool::global() {
  // Leaked on purpose: workers must outlive every static destructor that might run an op.
  static ThreadPool* pool = new ThreadPool(default_thread_count());
  return *pool;
}

ThreadPool::ThreadPool(int threads) : impl_(new Impl) {
  for (int i = 1; i < threads; ++i) impl_->workers.emplace_back([this] { impl_->worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->work_ready.notify_all();
  for (auto& t : impl_->workers) t.join();
  delete impl_;
}

int ThreadPool::size() const { return static_cast<int>(impl_->workers.size()) + 1; }

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t chunks = (n + grain - 1) / grain;
  if (chunks == 1 || impl_->workers.empty()) {
    for (int64_t b = 0; b < n; b += grain) fn(b, b + grain < n ? b + grain : n);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->grain = grain;
  job->chunks = chunks;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->jobs.push_back(job);
    impl_->posted.fetch_add(1, std::memory_order_release);
    // Spinning workers see `posted` move; only sleeping ones need the (costly) wake.
    if (impl_->sleepers > 0) {
      if (chunks == 2) impl_->work_ready.notify_one();
      else impl_->work_ready.notify_all();
    }
  }
  job->work();
  auto all_done = [&] { return job->done.load(std::memory_order_acquire) == job->chunks; };
  const bool done = spin_until(all_done);
  {
    std::unique_lock<std::mutex> lock(impl_->mutex);
    if (!done) {
      job->caller_sleeping = true;
      impl_->job_done.wait(lock, all_done);
    }
    for (auto it = impl_->jobs.begin(); it != impl_->jobs.end(); ++it)
      if (*it == job) {
        impl_->jobs.erase(it);
        break;
      }
  }
  if (job->error) std::rethrow_exception(job->error);
}

void ThreadPool::parallel_ranges(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(size(), n);
  if (parts == 1 || n >= (int64_t(1) << 31)) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // Range p: items [front, back), packed as front << 32 | back so that one compare-and-swap takes
  // an item from either end. One cache line each: the owners update them on every item.
  struct alignas(64) Range {
    std::atomic<uint64_t> ends;
  };
  std::unique_ptr<Range[]> ranges(new Range[parts]);
  for (int64_t p = 0; p < parts; ++p)
    ranges[p].ends.store(static_cast<uint64_t>(n * p / parts) << 32 | static_cast<uint64_t>(n * (p + 1) / parts), std::memory_order_relaxed);
  auto take = [&](int64_t p, bool from_front) -> int64_t {
    std::atomic<uint64_t>& ends = ranges[p].ends;
    uint64_t v = ends.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t front = v >> 32, back = v & 0xFFFFFFFFu;
      if (front >= back) return -1;
      const uint64_t next = from_front ? (front + 1) << 32 | back : front << 32 | (back - 1);
      if (ends.compare_exchange_weak(v, next, std::memory_order_relaxed)) return static_cast<int64_t>(from_front ? front : back - 1);
    }
  };
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t i; (i = take(p, true)) >= 0;) fn(i);
      for (;;) {  // steal from the back of the range with most left
        int64_t victim = -1;
        uint64_t most = 0;
        for (int64_t q = 0; q < parts; ++q) {
          const uint64_t v = ranges[q].ends.load(std::memory_order_relaxed), front = v >> 32, back = v & 0xFFFFFFFFu;
          if (back > front && back - front > most) most = back - front, victim = q;
        }
        if (victim < 0) break;
        const int64_t i = take(victim, false);
        if (i >= 0) fn(i);
      }
    }
  });
}

}  // namespace pagedllm
