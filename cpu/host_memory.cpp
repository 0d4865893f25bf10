// Host memory resource: 256-byte aligned, freed in stream order (the free is
// queued on the stream, after the work that may still read the memory).
#include <cstdlib>

#include "pagedllm/error.h"
#include "pagedllm/memory_resource.h"

namespace pagedllm {

MemoryResource& cuda_async_memory_resource(int device_index);  // cuda/cuda_memory.cpp or cpu/no_cuda.cpp

namespace {

class HostMemoryResource final : public MemoryResource {
 public:
  Device device() const override { return Device{DeviceKind::Cpu, 0}; }

 private:
  void* do_allocate(size_t bytes, Stream&) override {
    const size_t rounded = (bytes + kAllocationAlignment - 1) / kAllocationAlignment * kAllocationAlignment;
    PAGEDLLM_CHECK(rounded >= bytes, OutOfMemory, "out of memory: cannot allocate ", bytes, " bytes of host memory");
    void* ptr = std::aligned_alloc(kAllocationAlignment, rounded);
    PAGEDLLM_CHECK(ptr != nullptr, OutOfMemory, "out of memory: cannot allocate ", bytes, " bytes of host memory");
    return ptr;
  }
  void do_deallocate(void* ptr, size_t, Stream& stream) override {
    stream.enqueue_host([ptr] { std::free(ptr); });
  }
};

}  // namespace

MemoryResource& host_memory_resource() {
  static HostMemoryResource* resource = new HostMemoryResource;  // leaked: outlives every stream
  return *resource;
}

MemoryResource& default_memory_resource(Device device) {
  return device.is_cpu() ? host_memory_resource() : cuda_async_memory_resource(device.index);
}

}  // namespace pagedllm
