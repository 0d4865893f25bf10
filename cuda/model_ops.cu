// embedding_cuda, rms_norm_cuda, rope_cuda, silu_mul_cuda and add_cuda.
// CPU twins (and the argument checks): cpu/model_ops.cpp; semantics:
// include/pagedllm/model_ops.h. All are memory-bound: one pass over the data
// (rms_norm: two over a row that stays in L1/L2), dtypes switched at run time
// per element (a warp-uniform branch, cheaper than a template per dtype
// combination), results rounded with half.h's conversions so they match the
// CPU's bit for bit wherever the float32 math agrees.
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/model_ops.h"

namespace pagedllm {
namespace {

// ---- device helpers --------------------------------------------------------------------------

__device__ __forceinline__ float load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float16: return __half2float(__ushort_as_half(static_cast<const uint16_t*>(p)[i]));
    case DType::BFloat16: return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_any(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::Float16: static_cast<uint16_t*>(p)[i] = float_to_half_bits(v); break;
    case DType::BFloat16: static_cast<uint16_t*>(p)[i] = float_to_bfloat16_bits(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

// The value v takes once stored as t.
__device__ __forceinline__ float round_any(DType t, float v) {
  switch (t) {
    case DType::Float16: return half_bits_to_float(float_to_half_bits(v));
    case DType::BFloat16: return bfloat16_bits_to_float(float_to_bfloat16_bits(v));
    default: return v;
  }
}

// Sum over the CTA (blockDim.x a multiple of 32, ≤ 1024); every thread gets the total.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.0f;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// ---- kernels -----------------------------------------------------------------------------------

// One CTA per token; threads over hidden_size. An id outside the vocabulary gives a zero row.
__global__ void embedding_kernel(EmbeddingArgs a) {
  const int64_t t = blockIdx.x;
  const int64_t id = a.ids[t];
  const bool valid = id >= 0 && id < a.vocab_size;
  const int64_t in = (valid ? id : 0) * a.hidden_size, out = t * a.hidden_size;
  for (int64_t i = threadIdx.x; i < a.hidden_size; i += blockDim.x)
    store_any(a.out, a.out_dtype, out + i, valid ? load_any(a.weight, a.weight_dtype, in + i) : 0.0f);
}

// One CTA per token. Pass 1 forms h (adding and storing the residual when fused) and Σh²; pass 2
// re-reads h (L1/L2-resident) and writes the output. A thread touches the same indices in both
// passes, and the block_sum between them orders every read of x before any write of out (which
// may be x).
__global__ void rms_norm_kernel(RmsNormArgs a) {
  const int64_t t = blockIdx.x, H = a.hidden_size;
  const DType h_dtype = a.residual ? a.residual_dtype : a.x_dtype;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    float h = load_any(a.x, a.x_dtype, t * a.x_stride + i);
    if (a.residual) {
      const int64_t r = t * a.residual_stride + i;
      h = round_any(a.residual_dtype, h + load_any(a.residual, a.residual_dtype, r));
      store_any(a.residual, a.residual_dtype, r, h);
    }
    sum += h * h;
  }
  sum = block_sum(sum);
  const float scale = 1.0f / sqrtf(sum / static_cast<float>(H) + a.eps);
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    const float h = a.residual ? load_any(a.residual, a.residual_dtype, t * a.residual_stride + i)
                               : load_any(a.x, a.x_dtype, t * a.x_stride + i);
    const float v = round_any(h_dtype, h * scale) * load_any(a.weight, a.weight_dtype, i);
    store_any(a.out, a.out_dtype, t * a.out_stride + i, v);
  }
}

// One CTA per token: cos/sin of the token's angles into shared memory once, then threads over
// (head, pair) of the query heads followed by the key heads.
__global__ void rope_kernel(RopeArgs a) {
  extern __shared__ float cs[];  // [rotary_dim]: cos then sin
  const int64_t t = blockIdx.x, half = a.rotary_dim / 2;
  const float p = static_cast<float>(a.positions[t]);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(__fmul_rn(p, a.inv_freq[i]), &s, &c);  // __fmul_rn: the product rounded, as on the CPU
    cs[i] = c;
    cs[half + i] = s;
  }
  __syncthreads();
  const int64_t heads = a.num_heads + (a.key ? a.num_kv_heads : 0);
  for (int64_t j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int64_t h = j / half, i = j % half;
    const bool is_key = h >= a.num_heads;
    void* base = is_key ? a.key : a.query;
    const int64_t at = t * (is_key ? a.key_stride : a.query_stride) + (is_key ? h - a.num_heads : h) * a.head_size + i;
    const float x1 = load_any(base, a.dtype, at), x2 = load_any(base, a.dtype, at + half);
    const float c = cs[i], s = cs[half + i];
    store_any(base, a.dtype, at, __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    store_any(base, a.dtype, at + half, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  }
}

__global__ void silu_mul_kernel(SiluMulArgs a) {
  const int64_t I = a.intermediate_size, n = a.num_tokens * I;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / I, i = e % I;
    const float g = load_any(a.x, a.dtype, t * a.x_stride + i);
    const float u = load_any(a.x, a.dtype, t * a.x_stride + I + i);
    store_any(a.out, a.dtype, e, g / (1.0f + expf(-g)) * u);
  }
}

__global__ void add_kernel(AddArgs a) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < a.n; e += int64_t(gridDim.x) * blockDim.x)
    store_any(a.out, a.dtype, e, load_any(a.a, a.dtype, e) + load_any(a.b, a.dtype, e));
}

