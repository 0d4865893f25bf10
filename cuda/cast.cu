// cast_cuda: dst[i] = convert<D>(src[i]). CPU twin: cpu/cast.cpp; both use the
// conversions of convert.h, so results are bit-identical.
#include "cuda_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

// ---- kernel -------------------------------------------------------------------

template <typename S, typename D>
__global__ void cast_kernel(const S* __restrict__ src,  // [n]
                            D* __restrict__ dst,        // [n]
                            size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = convert<D>(src[i]);
}

// ---- launcher -----------------------------------------------------------------

void cast_cuda(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n, Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  if (src_dtype == dst_dtype) {
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * dtype_size(src_dtype), cudaMemcpyDeviceToDevice, cuda.handle()));
    return;
  }
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((n + threads - 1) / threads, 65535));
  PAGEDLLM_DISPATCH_DTYPE(src_dtype, S, {
    PAGEDLLM_DISPATCH_DTYPE(dst_dtype, D, {
      cast_kernel<S, D><<<blocks, threads, 0, cuda.handle()>>>(static_cast<const S*>(src), static_cast<D*>(dst), n);
    });
  });
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pagedllm
