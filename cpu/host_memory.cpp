// Host memory resource (256-byte aligned; the free is queued on the stream,
// after the work that may still read the memory), the default resources, and
// what the CPU "device" has free.
#include <cstdlib>
#include <map>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <mutex>
#include <string>

#include "pagedllm/memory_resource.h"

namespace pagedllm {

namespace {

class HostMemoryResource final : public MemoryResource {
 public:
  Device device() const override { return Device{DeviceKind::Cpu, 0}; }
  std::string kind() const override { return "host"; }
  void report(MemoryReport& out) override {
    out.kind = kind();
    out.device = device();
    if (out.with_device_info) device_memory_info(device(), &out.device_free, &out.device_total);
  }

 private:
  // Large allocations (pool chunks, weights, KV caches) are aligned to 2 MiB and asked to be
  // backed by transparent huge pages: CPU attention reads one head of one block (a few KiB) at
  // a random place per step, and with 4 KiB pages nearly every such read also misses the TLB.
  static constexpr size_t kHugePage = size_t(2) << 20;
  void* do_allocate(size_t bytes, Stream&, Category category) override {
    const size_t rounded = align_up(bytes);
    void* ptr = nullptr;
    if (rounded < bytes) {
      ptr = nullptr;  // overflow
    } else if (rounded >= 2 * kHugePage) {
      if (posix_memalign(&ptr, kHugePage, rounded) != 0) ptr = nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      if (ptr) madvise(ptr, rounded / 4096 * 4096, MADV_HUGEPAGE);  // a hint: ignored where THP is off
#endif
    } else {
      ptr = std::aligned_alloc(kAllocationAlignment, rounded);
    }
    if (ptr == nullptr) {
      MemoryReport ledger;
      report(ledger);
      throw OutOfMemoryError(detail::concat("out of memory: cannot allocate ", format_bytes(bytes), " (",
                                            category_name(category), ") of host memory; ",
                                            format_bytes(ledger.device_free), " available of ",
                                            format_bytes(ledger.device_total)),
                             bytes, category, ledger);
    }
    return ptr;
  }
  void do_deallocate(void* ptr, size_t, Stream& stream, Category) override {
    stream.enqueue_host([ptr] { std::free(ptr); });
  }
};

}  // namespace

MemoryResourcePtr make_host_resource() { return std::make_shared<HostMemoryResource>(); }

MemoryResourcePtr default_memory_resource(Device device) {
  // Leaked on purpose: buffers freed during process exit still reach them.
  static std::mutex* mutex = new std::mutex;
  static auto* resources = new std::map<std::pair<int, int>, MemoryResourcePtr>;
  std::lock_guard<std::mutex> lock(*mutex);
  auto key = std::make_pair(static_cast<int>(device.kind), device.index);
  auto it = resources->find(key);
  if (it != resources->end()) return it->second;
  MemoryResourcePtr upstream = device.is_cpu() ? make_host_resource() : make_cuda_resource(device.index);
  MemoryResourcePtr resource = make_tracking_adaptor(make_pool_resource(upstream, 0, 0));
  (*resources)[key] = resource;
  return resource;
}

namespace {
thread_local const Stream* t_override_stream = nullptr;
thread_local WorkspaceOverride* t_override = nullptr;
}  // namespace

std::pair<const Stream*, WorkspaceOverride*> set_workspace_override(const Stream* stream, WorkspaceOverride* override_) {
  std::pair<const Stream*, WorkspaceOverride*> previous{t_override_stream, t_override};
  t_override_stream = stream;
  t_override = override_;
  return previous;
}

void* workspace_allocate(size_t bytes, Stream& stream) {
  if (t_override != nullptr && t_override_stream == &stream) return t_override->allocate(bytes, stream);
  return default_memory_resource(stream.device())->allocate(bytes, stream, Category::Workspace);
}

void workspace_deallocate(void* ptr, size_t bytes, Stream& stream) {
  if (t_override != nullptr && t_override_stream == &stream) return t_override->deallocate(ptr, bytes, stream);
  default_memory_resource(stream.device())->deallocate(ptr, bytes, stream, Category::Workspace);
}

void cpu_memory_info(uint64_t* free_bytes, uint64_t* total_bytes);             // cpu/cpu_info.cpp
void cuda_memory_info(int device_index, uint64_t* free_bytes, uint64_t* total_bytes);  // cuda/ or cpu/no_cuda.cpp

void device_memory_info(Device device, uint64_t* free_bytes, uint64_t* total_bytes) {
  if (device.is_cpu()) cpu_memory_info(free_bytes, total_bytes);
  else cuda_memory_info(device.index, free_bytes, total_bytes);
}

}  // namespace pagedllm
