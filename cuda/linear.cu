// linear_cuda: out = x · weightᵀ (+ bias). Semantics: include/pagedllm/model_ops.h;
// CPU twin and argument checks: cpu/linear.cpp. No cuBLAS: three kernels.
//
// - GEMV (M ≤ 8, decode): one, two or four warps per weight row (more when the
//   rows are too few to fill the GPU), lanes over K with 16-byte
//   loads (8 elements of a 16-bit weight), marked evict-first since each is
//   read once, unrolled 4 deep so enough bytes are in flight; every loaded
//   weight vector is dotted with all M activation rows (L1-resident), so the
//   weights are read once per call. Bandwidth napkin: a 4096 × 4096 float16
//   weight is 32 MiB, ~10 µs at H100's 3.35 TB/s.
// - Tensor cores (M > 8, x and weight the same 16-bit dtype, sm_80+): a CTA
//   of 8 warps (2 × 4) computes a (32·MT) × (32·NT) tile of out with
//   mma.sync.m16n8k16 (f32 accumulate). K advances in steps of 32 through a
//   3- or 4-stage cp.async ring into padded shared memory (80-byte rows:
//   conflict-free ldmatrix); weight rows are the N dimension of the B operand
//   (mma .col), so a plain ldmatrix gives its fragments with no transpose.
//   Ragged M / N / K: out-of-range 16-byte chunks are zero-filled by cp.async
//   (K % 8 == 0 and aligned pointers), or loaded element by element with
//   guards otherwise. The tile size is the largest of 128×128, 64×128, 64×64
//   that still gives every SM a CTA; when even 64×64 tiles leave SMs idle (small
//   M: decode batches of 9+, short prompt chunks), K is split over CTAs too and
//   the float32 partials are summed in order by a second kernel. (H200, before
//   split-K and the deeper ring: M = 64, 4096 × 4096 took 97 µs, 10 % of copy
//   bandwidth — 64 CTAs with 8 KiB each in flight.)
// - SIMT (float32 anywhere, mixed dtypes, sm_75): 64 × 64 tiles, K steps of
//   16 through shared memory in float32, 4 × 4 outputs per thread.
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "cuda_stream.h"
#include "mma.cuh"
#include "pagedllm/convert.h"
#include "pagedllm/memory_resource.h"
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

using namespace tc;  // cp.async, ldmatrix, mma.sync: cuda/mma.cuh

// ---- kernels -----------------------------------------------------------------------------------

constexpr int kGemvWarps = 8;  // weight rows per 256-thread CTA

