// Memory resources, modelled on RMM's device_memory_resource (DESIGN.md §3).
//
// Stream contract:
//  - memory returned by allocate(bytes, stream) is usable by work enqueued on
//    `stream` at once;
//  - deallocate(ptr, bytes, stream) is ordered after all work already enqueued
//    on `stream`: the caller may release memory that queued work still reads.
//    Work on other streams must be ordered before the release by the caller
//    (record an event there and make `stream` wait on it).
//  - allocations are 256-byte aligned; zero bytes gives nullptr.
//  - failure to allocate throws Error(ErrorCode::OutOfMemory).
#pragma once

#include <cstddef>

#include "pagedllm/device.h"
#include "pagedllm/stream.h"

namespace pagedllm {

constexpr size_t kAllocationAlignment = 256;

class MemoryResource {
 public:
  virtual ~MemoryResource() = default;

  void* allocate(size_t bytes, Stream& stream) { return bytes == 0 ? nullptr : do_allocate(bytes, stream); }
  void deallocate(void* ptr, size_t bytes, Stream& stream) {
    if (ptr != nullptr) do_deallocate(ptr, bytes, stream);
  }
  virtual Device device() const = 0;

 private:
  virtual void* do_allocate(size_t bytes, Stream& stream) = 0;
  virtual void do_deallocate(void* ptr, size_t bytes, Stream& stream) = 0;
};

// Aligned host memory; deallocation is enqueued on the (CPU) stream.
MemoryResource& host_memory_resource();
// cudaMallocAsync / cudaFreeAsync on the device's default memory pool.
// Throws ERR_UNSUPPORTED when built without CUDA.
MemoryResource& cuda_async_memory_resource(int device_index);
// The resource tensors of `device` use by default.
MemoryResource& default_memory_resource(Device device);

}  // namespace pagedllm
