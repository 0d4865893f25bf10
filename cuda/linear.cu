// linear_cuda: out = x · weightᵀ (+ bias). Semantics: include/pagedllm/model_ops.h;
// CPU twin and argument checks: cpu/linear.cpp. No cuBLAS: three kernels.
//
// - GEMV (M ≤ 8, decode): one warp per weight row, lanes over K with 16-byte
//   loads (8 elements of a 16-bit weight), marked evict-first since each is
//   read once, unrolled 4 deep so enough bytes are in flight; every loaded
//   weight vector is dotted with all M activation rows (L1-resident), so the
//   weights are read once per call. Bandwidth napkin: a 4096 × 4096 float16
//   weight is 32 MiB, ~10 µs at H100's 3.35 TB/s.
// - Tensor cores (M > 8, x and weight the same 16-bit dtype, sm_80+): a CTA
//   of 8 warps (2 × 4) computes a (32·MT) × (32·NT) tile of out with
//   mma.sync.m16n8k16 (f32 accumulate). K advances in steps of 32 through a
//   two-stage cp.async pipeline into padded shared memory (80-byte rows:
//   conflict-free ldmatrix); weight rows are the N dimension of the B operand
//   (mma .col), so a plain ldmatrix gives its fragments with no transpose.
//   Ragged M / N / K: out-of-range 16-byte chunks are zero-filled by cp.async
//   (K % 8 == 0 and aligned pointers), or loaded element by element with
//   guards otherwise. The tile size is the largest of 128×128, 64×128, 64×64
//   that still gives every SM a CTA.
// - SIMT (float32 anywhere, mixed dtypes, sm_75): 64 × 64 tiles, K steps of
//   16 through shared memory in float32, 4 × 4 outputs per thread.
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <type_traits>

#include "cuda_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/model_ops.h"

