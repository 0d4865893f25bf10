// The CPU stream: one worker thread running its queue in order (DESIGN.md §2).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "pagedllm/stream.h"

namespace pagedllm {

class CpuEvent final : public Event {
 public:
  Device device() const override { return Device{DeviceKind::Cpu, 0}; }
  bool query() override;
  void synchronize() override;  // never throws: a CPU event carries no failure
  void complete();

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::atomic<bool> done_{false};
};

class CpuStream final : public Stream {
 public:
  CpuStream();
  ~CpuStream() override;  // runs what is queued, then joins the worker
  CpuStream(const CpuStream&) = delete;
  CpuStream& operator=(const CpuStream&) = delete;

  Device device() const override { return Device{DeviceKind::Cpu, 0}; }
  // Queues `task`; an exception it throws is kept as the stream's failure. Called from a task of
  // this stream (on its worker), runs `task` at once instead: it comes next in stream order, and a
  // task that issues ops (the CPU decoder step) runs them without a queue round trip each; an
  // exception then propagates to the enclosing task.
  void enqueue(std::function<void()> task);
  void enqueue_host(std::function<void()> fn) override { enqueue(std::move(fn)); }
  std::shared_ptr<Event> record() override;
  void wait(const std::shared_ptr<Event>& event) override;
  void synchronize() override;
  std::exception_ptr take_error() override;

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::atomic<uint64_t> enqueued_{0};  // bumped (under mutex_) by each enqueue
  bool sleeping_ = false;              // the worker waits on cv_ (under mutex_)
  bool stopping_ = false;
  std::exception_ptr error_;
  std::thread worker_;
};

// The CPU stream behind `stream`; throws ERR_INVALID_ARGUMENT if it is not one.
CpuStream& as_cpu_stream(Stream& stream);

}  // namespace pagedllm
