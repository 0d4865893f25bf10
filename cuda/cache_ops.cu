// write_kv_cuda and copy_blocks_cuda. CPU twins: cpu/cache_ops.cpp; layout and
// quantization: include/pagedllm/paged_kv.h (shared, so results are identical).
#include "cuda_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/paged_kv.h"

namespace pagedllm {

// ---- device helpers ----------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void store_value(void* cache, int64_t i, float x) {
  static_cast<T*>(cache)[i] = from_float<T>(x);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// ---- kernel ------------------------------------------------------------------------------

// One CUDA block per token; one warp per (head, K or V), lanes over head_size.
template <typename In>
__global__ void write_kv_kernel(const In* __restrict__ key,    // [num_tokens, num_kv_heads, head_size]
                                const In* __restrict__ value,  // [num_tokens, num_kv_heads, head_size]
                                const int32_t* __restrict__ slot_mapping,  // [num_tokens]
                                void* __restrict__ key_cache,   // [num_blocks, num_kv_heads, block_size, head_size]
                                void* __restrict__ value_cache,
                                float* __restrict__ key_scales,  // [num_blocks, num_kv_heads, block_size] or null
                                float* __restrict__ value_scales, KvCacheDType cache_dtype, KvCacheShape s) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0 || slot >= s.num_blocks * s.block_size) return;  // −1: skip; out of range: validated by the host
  const int64_t block = slot / s.block_size, offset = slot % s.block_size;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t job = warp; job < 2 * s.num_kv_heads; job += warps) {
    const bool is_value = job >= s.num_kv_heads;
    const int64_t h = is_value ? job - s.num_kv_heads : job;
    const In* in = (is_value ? value : key) + (t * s.num_kv_heads + h) * s.head_size;
    void* cache = is_value ? value_cache : key_cache;
    const int64_t at = s.index(block, h, offset);
    switch (cache_dtype) {
      case KvCacheDType::Float32:
        for (int64_t d = lane; d < s.head_size; d += 32) store_value<float>(cache, at + d, to_float(in[d]));
        break;
      case KvCacheDType::Float16:
        for (int64_t d = lane; d < s.head_size; d += 32) store_value<half_t>(cache, at + d, to_float(in[d]));
        break;
      case KvCacheDType::BFloat16:
        for (int64_t d = lane; d < s.head_size; d += 32) store_value<bfloat16_t>(cache, at + d, to_float(in[d]));
        break;
      case KvCacheDType::Int8:
      case KvCacheDType::Fp8E4M3: {
        float absmax = 0.0f;
        for (int64_t d = lane; d < s.head_size; d += 32) absmax = fmaxf(absmax, fabsf(to_float(in[d])));
        absmax = warp_max(absmax);
        const float scale = absmax / kv_quant_max(cache_dtype);
        if (lane == 0) (is_value ? value_scales : key_scales)[at / s.head_size] = scale;
        for (int64_t d = lane; d < s.head_size; d += 32)
          static_cast<uint8_t*>(cache)[at + d] = kv_quantize(to_float(in[d]), scale, cache_dtype);
        break;
      }
    }
  }
}

// ---- launchers ---------------------------------------------------------------------------

void write_kv_cuda(const WriteKvArgs& a, Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  const int warps = static_cast<int>(std::min<int64_t>(2 * a.shape.num_kv_heads, 8));
  const dim3 grid(static_cast<unsigned>(a.num_tokens)), block(32 * warps);
  switch (a.input_dtype) {
    case DType::Float32:
      write_kv_kernel<float><<<grid, block, 0, cuda.handle()>>>(
          static_cast<const float*>(a.key), static_cast<const float*>(a.value), a.slot_mapping, a.key_cache,
          a.value_cache, a.key_scales, a.value_scales, a.cache_dtype, a.shape);
      break;
    case DType::Float16:
      write_kv_kernel<half_t><<<grid, block, 0, cuda.handle()>>>(
          static_cast<const half_t*>(a.key), static_cast<const half_t*>(a.value), a.slot_mapping, a.key_cache,
          a.value_cache, a.key_scales, a.value_scales, a.cache_dtype, a.shape);
      break;
    case DType::BFloat16:
      write_kv_kernel<bfloat16_t><<<grid, block, 0, cuda.handle()>>>(
          static_cast<const bfloat16_t*>(a.key), static_cast<const bfloat16_t*>(a.value), a.slot_mapping,
          a.key_cache, a.value_cache, a.key_scales, a.value_scales, a.cache_dtype, a.shape);
      break;
    default:
      PAGEDLLM_FAIL(Unsupported, "write_kv: input dtype ", dtype_name(a.input_dtype), " (supported: float32, float16, bfloat16)");
  }
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

// Copy-on-write copies are few per step: one device-to-device copy per block
// (a block is contiguous in the HND layout) rather than a kernel reading a
// pair list that would first have to be uploaded.
void copy_blocks_cuda(const CopyBlocksArgs& a, Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  const int64_t block_bytes = a.shape.block_elements() * kv_dtype_size(a.cache_dtype);
  const int64_t scale_bytes = a.shape.num_kv_heads * a.shape.block_size * 4;
  for (int64_t i = 0; i < a.num_pairs; ++i) {
    const int64_t src = a.block_pairs[2 * i], dst = a.block_pairs[2 * i + 1];
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(a.cache) + dst * block_bytes,
                                        static_cast<char*>(a.cache) + src * block_bytes, block_bytes,
                                        cudaMemcpyDeviceToDevice, cuda.handle()));
    if (a.scales)
      PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<char*>(a.scales) + dst * scale_bytes,
                                          reinterpret_cast<char*>(a.scales) + src * scale_bytes, scale_bytes,
                                          cudaMemcpyDeviceToDevice, cuda.handle()));
  }
}

}  // namespace pagedllm
