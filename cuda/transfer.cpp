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
//  swap_blocks GPU <-> host:  cudaMemcpyAsync on the GPU stream straight to or
//                             from pinned host memory, after the CPU stream's
//                             earlier work; the CPU stream then waits for it.
//                             Pageable host memory: copy_bytes per run.
#include <cuda_runtime_api.h>

#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "../cpu/cpu_stream.h"
#include "cuda_stream.h"
#include "pagedllm/paged_kv.h"
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
    std::vector<void*> victims;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(rounded);
      if (it != free_.end() && it->first <= 2 * rounded) {
        Buffer buffer{it->second, it->first};
        cached_bytes_ -= it->first;
        free_.erase(it);
        return buffer;
      }
      const size_t keep = kMaxCachedBytes > rounded ? kMaxCachedBytes - rounded : 0;
      while (cached_bytes_ > keep && !free_.empty()) {
        auto last = std::prev(free_.end());
        victims.push_back(last->second);
        cached_bytes_ -= last->first;
        free_.erase(last);
      }
    }
    // Outside the lock: cudaFreeHost waits for the device, and host functions queued before it
    // (release() of earlier transfers) take the lock. Freeing under it deadlocked the first GPU
    // run of the native tests (H200, 2026-12-04) once large cases had filled the cache.
    for (void* ptr : victims) cudaFreeHost(ptr);
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

namespace {

// True when the driver can DMA to or from `p` without staging (cudaHostAlloc'd or registered).
bool is_pinned(const void* p) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    cudaGetLastError();  // older drivers report unregistered host memory as an error: clear it
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

// Work enqueued on `gpu` after this waits for the work already enqueued on `cpu` (parking the
// driver's callback thread only when that work is still running).
void gpu_after_cpu(CudaStream& gpu, Stream& cpu) {
  std::shared_ptr<Event> ready = cpu.record();
  if (!ready->query()) gpu.enqueue_host([ready] { ready->synchronize(); });
}

}  // namespace

void swap_blocks_cuda(const SwapRegion* regions, int64_t num_regions, const std::vector<BlockRun>& runs,
                      Stream& src_stream, Stream& dst_stream) {
  const Device from = src_stream.device(), to = dst_stream.device();
  auto each = [&](auto&& copy) {
    for (const BlockRun& run : runs)
      for (int64_t r = 0; r < num_regions; ++r) {
        const SwapRegion& g = regions[r];
        copy(static_cast<const char*>(g.src) + run.src * g.block_bytes, static_cast<char*>(g.dst) + run.dst * g.block_bytes,
             static_cast<size_t>(run.count * g.block_bytes));
      }
  };
  if (from.is_cuda() && to.is_cuda()) {  // copy_bytes_cuda orders each copy the same way
    each([&](const char* s, char* d, size_t bytes) { copy_bytes_cuda(s, src_stream, d, dst_stream, bytes); });
    return;
  }
  Stream& host = from.is_cpu() ? src_stream : dst_stream;
  bool pinned = true;
  for (int64_t r = 0; r < num_regions && pinned; ++r) pinned = is_pinned(from.is_cpu() ? regions[r].src : regions[r].dst);
  if (!pinned) {
    each([&](const char* s, char* d, size_t bytes) { copy_bytes_cuda(s, src_stream, d, dst_stream, bytes); });
    return;
  }
  CudaStream& gpu = as_cuda_stream(from.is_cpu() ? dst_stream : src_stream);
  const cudaMemcpyKind kind = from.is_cpu() ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  gpu_after_cpu(gpu, host);
  gpu.activate();
  each([&](const char* s, char* d, size_t bytes) {
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(d, s, bytes, kind, gpu.handle()));
  });
  // Swap out: the host blocks are read after the copies; swap in: they are reused after them.
  host.wait(gpu.record());
}

}  // namespace pagedllm