// WPR warps per weight row n (kGemvWarps / WPR rows per CTA); acc[m] = Σ_k x[m, k] · w[n, k] for
// every m < M ≤ 8, the WPR warps of a row taking interleaved 256-element runs of K and summing
// through shared memory. VEC: K % 8 == 0, x stride % 8 == 0 and 16-byte aligned x and weight.
template <typename W, typename X, bool VEC, int WPR>
__global__ void __launch_bounds__(256) gemv_kernel(LinearArgs a) {
  __shared__ float partial_s[kGemvWarps][8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, part = warp % WPR;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (kGemvWarps / WPR) + warp / WPR;
  const bool row_valid = n < a.out_features;  // no early return: the WPR > 1 sum has a barrier
  const int M = static_cast<int>(a.num_tokens);
  const int64_t K = a.in_features, xs = a.x_stride;
  const W* w = static_cast<const W*>(a.weight) + (row_valid ? n : 0) * K;
  const X* x = static_cast<const X*>(a.x);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (row_valid) {
    if constexpr (VEC) {
#pragma unroll 4
      for (int64_t k = (part * 32 + lane) * 8; k < K; k += WPR * 32 * 8) {
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
      for (int64_t k = part * 32 + lane; k < K; k += WPR * 32) {
        const float wv = to_f(w[k]);
#pragma unroll
        for (int m = 0; m < 8; ++m) {
          if (m >= M) break;
          acc[m] = fmaf(wv, to_f(x[m * xs + k]), acc[m]);
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    if (m >= M) break;
    float v = acc[m];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    acc[m] = v;
  }
  if constexpr (WPR > 1) {
#pragma unroll
    for (int m = 0; m < 8; ++m)
      if (lane == m) partial_s[warp][m] = acc[m];  // every lane holds the warp's sums (xor butterfly)
    __syncthreads();
    if (part != 0) return;
    if (lane < M) {
      float v = 0.0f;
#pragma unroll
      for (int p = 0; p < WPR; ++p) v += partial_s[warp + p][lane];  // parts in order: deterministic
      if (row_valid) store_out(a, lane, n, v);
    }
  } else {
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      if (m >= M) break;
      if (lane == m && row_valid) store_out(a, m, n, acc[m]);
    }
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
// x stride % 8 == 0 and 16-byte aligned x and weight (cp.async of whole 16-byte chunks; else
// element loads, and STAGES is 2). STAGES: the shared-memory ring (dynamic, tensor_core_smem bytes).
// Split-K: CTA z covers K columns [z·k_split, (z + 1)·k_split) (k_split a multiple of 32) and,
// when `partial` is set, writes its float32 sums to partial[z][M][N] (no bias) for
// split_k_sum_kernel; else out (+ bias).
template <int MT, int NT, int STAGES>
constexpr int tensor_core_smem() {
  return STAGES * (32 * MT + 32 * NT) * (32 + 8) * 2;
}

template <typename T, int MT, int NT, bool ALIGNED, int STAGES>
__global__ void __launch_bounds__(256) gemm_tensor_core_kernel(LinearArgs a, float* partial, int64_t k_split) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(NT % 2 == 0, "B fragments come two n-tiles per ldmatrix.x4");
  static_assert(STAGES >= 2 && (ALIGNED || STAGES == 2), "element loads are synchronous: two stages");
  constexpr int BM = 32 * MT, BN = 32 * NT, BK = 32;
  constexpr int LDS = BK + 8;  // elements per shared row: 80 bytes, conflict-free ldmatrix, 16-byte aligned
  extern __shared__ __align__(16) uint16_t tiles_smem[];
  auto x_tile = [&](int stage) { return tiles_smem + stage * (BM + BN) * LDS; };
  auto w_tile = [&](int stage) { return tiles_smem + stage * (BM + BN) * LDS + BM * LDS; };

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int64_t M = a.num_tokens, N = a.out_features, xs = a.x_stride;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * k_split;
  const int64_t K = min(a.in_features, k_begin + k_split);  // this CTA's columns end here
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  const uint16_t* w = static_cast<const uint16_t*>(a.weight);
  const int64_t w_stride = a.in_features;

  // Rows [0, rows) × K columns [k0, k0 + 32) of src (row r at src + (r0 + r)·stride) into tile.
  auto load_rows = [&](uint16_t* tile, const uint16_t* src, int64_t stride, int64_t r0, int64_t limit, int rows,
                       int64_t k0) {
    for (int c = tid; c < rows * (BK / 8); c += 256) {
      const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
      const int64_t gr = r0 + r, gk = k0 + kc;
      uint16_t* dst = tile + r * LDS + kc;
      if constexpr (ALIGNED) {
        const bool valid = gr < limit && gk < K;  // K, k_begin % 8 == 0: a chunk is wholly inside or outside
        cp_async16_zfill(dst, valid ? src + gr * stride + gk : src, valid);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = gr < limit && gk + e < K ? src[gr * stride + gk + e] : uint16_t(0);
      }
    }
  };
  auto load_stage = [&](int stage, int64_t k0) {
    load_rows(x_tile(stage), x, xs, m0, M, BM, k0);
    load_rows(w_tile(stage), w, w_stride, n0, N, BN, k0);
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int64_t k_tiles = K > k_begin ? (K - k_begin + BK - 1) / BK : 0;
  // Ring: tiles 0 … STAGES − 2 in flight before the loop; at step kt, tile kt + STAGES − 1 goes
  // into the slot step kt − 1 read (every warp passed this step's barrier, so it is free). One
  // commit group per tile (empty past the end) keeps the wait count exact.
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < k_tiles) load_stage(st, k_begin + st * BK);
    if constexpr (ALIGNED) cp_async_commit();
  }
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    if constexpr (ALIGNED) cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt landed for every thread; slot (kt − 1) % STAGES is drained
    if (kt + STAGES - 1 < k_tiles) load_stage(static_cast<int>((kt + STAGES - 1) % STAGES), k_begin + (kt + STAGES - 1) * BK);
    if constexpr (ALIGNED) cp_async_commit();
    const uint16_t* xt = x_tile(static_cast<int>(kt % STAGES));
    const uint16_t* wt = w_tile(static_cast<int>(kt % STAGES));
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
  }
  if constexpr (ALIGNED) cp_async_wait<0>();  // only empty groups remain; nothing may be in flight at exit

  // C fragment: c0, c1 at (row g, columns 2·tg, 2·tg + 1); c2, c3 at row g + 8.
  const int g = lane >> 2, tg = lane & 3;
  float* part = partial ? partial + static_cast<int64_t>(blockIdx.z) * M * N : nullptr;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const int64_t m = m0 + wm * 16 * MT + i * 16 + g + (e >> 1) * 8;
        const int64_t n = n0 + wn * 8 * NT + j * 8 + tg * 2;
        if (m >= M) continue;
        if (part) {
          if (n + 1 < N && N % 2 == 0) {
            *reinterpret_cast<float2*>(part + m * N + n) = make_float2(acc[i][j][e], acc[i][j][e + 1]);
          } else {
            if (n < N) part[m * N + n] = acc[i][j][e];
            if (n + 1 < N) part[m * N + n + 1] = acc[i][j][e + 1];
          }
        } else {
          if (n < N) store_out(a, m, n, acc[i][j][e]);
          if (n + 1 < N) store_out(a, m, n + 1, acc[i][j][e + 1]);
        }
      }
#endif
}

// out[m, n] = Σ_z partial[z][m][n] (+ bias[n]), in z order (deterministic).
__global__ void __launch_bounds__(256) split_k_sum_kernel(LinearArgs a, const float* __restrict__ partial, int splits) {
  const int64_t M = a.num_tokens, N = a.out_features;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int z = 0; z < splits; ++z) v += partial[z * M * N + i];
    store_out(a, i / N, i % N, v);
  }
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
  PAGEDLLM_CUDA_CHECK(cudaFuncGetAttributes(&attr, gemm_tensor_core_kernel<half_t, 2, 2, true, 3>));
  const bool usable = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
  if (device >= 0 && device < 64) cached[device].store(usable ? 2 : 1, std::memory_order_relaxed);
  return usable;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename W, typename X, int WPR>
void launch_gemv_wpr(const LinearArgs& a, bool vec, cudaStream_t s) {
  const unsigned grid = static_cast<unsigned>((a.out_features * WPR + kGemvWarps - 1) / kGemvWarps);
  if (vec) gemv_kernel<W, X, true, WPR><<<grid, 32 * kGemvWarps, 0, s>>>(a);
  else gemv_kernel<W, X, false, WPR><<<grid, 32 * kGemvWarps, 0, s>>>(a);
}

// Warps per weight row: the most of 1, 2, 4 that keeps the grid within one wave of 64 warps per SM
// and every warp ≥ 4 runs of 256 elements. (H200, one warp per row: a 4096-row float16 weight
// streamed at 47 % of copy bandwidth with 4096 warps in flight on 132 SMs, an 11008-row one at 70 %.)
int gemv_warps_per_row(const LinearArgs& a, int sms) {
  int wpr = 1;
  while (wpr < 4 && a.out_features * wpr * 2 <= static_cast<int64_t>(sms) * 64 && a.in_features / (wpr * 2 * 256) >= 4) wpr *= 2;
  return wpr;
}

template <typename W, typename X>
void launch_gemv(const LinearArgs& a, bool vec, int sms, cudaStream_t s) {
  switch (gemv_warps_per_row(a, sms)) {
    case 4: return launch_gemv_wpr<W, X, 4>(a, vec, s);
    case 2: return launch_gemv_wpr<W, X, 2>(a, vec, s);
    default: return launch_gemv_wpr<W, X, 1>(a, vec, s);
  }
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

// Raises `kernel`'s dynamic shared-memory limit to `bytes`, once per (kernel, device).
void allow_smem(const void* kernel, int device, int bytes) {
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mutex);
  if (!done.insert({kernel, device}).second) return;
  PAGEDLLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <typename T, int MT, int NT, bool ALIGNED, int STAGES>
void launch_tensor_core_kernel(const LinearArgs& a, dim3 grid, float* partial, int64_t k_split, int device, cudaStream_t s) {
  const auto kernel = gemm_tensor_core_kernel<T, MT, NT, ALIGNED, STAGES>;
  constexpr int smem = tensor_core_smem<MT, NT, STAGES>();
  allow_smem(reinterpret_cast<const void*>(kernel), device, smem);
  kernel<<<grid, 256, smem, s>>>(a, partial, k_split);
}

// Small M (decode batches, short prompt chunks) leaves most SMs idle at one CTA per output tile,
// and a memory-bound GEMM needs bytes in flight on every SM: K is split until there are about
// kSplitKCtasPerSm CTAs per SM (each split ≥ 8 steps of 32), the float32 partial sums go to a
// stream-ordered workspace, and split_k_sum_kernel adds them in order (deterministic) with the bias.
constexpr int kSplitKCtasPerSm = 2;
constexpr int64_t kMaxSplits = 16;

template <typename T, int MT, int NT>
void launch_tensor_core_tiles(const LinearArgs& a, bool aligned, int sms, Stream& stream) {
  CudaStream& cuda = as_cuda_stream(stream);
  const cudaStream_t s = cuda.handle();
  const int device = cuda.device().index;
  const int64_t M = a.num_tokens, N = a.out_features, K = a.in_features;
  const int64_t tiles = ((N + 32 * NT - 1) / (32 * NT)) * ((M + 32 * MT - 1) / (32 * MT));
  const int64_t k_tiles = (K + 31) / 32;
  int64_t splits = 1;
  if (tiles < kSplitKCtasPerSm * sms) {
    splits = std::min<int64_t>({(kSplitKCtasPerSm * sms + tiles - 1) / tiles, std::max<int64_t>(1, k_tiles / 8), kMaxSplits});
  }
  const int64_t k_split = (k_tiles + splits - 1) / splits * 32;
  splits = (K + k_split - 1) / k_split;
  const dim3 grid(static_cast<unsigned>((N + 32 * NT - 1) / (32 * NT)), static_cast<unsigned>((M + 32 * MT - 1) / (32 * MT)),
                  static_cast<unsigned>(splits));
  auto launch = [&](float* partial) {
    if (!aligned) return launch_tensor_core_kernel<T, MT, NT, false, 2>(a, grid, partial, k_split, device, s);
    // Four stages where an SM has the shared memory for two such CTAs (sm_80, sm_90), else three.
    if (device_attribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>(device) >= 2 * tensor_core_smem<MT, NT, 4>() + 2048)
      return launch_tensor_core_kernel<T, MT, NT, true, 4>(a, grid, partial, k_split, device, s);
    launch_tensor_core_kernel<T, MT, NT, true, 3>(a, grid, partial, k_split, device, s);
  };
  if (splits == 1) return launch(nullptr);
  const size_t bytes = static_cast<size_t>(splits * M * N) * sizeof(float);
  void* workspace = workspace_allocate(bytes, stream);
  try {
    launch(static_cast<float*>(workspace));
    PAGEDLLM_CUDA_CHECK(cudaGetLastError());
    const int64_t blocks = std::min<int64_t>((M * N + 255) / 256, 8LL * sms);
    split_k_sum_kernel<<<static_cast<unsigned>(blocks), 256, 0, s>>>(a, static_cast<const float*>(workspace), static_cast<int>(splits));
  } catch (...) {
    workspace_deallocate(workspace, bytes, stream);
    throw;
  }
  workspace_deallocate(workspace, bytes, stream);
}

template <typename T>
void launch_tensor_core(const LinearArgs& a, bool aligned, int sms, Stream& stream) {
  auto tiles = [&](int64_t bm, int64_t bn) { return ((a.num_tokens + bm - 1) / bm) * ((a.out_features + bn - 1) / bn); };
  if (tiles(128, 128) >= sms) launch_tensor_core_tiles<T, 4, 4>(a, aligned, sms, stream);
  else if (tiles(64, 128) >= sms) launch_tensor_core_tiles<T, 2, 4>(a, aligned, sms, stream);
  else launch_tensor_core_tiles<T, 2, 2>(a, aligned, sms, stream);
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
  const int sms = device_attribute<cudaDevAttrMultiProcessorCount>(device);
  if (a.num_tokens <= 8) {
    auto with_x = [&](auto w_tag) {
      using W = decltype(w_tag);
      switch (a.x_dtype) {
        case DType::Float16: launch_gemv<W, half_t>(a, aligned, sms, s); break;
        case DType::BFloat16: launch_gemv<W, bfloat16_t>(a, aligned, sms, s); break;
        default: launch_gemv<W, float>(a, aligned, sms, s); break;
      }
    };
    switch (a.weight_dtype) {
      case DType::Float16: with_x(half_t{}); break;
      case DType::BFloat16: with_x(bfloat16_t{}); break;
      default: with_x(float{}); break;
    }
  } else if (a.x_dtype == a.weight_dtype && a.x_dtype != DType::Float32 && tensor_cores_usable(device)) {
    if (a.x_dtype == DType::Float16) launch_tensor_core<half_t>(a, aligned, sms, stream);
    else launch_tensor_core<bfloat16_t>(a, aligned, sms, stream);
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
