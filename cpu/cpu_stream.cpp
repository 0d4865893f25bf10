#include "cpu_stream.h"

#include <map>

#include "pagedllm/error.h"
#include "thread_pool.h"

namespace pagedllm {

std::shared_ptr<Stream> create_cuda_stream(int device_index);  // cuda/cuda_stream.cpp or cpu/no_cuda.cpp

// ---- CpuEvent ---------------------------------------------------------------

bool CpuEvent::query() { return done_.load(std::memory_order_acquire); }

void CpuEvent::synchronize() {
  if (spin_until([this] { return query(); })) return;
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return query(); });
}

void CpuEvent::complete() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
}

// ---- CpuStream --------------------------------------------------------------

CpuStream::CpuStream() : worker_([this] { run(); }) {}

CpuStream::~CpuStream() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void CpuStream::enqueue(std::function<void()> task) {
  if (std::this_thread::get_id() == worker_.get_id()) {
    task();
    return;
  }
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(task));
    enqueued_.fetch_add(1, std::memory_order_release);
    wake = sleeping_;
  }
  if (wake) cv_.notify_one();  // a spinning worker sees `enqueued_` move
}

void CpuStream::run() {
  bool spun_out = false;
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (queue_.empty() && !stopping_) {
        const uint64_t seen = enqueued_.load(std::memory_order_relaxed);
        if (!spun_out) {  // poll a while first: the next op usually comes within microseconds
          lock.unlock();
          spun_out = !spin_until([&] { return enqueued_.load(std::memory_order_acquire) != seen; });
          continue;
        }
        sleeping_ = true;
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        sleeping_ = false;
      }
      spun_out = false;
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      task();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

std::shared_ptr<Event> CpuStream::record() {
  auto event = std::make_shared<CpuEvent>();
  enqueue([event] { event->complete(); });
  return event;
}

void CpuStream::wait(const std::shared_ptr<Event>& event) {
  PAGEDLLM_CHECK(event != nullptr, InvalidArgument, "wait: event is null");
  // A CUDA event's synchronize() blocks this worker (not the caller) until the
  // GPU work it marks is done, and throws a CUDA failure into this stream.
  enqueue([event] { event->synchronize(); });
}

void CpuStream::synchronize() {
  record()->synchronize();
  if (auto error = take_error()) std::rethrow_exception(error);
}

std::exception_ptr CpuStream::take_error() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::exception_ptr error = error_;
  error_ = nullptr;
  return error;
}

CpuStream& as_cpu_stream(Stream& stream) {
  auto* cpu = dynamic_cast<CpuStream*>(&stream);
  PAGEDLLM_CHECK(cpu != nullptr, InvalidArgument, "expected a CPU stream, got a stream on ", stream.device().str());
  return *cpu;
}

// ---- stream registry ----------------------------------------------------------

std::shared_ptr<Stream> create_stream(Device device) {
  if (device.is_cpu()) return std::make_shared<CpuStream>();
  return create_cuda_stream(device.index);
}

std::shared_ptr<Stream> default_stream(Device device) {
  // Leaked on purpose: default streams live until the process exits, and
  // destroying a CUDA stream or joining a worker during static destruction is
  // unsafe (the driver may already be gone).
  static std::mutex* mutex = new std::mutex;
  static auto* streams = new std::map<std::pair<int, int>, std::shared_ptr<Stream>>;
  std::lock_guard<std::mutex> lock(*mutex);
  auto key = std::make_pair(static_cast<int>(device.kind), device.index);
  auto it = streams->find(key);
  if (it != streams->end()) return it->second;
  auto stream = create_stream(device);
  (*streams)[key] = stream;
  return stream;
}

}  // namespace pagedllm
