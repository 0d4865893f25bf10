// CUDA streams and events, and the one place CUDA errors become pagedllm::Error.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <memory>

#include "pagedllm/error.h"
#include "pagedllm/stream.h"

namespace pagedllm {

// Throws ERR_CUDA (ERR_OUT_OF_MEMORY for cudaErrorMemoryAllocation) naming the call.
void cuda_check(cudaError_t status, const char* what, const char* file, int line);
#define PAGEDLLM_CUDA_CHECK(call) ::pagedllm::cuda_check((call), #call, __FILE__, __LINE__)

class CudaEvent final : public Event {
 public:
  explicit CudaEvent(int device_index);
  ~CudaEvent() override;
  Device device() const override { return Device{DeviceKind::Cuda, device_index_}; }
  bool query() override;
  void synchronize() override;
  cudaEvent_t handle() const { return event_; }

 private:
  int device_index_;
  cudaEvent_t event_ = nullptr;
};

class CudaStream final : public Stream {
 public:
  explicit CudaStream(int device_index);
  ~CudaStream() override;
  Device device() const override { return Device{DeviceKind::Cuda, device_index_}; }
  void enqueue_host(std::function<void()> fn) override;
  std::shared_ptr<Event> record() override;
  void wait(const std::shared_ptr<Event>& event) override;
  void synchronize() override;
  std::exception_ptr take_error() override;
  cudaStream_t handle() const { return stream_; }
  // Makes this stream's device current on the calling thread.
  void activate() const;

 private:
  int device_index_;
  cudaStream_t stream_ = nullptr;
};

CudaStream& as_cuda_stream(Stream& stream);

// cudaDeviceGetAttribute(A, device), read once per device (devices 0-63; any other, every time).
template <cudaDeviceAttr A>
int device_attribute(int device) {
  static std::atomic<int> cached[64];
  const bool cacheable = device >= 0 && device < 64;
  if (cacheable) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known) return known;
  }
  int value = 0;
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&value, A, device));
  if (cacheable) cached[device].store(value, std::memory_order_relaxed);
  return value;
}

}  // namespace pagedllm
