// fill_cuda: dst[i] = value. CPU twin: cpu/fill.cpp.
#include "cuda_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

// ---- kernel -------------------------------------------------------------------

template <typename T>
__global__ void fill_kernel(T* __restrict__ dst,  // [n]
                            size_t n, T value) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = value;
}

// ---- launcher -----------------------------------------------------------------

void fill_cuda(void* dst, DType dtype, size_t n, double value, Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  const int threads = 256;
  const size_t blocks = std::min<size_t>((n + threads - 1) / threads, 65535);
  PAGEDLLM_DISPATCH_DTYPE(dtype, T, {
    fill_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, cuda.handle()>>>(static_cast<T*>(dst), n,
                                                                                 convert_fill_value<T>(value));
  });
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pagedllm
