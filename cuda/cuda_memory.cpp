// CUDA memory resources: `cuda` (cudaMalloc), `cuda-async` (a driver memory
// pool of our own, stream-ordered by the driver) and `pinned-host`
// (cudaHostAlloc, with a pageable fallback).
#include <cuda_runtime_api.h>

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "../cpu/cpu_stream.h"
#include "cuda_stream.h"
#include "pagedllm/memory_resource.h"

namespace pagedllm {

void cuda_memory_info(int device_index, uint64_t* free_bytes, uint64_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) return (void)cudaGetLastError();
  size_t f = 0, t = 0;
  if (cudaSetDevice(device_index) == cudaSuccess && cudaMemGetInfo(&f, &t) == cudaSuccess) {
    *free_bytes = f;
    *total_bytes = t;
  }
  cudaGetLastError();
  cudaSetDevice(current);
}

namespace {

[[noreturn]] void throw_device_oom(MemoryResource& resource, size_t bytes, Category category) {
  cudaGetLastError();
  MemoryReport ledger;
  resource.report(ledger);
  throw OutOfMemoryError(detail::concat("out of memory: cannot allocate ", format_bytes(bytes), " (",
                                        category_name(category), ") on ", resource.device().str(), " with ",
                                        resource.kind(), "; device free ", format_bytes(ledger.device_free), " of ",
                                        format_bytes(ledger.device_total)),
                         bytes, category, ledger);
}

// ---- cuda: cudaMalloc / cudaFree ---------------------------------------------------------

class CudaMemoryResource final : public MemoryResource {
 public:
  explicit CudaMemoryResource(int device_index) : device_index_(device_index) {}
  Device device() const override { return Device{DeviceKind::Cuda, device_index_}; }
  std::string kind() const override { return "cuda"; }
  void report(MemoryReport& out) override {
    out.kind = kind();
    out.device = device();
    if (out.with_device_info) cuda_memory_info(device_index_, &out.device_free, &out.device_total);
  }

 private:
  void* do_allocate(size_t bytes, Stream& stream, Category category) override {
    as_cuda_stream(stream).activate();
    void* ptr = nullptr;
    cudaError_t status = cudaMalloc(&ptr, bytes);
    if (status == cudaErrorMemoryAllocation) throw_device_oom(*this, bytes, category);
    PAGEDLLM_CUDA_CHECK(status);
    return ptr;
  }
  // cudaFree waits for all work on the device, so it is ordered after the stream's.
  void do_deallocate(void* ptr, size_t, Stream& stream, Category) override {
    as_cuda_stream(stream).activate();
    PAGEDLLM_CUDA_CHECK(cudaFree(ptr));
  }

  int device_index_;
};

// ---- cuda-async: a driver pool of our own -------------------------------------------------

class CudaAsyncMemoryResource final : public MemoryResource {
 public:
  CudaAsyncMemoryResource(int device_index, uint64_t release_threshold)
      : device_index_(device_index), release_threshold_(release_threshold) {
    PAGEDLLM_CUDA_CHECK(cudaSetDevice(device_index));
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device_index;
    PAGEDLLM_CUDA_CHECK(cudaMemPoolCreate(&pool_, &props));
    uint64_t threshold = release_threshold;
    PAGEDLLM_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold));
  }
  ~CudaAsyncMemoryResource() override {
    if (pool_) cudaMemPoolDestroy(pool_);  // waits for outstanding frees; the pool's memory goes back
  }
  Device device() const override { return Device{DeviceKind::Cuda, device_index_}; }
  std::string kind() const override { return "cuda-async"; }
  void trim() override { PAGEDLLM_CUDA_CHECK(cudaMemPoolTrimTo(pool_, 0)); }
  void report(MemoryReport& out) override {
    out.kind = kind();
    out.device = device();
    out.release_threshold = release_threshold_;
    uint64_t reserved = 0, used = 0, reserved_high = 0, used_high = 0;
    cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved);
    cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &used);
    cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemHigh, &reserved_high);
    cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &used_high);
    out.has_pool = true;
    out.pool_reserved = reserved;
    out.pool_peak_reserved = reserved_high;
    out.pool_in_use = used;
    out.pool_peak_in_use = used_high;
    out.pool_free = reserved > used ? reserved - used : 0;
    if (out.with_device_info) cuda_memory_info(device_index_, &out.device_free, &out.device_total);
  }

 private:
  void* do_allocate(size_t bytes, Stream& stream, Category category) override {
    CudaStream& cuda = as_cuda_stream(stream);
    cuda.activate();
    void* ptr = nullptr;
    cudaError_t status = cudaMallocFromPoolAsync(&ptr, bytes, pool_, cuda.handle());
    if (status == cudaErrorMemoryAllocation) throw_device_oom(*this, bytes, category);
    PAGEDLLM_CUDA_CHECK(status);
    return ptr;
  }
  void do_deallocate(void* ptr, size_t, Stream& stream, Category) override {
    CudaStream& cuda = as_cuda_stream(stream);
    cuda.activate();
    PAGEDLLM_CUDA_CHECK(cudaFreeAsync(ptr, cuda.handle()));
  }

  int device_index_;
  uint64_t release_threshold_;
  cudaMemPool_t pool_ = nullptr;
};

