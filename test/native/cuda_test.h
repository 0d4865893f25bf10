// What the CUDA tests share: the skip when no usable device exists, the device's
// default stream, and device memory (from the default resource, freed
// stream-ordered) with host copies in and out.
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "harness.h"
#include "pagedllm/device.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/tensor_ops.h"

namespace test {

inline void require_cuda() {
  static const pagedllm::CudaInfo info = pagedllm::cuda_info();
  if (!info.available) SKIP("no CUDA device: ", info.reason);
}

inline std::shared_ptr<pagedllm::Stream> gpu() { return pagedllm::default_stream(pagedllm::Device{pagedllm::DeviceKind::Cuda, 0}); }

struct DeviceBuffer {
  // `n` uninitialised bytes.
  explicit DeviceBuffer(size_t n, std::shared_ptr<pagedllm::Stream> s = gpu()) : bytes(n), stream(std::move(s)) {
    ptr = pagedllm::default_memory_resource(stream->device())->allocate(std::max<size_t>(bytes, 1), *stream);
  }
  // A copy of `n` host bytes.
  DeviceBuffer(const void* host, size_t n, std::shared_ptr<pagedllm::Stream> s = gpu()) : DeviceBuffer(n, std::move(s)) {
    if (bytes) pagedllm::upload(host, ptr, bytes, *stream);
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& v) : DeviceBuffer(v.data(), v.size() * sizeof(T)) {}
  ~DeviceBuffer() { pagedllm::default_memory_resource(stream->device())->deallocate(ptr, std::max<size_t>(bytes, 1), *stream); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // The pointer, or null for an empty buffer (optional kernel arguments).
  template <typename T>
  T* get() const { return bytes ? static_cast<T*>(ptr) : nullptr; }
  // `n` bytes into `host` after all queued work.
  void read(void* host, size_t n) const {
    pagedllm::download(ptr, host, n, *stream, [] {});
    stream->synchronize();
  }
  std::vector<unsigned char> to_host() const {
    std::vector<unsigned char> host(bytes);
    read(host.data(), host.size());
    return host;
  }

  size_t bytes;
  std::shared_ptr<pagedllm::Stream> stream;
  void* ptr;
};

}  // namespace test
