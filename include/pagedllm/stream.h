// Streams and events (DESIGN.md §2). Work is stream-ordered on both backends:
// everything enqueued on one stream runs in order; an event recorded on one
// stream and waited on by another orders work across them.
//
// - A CPU stream is a native worker thread running its queue in order.
// - A CUDA stream is a CUDA stream (non-blocking w.r.t. the legacy stream).
//
// Enqueuing never blocks the caller. A failure inside queued CPU work is kept
// (the first one) and reported by the next synchronisation point; a CUDA
// failure is reported by CUDA at the next call that checks.
#pragma once

#include <functional>
#include <memory>

#include "pagedllm/device.h"

namespace pagedllm {

class Event {
 public:
  virtual ~Event() = default;
  virtual Device device() const = 0;
  // True once all work enqueued before the record has completed.
  virtual bool query() = 0;
  // Blocks the calling thread until query() is true; throws a recorded failure.
  virtual void synchronize() = 0;
};

// Streams are always owned by shared_ptr (create_stream, default_stream): the
// pool keeps the streams it holds free memory for alive.
class Stream : public std::enable_shared_from_this<Stream> {
 public:
  virtual ~Stream() = default;
  virtual Device device() const = 0;

  // Runs `fn` on a host thread once all work enqueued before it has completed.
  // CPU: on the stream's worker, in order with the stream's ops.
  // CUDA: on the driver's callback thread; `fn` must not call CUDA.
  // `fn` must not throw.
  virtual void enqueue_host(std::function<void()> fn) = 0;

  virtual std::shared_ptr<Event> record() = 0;
  // Work enqueued after this waits for `event`. Throws ERR_UNSUPPORTED for a CUDA
  // stream waiting on a CPU event (it would park the driver's callback thread).
  virtual void wait(const std::shared_ptr<Event>& event) = 0;

  // Blocks until all enqueued work has completed; throws (once) the first
  // failure of queued work since the last synchronisation.
  virtual void synchronize() = 0;

  // Returns and clears the first failure of queued work, or nullptr.
  virtual std::exception_ptr take_error() = 0;
};

// A new stream on `device` (a worker thread for the CPU).
std::shared_ptr<Stream> create_stream(Device device);
// The process-wide default stream of `device`, created on first use.
std::shared_ptr<Stream> default_stream(Device device);

}  // namespace pagedllm
