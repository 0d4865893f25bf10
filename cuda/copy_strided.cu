// copy_strided_cuda: gathers a strided view into a contiguous buffer.
// CPU twin: cpu/copy_strided.cpp.
#include "cuda_stream.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

// ---- kernel -------------------------------------------------------------------

// One thread per output element; the row-major output index is decomposed
// into a source offset. Elements are moved as whole words of their size.
template <typename Word>
__global__ void copy_strided_kernel(const Word* __restrict__ src, StridedLayout layout,
                                    Word* __restrict__ dst,  // [prod(shape)]
                                    size_t total) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    size_t rest = i;
    int64_t offset = 0;
    for (int d = layout.ndim - 1; d >= 0; --d) {
      const size_t extent = static_cast<size_t>(layout.shape[d]);
      offset += static_cast<int64_t>(rest % extent) * layout.strides[d];
      rest /= extent;
    }
    dst[i] = src[offset];
  }
}

// ---- launcher -----------------------------------------------------------------

void copy_strided_cuda(const void* src, const StridedLayout& layout, size_t elem_size, void* dst, Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  size_t total = 1;
  for (int d = 0; d < layout.ndim; ++d) total *= static_cast<size_t>(layout.shape[d]);
  if (total == 0) return;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((total + threads - 1) / threads, 65535));
  switch (elem_size) {
    case 1:
      copy_strided_kernel<uint8_t><<<blocks, threads, 0, cuda.handle()>>>(static_cast<const uint8_t*>(src), layout,
                                                                         static_cast<uint8_t*>(dst), total);
      break;
    case 2:
      copy_strided_kernel<uint16_t><<<blocks, threads, 0, cuda.handle()>>>(static_cast<const uint16_t*>(src), layout,
                                                                          static_cast<uint16_t*>(dst), total);
      break;
    case 4:
      copy_strided_kernel<uint32_t><<<blocks, threads, 0, cuda.handle()>>>(static_cast<const uint32_t*>(src), layout,
                                                                          static_cast<uint32_t*>(dst), total);
      break;
    case 8:
      copy_strided_kernel<uint64_t><<<blocks, threads, 0, cuda.handle()>>>(static_cast<const uint64_t*>(src), layout,
                                                                          static_cast<uint64_t*>(dst), total);
      break;
    default:
      PAGEDLLM_FAIL(Unsupported, "copy_strided: element size ", elem_size, " is not supported (supported: 1, 2, 4, 8)");
  }
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pagedllm