// ---- launch helpers ----------------------------------------------------------------------------

// Threads per CTA for a row of n elements: a multiple of 32 from 64 to 1024, about 4 elements each.
int row_threads(int64_t n) { return static_cast<int>(std::clamp<int64_t>((n / 4 + 31) / 32 * 32, 64, 1024)); }

unsigned grid_for(int64_t n, int threads) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + threads - 1) / threads, 1, int64_t(1) << 20));
}

void check_tokens(const char* op, int64_t num_tokens) {
  PAGEDLLM_CHECK(num_tokens <= INT32_MAX, InvalidArgument, op, ": num_tokens ", num_tokens, " exceeds 2^31 − 1");
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------

void embedding_cuda(const EmbeddingArgs& a, Stream& stream) {
  if (a.num_tokens == 0) return;
  check_tokens("embedding", a.num_tokens);
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  embedding_kernel<<<static_cast<unsigned>(a.num_tokens), row_threads(a.hidden_size), 0, cuda.handle()>>>(a);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

void rms_norm_cuda(const RmsNormArgs& a, Stream& stream) {
  if (a.num_tokens == 0) return;
  check_tokens("rms_norm", a.num_tokens);
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  rms_norm_kernel<<<static_cast<unsigned>(a.num_tokens), row_threads(a.hidden_size), 0, cuda.handle()>>>(a);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

void rope_cuda(const RopeArgs& a, Stream& stream) {
  if (a.num_tokens == 0) return;
  check_tokens("rope", a.num_tokens);
  PAGEDLLM_CHECK(a.rotary_dim <= 8192, Unsupported, "rope: rotary_dim ", a.rotary_dim, " exceeds 8192");
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  const int64_t pairs = (a.num_heads + (a.key ? a.num_kv_heads : 0)) * (a.rotary_dim / 2);
  const int threads = static_cast<int>(std::clamp<int64_t>((pairs + 31) / 32 * 32, 64, 512));
  const size_t smem = static_cast<size_t>(a.rotary_dim) * sizeof(float);
  rope_kernel<<<static_cast<unsigned>(a.num_tokens), threads, smem, cuda.handle()>>>(a);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

void silu_mul_cuda(const SiluMulArgs& a, Stream& stream) {
  if (a.num_tokens == 0) return;
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  silu_mul_kernel<<<grid_for(a.num_tokens * a.intermediate_size, 256), 256, 0, cuda.handle()>>>(a);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

void add_cuda(const AddArgs& a, Stream& stream) {
  if (a.n == 0) return;
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  add_kernel<<<grid_for(a.n, 256), 256, 0, cuda.handle()>>>(a);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pagedllm
