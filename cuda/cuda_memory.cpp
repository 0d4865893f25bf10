// cuda-async memory resource: cudaMallocAsync / cudaFreeAsync on the device's
// default memory pool (stream-ordered by the driver).
#include <cuda_runtime_api.h>

#include <mutex>
#include <vector>

#include "cuda_stream.h"
#include "pagedllm/memory_resource.h"

namespace pagedllm {

namespace {

class CudaAsyncMemoryResource final : public MemoryResource {
 public:
  explicit CudaAsyncMemoryResource(int device_index) : device_index_(device_index) {}
  Device device() const override { return Device{DeviceKind::Cuda, device_index_}; }

 private:
  void* do_allocate(size_t bytes, Stream& stream) override {
    CudaStream& cuda = as_cuda_stream(stream);
    cuda.activate();
    void* ptr = nullptr;
    cudaError_t status = cudaMallocAsync(&ptr, bytes, cuda.handle());
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      PAGEDLLM_FAIL(OutOfMemory, "out of memory: cannot allocate ", bytes, " bytes on cuda:", device_index_);
    }
    PAGEDLLM_CUDA_CHECK(status);
    return ptr;
  }
  void do_deallocate(void* ptr, size_t, Stream& stream) override {
    CudaStream& cuda = as_cuda_stream(stream);
    cuda.activate();
    PAGEDLLM_CUDA_CHECK(cudaFreeAsync(ptr, cuda.handle()));
  }

  int device_index_;
};

}  // namespace

MemoryResource& cuda_async_memory_resource(int device_index) {
  static std::mutex* mutex = new std::mutex;
  static auto* resources = new std::vector<CudaAsyncMemoryResource*>;  // leaked: outlive every stream
  std::lock_guard<std::mutex> lock(*mutex);
  PAGEDLLM_CHECK(device_index >= 0 && device_index < 1024, InvalidArgument, "bad CUDA device index ", device_index);
  if (resources->size() <= static_cast<size_t>(device_index)) resources->resize(device_index + 1, nullptr);
  auto*& resource = (*resources)[device_index];
  if (!resource) resource = new CudaAsyncMemoryResource(device_index);
  return *resource;
}

}  // namespace pagedllm
