// Memory resources, modelled on RMM's device_memory_resource (DESIGN.md §3).
//
// Stream contract (every resource, every adaptor):
//  - memory returned by allocate(bytes, stream) is usable by work enqueued on
//    `stream` at once;
//  - deallocate(ptr, bytes, stream) is ordered after all work already enqueued
//    on `stream`: the caller may release memory that queued work still reads.
//    Work on other streams must be ordered before the release by the caller
//    (record an event there and make `stream` wait on it);
//  - `bytes` passed to deallocate is the `bytes` passed to allocate;
//  - allocations are 256-byte aligned; zero bytes gives nullptr;
//  - failure to allocate throws OutOfMemoryError (ERR_OUT_OF_MEMORY) carrying a
//    ledger of what each layer knows.
//
// Unlike RMM, allocate/deallocate carry a Category so that an accounting
// adaptor can tag every allocation (weights, KV cache, activations, ...);
// resources that do not account ignore it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "pagedllm/device.h"
#include "pagedllm/error.h"
#include "pagedllm/stream.h"

namespace pagedllm {

constexpr size_t kAllocationAlignment = 256;

inline size_t align_up(size_t bytes) {
  return (bytes + kAllocationAlignment - 1) / kAllocationAlignment * kAllocationAlignment;
}

enum class Category : int32_t { Weights = 0, KvCache = 1, Activations = 2, Workspace = 3, Other = 4 };
constexpr int kNumCategories = 5;
const char* category_name(Category category);  // "weights", "kv-cache", "activations", "workspace", "other"
Category category_from_int(int32_t value);

// Counters of one category (or of all): bytes and counts of allocate/deallocate.
struct UsageCounters {
  uint64_t current_bytes = 0;
  uint64_t peak_bytes = 0;
  uint64_t total_bytes = 0;  // allocated over the lifetime
  uint64_t current_count = 0;
  uint64_t peak_count = 0;
  uint64_t total_count = 0;
};

// What a resource chain knows about itself. Each layer fills its part.
struct MemoryReport {
  std::string kind;  // top of the chain, e.g. "tracking(pool(cuda))"
  Device device;
  // Accounting adaptor.
  bool has_usage = false;
  UsageCounters total;
  std::array<UsageCounters, kNumCategories> by_category{};
  // Limit adaptor.
  uint64_t limit_bytes = 0;  // 0: no limit in the chain
  // Pool.
  bool has_pool = false;
  uint64_t pool_reserved = 0;  // held from the upstream
  uint64_t pool_peak_reserved = 0;
  uint64_t pool_in_use = 0;
  uint64_t pool_peak_in_use = 0;
  uint64_t pool_free = 0;
  uint64_t largest_free_extent = 0;
  uint64_t allocations = 0;
  uint64_t frees = 0;
  uint64_t upstream_allocations = 0;
  uint64_t upstream_frees = 0;
  uint64_t retries = 0;  // trim-and-retry after a failed allocation
  uint64_t ooms = 0;
  // Driver pool (cuda-async).
  uint64_t release_threshold = 0;
  // The device, when the resource can ask (0 otherwise), and when the caller wants it: false skips
  // the question (a /proc/meminfo read on the CPU, cudaMemGetInfo on CUDA) for a cheap report of
  // the counters.
  bool with_device_info = true;
  uint64_t device_free = 0;
  uint64_t device_total = 0;
  // Pinned host fell back to pageable memory.
  bool pinned_fallback = false;
};

class OutOfMemoryError : public Error {
 public:
  OutOfMemoryError(const std::string& message, size_t requested, Category category, MemoryReport ledger)
      : Error(ErrorCode::OutOfMemory, message), requested(requested), category(category), ledger(std::move(ledger)) {}
  size_t requested;
  Category category;
  MemoryReport ledger;  // filled by each layer the error passes through
};

class MemoryResource {
 public:
  virtual ~MemoryResource() = default;

