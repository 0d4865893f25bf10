// What the native kernel benchmarks share: device buffers from the default
// resource, medians, CUDA error checks, and the memory bandwidth each benchmark
// measures in its own run (CPU: a multi-threaded read of 1 GiB allocated like
// the operands, best of the repetitions; CUDA: a device-to-device copy counted
// as bytes read + written, median).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "pagedllm/memory_resource.h"
#include "pagedllm/stream.h"
#include "../../cpu/thread_pool.h"

#if PAGEDLLM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "../../cuda/cuda_stream.h"
#endif

namespace pagedllm::bench {

// Device memory from the default resource, released stream-ordered.
struct Buffer {
  Buffer(size_t n, std::shared_ptr<Stream> s) : bytes(std::max<size_t>(n, 1)), stream(std::move(s)) {
    ptr = default_memory_resource(stream->device())->allocate(bytes, *stream, Category::Workspace);
  }
  ~Buffer() { default_memory_resource(stream->device())->deallocate(ptr, bytes, *stream, Category::Workspace); }
  Buffer(const Buffer&) = delete;
  size_t bytes;
  std::shared_ptr<Stream> stream;
  void* ptr;
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

#if PAGEDLLM_HAVE_CUDA
inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    throw std::runtime_error(what);
  }
}
#endif

// Bytes per second the memory system gives: CPU read, or CUDA device-to-device copy (read + write).
inline double measure_bandwidth(const std::shared_ptr<Stream>& stream, int reps) {
  const size_t bytes = size_t(1) << 30;
  if (stream->device().is_cpu()) {
    // Read bandwidth: every pool thread sums its share of a buffer much larger than the caches,
    // allocated like the caches are (the host resource: 2 MiB-aligned, huge pages where the OS
    // gives them). The best of the repetitions: a conservative reference for the fractions.
    Buffer buffer(bytes, stream);
    float* data = static_cast<float*>(buffer.ptr);
    const int64_t n = static_cast<int64_t>(bytes / 4);
    ThreadPool& pool = ThreadPool::global();
    pool.parallel_for(n, 1 << 20, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) data[i] = static_cast<float>(i & 1023);
    });
    std::vector<double> times;
    volatile float sink = 0;
    for (int r = 0; r < reps; ++r) {
      const int64_t parts = pool.size();
      std::vector<float> sums(parts * 16, 0.0f);
      const auto t0 = std::chrono::steady_clock::now();
      pool.parallel_for(parts, 1, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const int64_t lo = n * p / parts, hi = n * (p + 1) / parts;
          float acc[16] = {};
          for (int64_t i = lo; i + 16 <= hi; i += 16)
            for (int k = 0; k < 16; ++k) acc[k] += data[i + k];
          for (int k = 0; k < 16; ++k) sums[p * 16 + k] = acc[k];
        }
      });
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      sink = sink + std::accumulate(sums.begin(), sums.end(), 0.0f);
    }
    return bytes / *std::min_element(times.begin(), times.end());
  }
#if PAGEDLLM_HAVE_CUDA
  Buffer a(bytes, stream), b(bytes, stream);
  cuda_ok(cudaMemsetAsync(a.ptr, 0x5a, bytes, as_cuda_stream(*stream).handle()), "cudaMemsetAsync");
  cudaStream_t s = as_cuda_stream(*stream).handle();
  cudaEvent_t e0, e1;
  cuda_ok(cudaEventCreate(&e0), "cudaEventCreate");
  cuda_ok(cudaEventCreate(&e1), "cudaEventCreate");
  std::vector<double> times;
  for (int r = 0; r < reps + 2; ++r) {
    cuda_ok(cudaEventRecord(e0, s), "cudaEventRecord");
    cuda_ok(cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
    cuda_ok(cudaEventRecord(e1, s), "cudaEventRecord");
    cuda_ok(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float ms = 0;
    cuda_ok(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    if (r >= 2) times.push_back(ms / 1e3);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * bytes / median(times);
#else
  return 0;
#endif
}

}  // namespace pagedllm::bench