// ---- pinned-host ------------------------------------------------------------------------------

// Frees pinned host memory on a thread of its own. cudaFreeHost waits for the whole device, and a
// device queue may hold a host function waiting for a CPU stream's later work (a CPU -> GPU copy
// waits for its staging to be filled; swap_blocks for the CPU stream's earlier work): run on that
// CPU stream's worker, the free would wait for the device and the device for the worker. This
// thread is part of no stream, so every stream keeps moving while it waits.
class PinnedReaper {
 public:
  static PinnedReaper& instance() {
    static PinnedReaper* reaper = new PinnedReaper;  // leaked: frees may be queued during exit
    return *reaper;
  }
  void free(void* ptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(ptr);
    }
    ready_.notify_one();
  }

 private:
  PinnedReaper() { std::thread([this] { run(); }).detach(); }
  void run() {
    for (;;) {
      void* ptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return !queue_.empty(); });
        ptr = queue_.front();
        queue_.pop_front();
      }
      if (cudaFreeHost(ptr) != cudaSuccess) cudaGetLastError();  // nobody to report to; the memory is gone either way
    }
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<void*> queue_;
};

class PinnedHostMemoryResource final : public MemoryResource {
 public:
  Device device() const override { return Device{DeviceKind::Cpu, 0}; }
  std::string kind() const override { return "pinned-host"; }
  void report(MemoryReport& out) override {
    out.kind = kind();
    out.device = device();
    if (out.with_device_info) device_memory_info(device(), &out.device_free, &out.device_total);
    std::lock_guard<std::mutex> lock(mutex_);
    out.pinned_fallback = fell_back_;
  }

 private:
  void* do_allocate(size_t bytes, Stream&, Category category) override {
    void* ptr = nullptr;
    if (cudaHostAlloc(&ptr, bytes, cudaHostAllocPortable) == cudaSuccess) return ptr;
    cudaGetLastError();
    // Pinning failed (no driver, or the locked-memory limit): pageable memory still works, only slower to copy.
    ptr = std::aligned_alloc(kAllocationAlignment, align_up(bytes));
    if (ptr == nullptr) {
      MemoryReport ledger;
      report(ledger);
      throw OutOfMemoryError(detail::concat("out of memory: cannot allocate ", format_bytes(bytes), " (",
                                            category_name(category), ") of pinned or pageable host memory"),
                             bytes, category, ledger);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    fell_back_ = true;
    pageable_.insert(ptr);
    return ptr;
  }
  void do_deallocate(void* ptr, size_t, Stream& stream, Category) override {
    bool pageable;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pageable = pageable_.erase(ptr) > 0;
    }
    if (stream.device().is_cpu()) {
      // In the CPU stream's order (after the work that uses the memory), but never on its worker.
      as_cpu_stream(stream).enqueue([ptr, pageable] { pageable ? std::free(ptr) : PinnedReaper::instance().free(ptr); });
    } else {
      stream.synchronize();  // cudaFreeHost may not run on the driver's callback thread
      if (pageable) std::free(ptr);
      else PAGEDLLM_CUDA_CHECK(cudaFreeHost(ptr));
    }
  }

  std::mutex mutex_;
  bool fell_back_ = false;
  std::unordered_set<void*> pageable_;
};

}  // namespace

MemoryResourcePtr make_cuda_resource(int device_index) { return std::make_shared<CudaMemoryResource>(device_index); }

MemoryResourcePtr make_cuda_async_resource(int device_index, uint64_t release_threshold) {
  return std::make_shared<CudaAsyncMemoryResource>(device_index, release_threshold);
}

MemoryResourcePtr make_pinned_host_resource() { return std::make_shared<PinnedHostMemoryResource>(); }

}  // namespace pagedllm