  void* allocate(size_t bytes, Stream& stream, Category category = Category::Other) {
    return bytes == 0 ? nullptr : do_allocate(bytes, stream, category);
  }
  void deallocate(void* ptr, size_t bytes, Stream& stream, Category category = Category::Other) {
    if (ptr != nullptr) do_deallocate(ptr, bytes, stream, category);
  }

  virtual Device device() const = 0;
  virtual std::string kind() const = 0;
  // Fills what this layer (and, for adaptors, the layers below) knows.
  virtual void report(MemoryReport& out) = 0;
  // Returns cached, unused memory to the upstream / driver. Adaptors forward.
  virtual void trim() {}

 private:
  virtual void* do_allocate(size_t bytes, Stream& stream, Category category) = 0;
  virtual void do_deallocate(void* ptr, size_t bytes, Stream& stream, Category category) = 0;
};

using MemoryResourcePtr = std::shared_ptr<MemoryResource>;

// ---- resources ------------------------------------------------------------------

// Aligned host memory (aligned_alloc); the free is queued on the stream.
MemoryResourcePtr make_host_resource();
// cudaHostAlloc; falls back to pageable memory (report().pinned_fallback) when pinning fails.
MemoryResourcePtr make_pinned_host_resource();
// cudaMalloc / cudaFree (cudaFree waits for the device, which orders it after the stream).
MemoryResourcePtr make_cuda_resource(int device_index);
// cudaMallocFromPoolAsync / cudaFreeAsync on a driver pool of our own with a release threshold.
MemoryResourcePtr make_cuda_async_resource(int device_index, uint64_t release_threshold);

// Our stream-ordered pool over any upstream (pool_memory_resource.cpp).
//  - initial_bytes: reserved at construction (0: on first use);
//  - maximum_bytes: cap on what it holds from the upstream (0: no cap).
MemoryResourcePtr make_pool_resource(MemoryResourcePtr upstream, uint64_t initial_bytes, uint64_t maximum_bytes);

// ---- adaptors -------------------------------------------------------------------

// Statistics per category and in total (current, peak, total bytes and counts).
MemoryResourcePtr make_tracking_adaptor(MemoryResourcePtr upstream);
// Allocations that would take the bytes in use past `limit_bytes` throw OutOfMemoryError.
MemoryResourcePtr make_limit_adaptor(MemoryResourcePtr upstream, uint64_t limit_bytes);

// The resource tensors of `device` use unless given another:
// tracking(pool(host)) on the CPU, tracking(pool(cuda)) on a GPU. Process-wide.
MemoryResourcePtr default_memory_resource(Device device);

// An op's temporary workspace on `stream` (split-K partials, dequantized weights), category
// workspace: from default_memory_resource(stream.device()), except while a CUDA graph of a decode
// step is being captured on this thread (cuda/decoder_graph.cpp), when it comes from the graph
// runner's arena. Freed in reverse order of allocation, stream-ordered as usual.
void* workspace_allocate(size_t bytes, Stream& stream);
void workspace_deallocate(void* ptr, size_t bytes, Stream& stream);

// What workspace_allocate uses instead of the pool for one stream on the calling thread while it
// is installed (the decoder graph runner, around an eager step and a capture). Returns the override
// it replaces. Not for general use.
class WorkspaceOverride {
 public:
  virtual ~WorkspaceOverride() = default;
  virtual void* allocate(size_t bytes, Stream& stream) = 0;
  virtual void deallocate(void* ptr, size_t bytes, Stream& stream) = 0;
};
std::pair<const Stream*, WorkspaceOverride*> set_workspace_override(const Stream* stream, WorkspaceOverride* override_);

// "1.50 GiB", "256 B": for messages.
std::string format_bytes(uint64_t bytes);

// Free and total bytes of `device` (CPU: MemAvailable and physical memory).
void device_memory_info(Device device, uint64_t* free_bytes, uint64_t* total_bytes);

}  // namespace pagedllm