namespace pagedllm {
namespace {

// ---- device helpers: elements ------------------------------------------------------------------

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(half_t v) { return __half2float(__ushort_as_half(v.bits)); }
__device__ __forceinline__ float to_f(bfloat16_t v) { return __uint_as_float(static_cast<uint32_t>(v.bits) << 16); }

__device__ __forceinline__ float load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float16: return to_f(static_cast<const half_t*>(p)[i]);
    case DType::BFloat16: return to_f(static_cast<const bfloat16_t*>(p)[i]);
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

// out[m, n] = acc + bias[n], rounded to the output dtype.
__device__ __forceinline__ void store_out(const LinearArgs& a, int64_t m, int64_t n, float acc) {
  if (a.bias) acc += load_any(a.bias, a.bias_dtype, n);
  store_any(a.out, a.out_dtype, m * a.out_stride + n, acc);
}

// Eight float32 values from 16 bytes of 16-bit floats.
__device__ __forceinline__ void unpack8(const uint4& u, half_t, float (&v)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void unpack8(const uint4& u, bfloat16_t, float (&v)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(w[i] << 16);
    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// Eight consecutive elements at p (16-byte aligned; 32-byte for float32 is not needed: two 16-byte loads).
// `stream`: evict-first (each weight byte is read once); else the default caching load.
template <bool STREAM>
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = STREAM ? __ldcs(reinterpret_cast<const float4*>(p)) : *reinterpret_cast<const float4*>(p);
  const float4 b = STREAM ? __ldcs(reinterpret_cast<const float4*>(p) + 1) : *(reinterpret_cast<const float4*>(p) + 1);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <bool STREAM, typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  const uint4 u = STREAM ? __ldcs(reinterpret_cast<const uint4*>(p)) : *reinterpret_cast<const uint4*>(p);
  unpack8(u, T{}, v);
}

// ---- device helpers: sm_80 instructions ------------------------------------------------------------

[[maybe_unused]] __device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// 16 bytes global → shared, asynchronously; zeros instead when !valid (nothing is read).
__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// c[16×8] += a[16×16] · b[16×8] (a row-major, b column-major), 16-bit inputs, f32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, half_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}
#endif

// ---- kernels -----------------------------------------------------------------------------------

constexpr int kGemvWarps = 8;  // weight rows per 256-thread CTA

// One warp per weight row n; acc[m] = Σ_k x[m, k] · w[n, k] for every m < M ≤ 8.
// VEC: K % 8 == 0, x stride % 8 == 0 and 16-byte aligned x and weight (16-byte loads).
template <typename W, typename X, bool VEC>
__global__ void __launch_bounds__(256) gemv_kernel(LinearArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (n >= a.out_features) return;
  const int M = static_cast<int>(a.num_tokens);
  const int64_t K = a.in_features, xs = a.x_stride;
  const W* w = static_cast<const W*>(a.weight) + n * K;
  const X* x = static_cast<const X*>(a.x);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if constexpr (VEC) {
#pragma unroll 4
    for (int64_t k = lane * 8; k < K; k += 32 * 8) {
      float wv[8];
      load8<true>(w + k, wv);
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        if (m >= M) break;
        float xv[8];
        load8<false>(x + m * xs + k, xv);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[m] = fmaf(wv[e], xv[e], acc[m]);
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float wv = to_f(w[k]);
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        if (m >= M) break;
        acc[m] = fmaf(wv, to_f(x[m * xs + k]), acc[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    if (m >= M) break;
    float v = acc[m];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == m) store_out(a, m, n, v);
  }
}

// Float32 tiles: out tile [64 × 64] per CTA, thread (ty, tx) owns rows ty + 16i, columns tx + 16j.
template <typename X, typename W>
__global__ void __launch_bounds__(256) gemm_simt_kernel(LinearArgs a) {
  constexpr int BM = 64, BN = 64, BK = 16;
  __shared__ float xs_tile[BK][BM + 4];
  __shared__ float ws_tile[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t M = a.num_tokens, N = a.out_features, K = a.in_features;
  const X* x = static_cast<const X*>(a.x);
  const W* w = static_cast<const W*>(a.weight);
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = tid + r * 256, row = e / BK, kk = e % BK;
      const int64_t gk = k0 + kk, gm = m0 + row, gn = n0 + row;
      xs_tile[kk][row] = gm < M && gk < K ? to_f(x[gm * a.x_stride + gk]) : 0.0f;
      ws_tile[kk][row] = gn < N && gk < K ? to_f(w[gn * K + gk]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float xv[4], wv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = xs_tile[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) wv[j] = ws_tile[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xv[i], wv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) store_out(a, m, n, acc[i][j]);
    }
}

// Tensor-core tiles. T: half_t or bfloat16_t (x and weight). Warp (wm, wn) of the 2 × 4 grid owns
// rows wm·16·MT … +16·MT and columns wn·8·NT … +8·NT of the CTA tile. ALIGNED: K % 8 == 0,
// x stride % 8 == 0 and 16-byte aligned x and weight (cp.async of whole 16-byte chunks).
template <typename T, int MT, int NT, bool ALIGNED>
__global__ void __launch_bounds__(256) gemm_tensor_core_kernel(LinearArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(NT % 2 == 0, "B fragments come two n-tiles per ldmatrix.x4");
  constexpr int BM = 32 * MT, BN = 32 * NT, BK = 32;
  constexpr int LDS = BK + 8;  // elements per shared row: 80 bytes, conflict-free ldmatrix, 16-byte aligned
  __shared__ __align__(16) uint16_t x_tile[2][BM * LDS];
  __shared__ __align__(16) uint16_t w_tile[2][BN * LDS];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int64_t M = a.num_tokens, N = a.out_features, K = a.in_features, xs = a.x_stride;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  const uint16_t* w = static_cast<const uint16_t*>(a.weight);

  // Rows [0, rows) × K columns [k0, k0 + 32) of src (row r at src + (r0 + r)·stride) into tile.
  auto load_rows = [&](uint16_t* tile, const uint16_t* src, int64_t stride, int64_t r0, int64_t limit, int rows,
                       int64_t k0) {
    for (int c = tid; c < rows * (BK / 8); c += 256) {
      const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
      const int64_t gr = r0 + r, gk = k0 + kc;
      uint16_t* dst = tile + r * LDS + kc;
      if constexpr (ALIGNED) {
        const bool valid = gr < limit && gk < K;  // K % 8 == 0: a chunk is wholly inside or outside
        cp_async16_zfill(dst, valid ? src + gr * stride + gk : src, valid);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = gr < limit && gk + e < K ? src[gr * stride + gk + e] : uint16_t(0);
      }
    }
  };
  auto load_stage = [&](int stage, int64_t k0) {
    load_rows(x_tile[stage], x, xs, m0, M, BM, k0);
    load_rows(w_tile[stage], w, K, n0, N, BN, k0);
    if constexpr (ALIGNED) cp_async_commit();
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int64_t k_tiles = (K + BK - 1) / BK;
  load_stage(0, 0);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    if (kt + 1 < k_tiles) {
      load_stage((kt + 1) & 1, (kt + 1) * BK);  // the next stage's copy overlaps this stage's math
      if constexpr (ALIGNED) cp_async_wait<1>();
    } else {
      if constexpr (ALIGNED) cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* xt = x_tile[kt & 1];
    const uint16_t* wt = w_tile[kt & 1];
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i)  // A 16×16: lanes 0–15 rows 0–15 at k 0, lanes 16–31 the same rows at k 8
        ldmatrix_x4(af[i], xt + (wm * 16 * MT + i * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int j = 0; j < NT / 2; ++j) {  // two n-tiles: (n 0–7, k 0–7), (n 0–7, k 8–15), (n 8–15, k 0–7), (n 8–15, k 8–15)
        uint32_t r[4];
        ldmatrix_x4(r, wt + (wn * 8 * NT + j * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + ks * 16 + ((lane >> 3) & 1) * 8);
        bf[2 * j][0] = r[0];
        bf[2 * j][1] = r[1];
        bf[2 * j + 1][0] = r[2];
        bf[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_16816<T>(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // C fragment: c0, c1 at (row g, columns 2·tg, 2·tg + 1); c2, c3 at row g + 8.
  const int g = lane >> 2, tg = lane & 3;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + wm * 16 * MT + i * 16 + g + (e >> 1) * 8;
        const int64_t n = n0 + wn * 8 * NT + j * 8 + tg * 2 + (e & 1);
        if (m < M && n < N) store_out(a, m, n, acc[i][j][e]);
      }
#endif
}

// ---- launchers ---------------------------------------------------------------------------------

// Whether the tensor-core kernel runs as sm_80+ code on `device` (a build whose newest code is
// compute_75 PTX would JIT-compile it with an empty body). Cached per device.
bool tensor_cores_usable(int device) {
  static std::atomic<int> cached[64];  // 0: not asked yet, 1: no, 2: yes
  if (device >= 0 && device < 64) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known) return known == 2;
  }
  cudaFuncAttributes attr{};
  PAGEDLLM_CUDA_CHECK(cudaFuncGetAttributes(&attr, gemm_tensor_core_kernel<half_t, 2, 2, true>));
  const bool usable = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
  if (device >= 0 && device < 64) cached[device].store(usable ? 2 : 1, std::memory_order_relaxed);
  return usable;
}

int multiprocessors(int device) {
  static std::atomic<int> cached[64];
  if (device >= 0 && device < 64 && cached[device].load(std::memory_order_relaxed))
    return cached[device].load(std::memory_order_relaxed);
  int count = 0;
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cached[device].store(count, std::memory_order_relaxed);
  return count;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename W, typename X>
void launch_gemv(const LinearArgs& a, bool vec, cudaStream_t s) {
  const unsigned grid = static_cast<unsigned>((a.out_features + kGemvWarps - 1) / kGemvWarps);
  if (vec) gemv_kernel<W, X, true><<<grid, 32 * kGemvWarps, 0, s>>>(a);
  else gemv_kernel<W, X, false><<<grid, 32 * kGemvWarps, 0, s>>>(a);
}

template <typename X>
void launch_simt(const LinearArgs& a, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((a.out_features + 63) / 64), static_cast<unsigned>((a.num_tokens + 63) / 64));
  switch (a.weight_dtype) {
    case DType::Float16: gemm_simt_kernel<X, half_t><<<grid, 256, 0, s>>>(a); break;
    case DType::BFloat16: gemm_simt_kernel<X, bfloat16_t><<<grid, 256, 0, s>>>(a); break;
    default: gemm_simt_kernel<X, float><<<grid, 256, 0, s>>>(a); break;
  }
}

template <typename T, int MT, int NT>
void launch_tensor_core_tiles(const LinearArgs& a, bool aligned, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((a.out_features + 32 * NT - 1) / (32 * NT)),
                  static_cast<unsigned>((a.num_tokens + 32 * MT - 1) / (32 * MT)));
  if (aligned) gemm_tensor_core_kernel<T, MT, NT, true><<<grid, 256, 0, s>>>(a);
  else gemm_tensor_core_kernel<T, MT, NT, false><<<grid, 256, 0, s>>>(a);
}

template <typename T>
void launch_tensor_core(const LinearArgs& a, bool aligned, int sms, cudaStream_t s) {
  auto tiles = [&](int64_t bm, int64_t bn) { return ((a.num_tokens + bm - 1) / bm) * ((a.out_features + bn - 1) / bn); };
  if (tiles(128, 128) >= sms) launch_tensor_core_tiles<T, 4, 4>(a, aligned, s);
  else if (tiles(64, 128) >= sms) launch_tensor_core_tiles<T, 2, 4>(a, aligned, s);
  else launch_tensor_core_tiles<T, 2, 2>(a, aligned, s);
}

}  // namespace

// ---- dispatch ----------------------------------------------------------------------------------

void linear_cuda(const LinearArgs& a, Stream& stream) {
  if (a.num_tokens == 0) return;
  PAGEDLLM_CHECK(a.num_tokens <= 65535LL * 64 && a.out_features <= INT32_MAX && a.in_features <= INT32_MAX,
                 InvalidArgument, "linear: sizes too large for the CUDA kernels (num_tokens ", a.num_tokens, ")");
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  cudaStream_t s = cuda.handle();
  const int device = cuda.device().index;
  const bool aligned = a.in_features % 8 == 0 && a.x_stride % 8 == 0 && aligned16(a.x) && aligned16(a.weight);
  if (a.num_tokens <= 8) {
    auto with_x = [&](auto w_tag) {
      using W = decltype(w_tag);
      switch (a.x_dtype) {
        case DType::Float16: launch_gemv<W, half_t>(a, aligned, s); break;
        case DType::BFloat16: launch_gemv<W, bfloat16_t>(a, aligned, s); break;
        default: launch_gemv<W, float>(a, aligned, s); break;
      }
    };
    switch (a.weight_dtype) {
      case DType::Float16: with_x(half_t{}); break;
      case DType::BFloat16: with_x(bfloat16_t{}); break;
      default: with_x(float{}); break;
    }
  } else if (a.x_dtype == a.weight_dtype && a.x_dtype != DType::Float32 && tensor_cores_usable(device)) {
    const int sms = multiprocessors(device);
    if (a.x_dtype == DType::Float16) launch_tensor_core<half_t>(a, aligned, sms, s);
    else launch_tensor_core<bfloat16_t>(a, aligned, sms, s);
  } else {
    switch (a.x_dtype) {
      case DType::Float16: launch_simt<half_t>(a, s); break;
      case DType::BFloat16: launch_simt<bfloat16_t>(a, s); break;
      default: launch_simt<float>(a, s); break;
    }
  }
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pagedllm
