// ThreadPool: a queue of parallel_for jobs; each job hands out chunks through
// an atomic counter, workers and the caller take chunks until none are left.
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
  std::condition_variable work_ready;  // workers wait here for jobs
  std::condition_variable job_done;    // callers wait here for their job's last chunk
  std::deque<std::shared_ptr<Job>> jobs;
  std::vector<std::thread> workers;
  bool stopping = false;

  void worker_loop() {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      work_ready.wait(lock, [&] { return stopping || !jobs.empty(); });
      if (stopping) return;
      std::shared_ptr<Job> job = jobs.front();
      if (job->next.load(std::memory_order_relaxed) >= job->chunks) {  // handed out: drop it from the queue
        jobs.pop_front();
        continue;
      }
      lock.unlock();
      const bool last = job->work();
      lock.lock();
      if (last) job_done.notify_all();
    }
  }
};

int default_thread_count() {
  if (const char* env = std::getenv("PAGEDLLM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n > 1024 ? 1024 : n;
  }
  const int physical = cpu_info().physical_cores;
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
  }
  if (chunks == 2) impl_->work_ready.notify_one();
  else impl_->work_ready.notify_all();
  job->work();
  {
    std::unique_lock<std::mutex> lock(impl_->mutex);
    impl_->job_done.wait(lock, [&] { return job->done.load(std::memory_order_acquire) == job->chunks; });
    for (auto it = impl_->jobs.begin(); it != impl_->jobs.end(); ++it)
      if (*it == job) {
        impl_->jobs.erase(it);
        break;
      }
  }
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace pagedllm
