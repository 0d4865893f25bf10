// Transfers that involve a GPU. Pageable host memory is never handed to
// cudaMemcpyAsync (that would block the calling thread, i.e. the event loop):
// bytes pass through pinned staging buffers, and every hop is stream-ordered.
//
//  upload   (JS bytes -> GPU): memcpy into staging now; H2D on the stream;
//                             staging returned by a host function after it.
//  download (GPU -> JS bytes): D2H into staging on the stream; a host function
//                             copies staging out, returns it, calls done().
//  GPU -> GPU tensor copy:    on the destination stream, after the source's
//                             work; the source stream then waits for the copy
//                             (the source is freed in its stream's order).
//  CPU -> GPU tensor copy:    the CPU stream fills staging in its order and
//                             marks an event; the GPU stream's host function
//                             waits for that event, then H2D follows.
//  GPU -> CPU tensor copy:    D2H into staging on the GPU stream, event; the
//                             CPU stream waits for the event, copies out.
#include <cuda_runtime_api.h>

#include <cstring>
#include <map>
#include <mutex>

#include "../cpu/cpu_stream.h"
#include "cuda_stream.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

namespace {

// Pinned staging buffers, reused. Release is safe from host functions (no CUDA
// call); allocation and trimming happen on the caller's thread.
class StagingPool {
 public:
  struct Buffer {
    void* ptr;
    size_t bytes;
  };

  Buffer acquire(size_t bytes) {
    const size_t rounded = round_up(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(rounded);
      if (it != free_.end() && it->first <= 2 * rounded) {
        Buffer buffer{it->second, it->first};
        cached_bytes_ -= it->first;
        free_.erase(it);
        return buffer;
      }
      trim_locked(kMaxCachedBytes > rounded ? kMaxCachedBytes - rounded : 0);
    }
    void* ptr = nullptr;
    PAGEDLLM_CUDA_CHECK(cudaHostAlloc(&ptr, rounded, cudaHostAllocPortable));
    return Buffer{ptr, rounded};
  }

  void release(Buffer buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace(buffer.bytes, buffer.ptr);
    cached_bytes_ += buffer.bytes;
  }

 private:
  static constexpr size_t kGranule = size_t(1) << 20;
  static constexpr size_t kMaxCachedBytes = size_t(256) << 20;
  static size_t round_up(size_t bytes) { return (bytes + kGranule - 1) / kGranule * kGranule; }

  void trim_locked(size_t keep) {
    while (cached_bytes_ > keep && !free_.empty()) {
      auto it = std::prev(free_.end());
      cudaFreeHost(it->second);
      cached_bytes_ -= it->first;
      free_.erase(it);
    }
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
};

StagingPool& staging_pool() {
  static StagingPool* pool = new StagingPool;  // leaked: host functions may run during exit
  return *pool;
}

}  // namespace

void upload_cuda(const void* host, void* dst, size_t bytes, Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  StagingPool::Buffer staging = staging_pool().acquire(bytes);
  std::memcpy(staging.ptr, host, bytes);
  try {
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(dst, staging.ptr, bytes, cudaMemcpyHostToDevice, cuda.handle()));
    cuda.enqueue_host([staging] { staging_pool().release(staging); });
  } catch (...) {
    cudaStreamSynchronize(cuda.handle());
    staging_pool().release(staging);
    throw;
  }
}

void download_cuda(const void* src, void* host, size_t bytes, Stream& stream, std::function<void()> done) {
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  if (bytes == 0) return cuda.enqueue_host(std::move(done));
  StagingPool::Buffer staging = staging_pool().acquire(bytes);
  try {
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(staging.ptr, src, bytes, cudaMemcpyDeviceToHost, cuda.handle()));
    cuda.enqueue_host([staging, host, bytes, done = std::move(done)] {
      std::memcpy(host, staging.ptr, bytes);
      staging_pool().release(staging);
      done();
    });
  } catch (...) {
    cudaStreamSynchronize(cuda.handle());
    staging_pool().release(staging);
    throw;
  }
}

void copy_bytes_cuda(const void* src, Stream& src_stream, void* dst, Stream& dst_stream, size_t bytes) {
  const Device from = src_stream.device(), to = dst_stream.device();
  if (from.is_cuda() && to.is_cuda()) {
    CudaStream& d = as_cuda_stream(dst_stream);
    if (&src_stream != &dst_stream) d.wait(src_stream.record());
    d.activate();
    if (from.index == to.index)
      PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, d.handle()));
    else
      PAGEDLLM_CUDA_CHECK(cudaMemcpyPeerAsync(dst, to.index, src, from.index, bytes, d.handle()));
    // The source's memory is freed in its own stream's order: keep that after the copy.
    if (&src_stream != &dst_stream) src_stream.wait(d.record());
    return;
  }
  StagingPool::Buffer staging = staging_pool().acquire(bytes);
  if (from.is_cpu()) {  // CPU -> GPU
    CpuStream& s = as_cpu_stream(src_stream);
    CudaStream& d = as_cuda_stream(dst_stream);
    auto filled = std::make_shared<CpuEvent>();
    // Filling staging on the CPU stream keeps it ordered before a later free of `src` there.
    s.enqueue([src, staging, bytes, filled] {
      std::memcpy(staging.ptr, src, bytes);
      filled->complete();
    });
    d.activate();
    // Parks the driver's callback thread only until the CPU stream reaches `filled`.
    d.enqueue_host([filled] { filled->synchronize(); });
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(dst, staging.ptr, bytes, cudaMemcpyHostToDevice, d.handle()));
    d.enqueue_host([staging] { staging_pool().release(staging); });
  } else {  // GPU -> CPU
    CudaStream& s = as_cuda_stream(src_stream);
    CpuStream& d = as_cpu_stream(dst_stream);
    s.activate();
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(staging.ptr, src, bytes, cudaMemcpyDeviceToHost, s.handle()));
    std::shared_ptr<Event> copied = s.record();
    d.enqueue([copied, staging, dst, bytes] {
      try {
        copied->synchronize();
      } catch (...) {
        staging_pool().release(staging);
        throw;
      }
      std::memcpy(dst, staging.ptr, bytes);
      staging_pool().release(staging);
    });
  }
}

}  // namespace pagedllm
