// awq_linear_cuda and awq_dequantize_cuda: y = x · W with W the AWQ int4
// weight of include/pagedllm/awq.h, dequantized inside the kernels. CPU twin
// and argument checks: cpu/awq.cpp. No cuBLAS: four paths.
//
// - GEMV (M ≤ 8, decode): awq_gemv2_kernel, described where it is defined:
//   256-column × K-slice CTAs, 16-byte (8/4-byte for larger M) loads of the
//   packed words issued in batches before their math, codes turned into
//   floats by one AND each (subnormal floats, no conversion), x staged in
//   shared memory, K split across CTAs as below. Not yet run on a GPU, so the
//   dispatch uses it only with PAGEDLLM_AWQ_GEMV=new (read once); tests and
//   benchmarks ask for it as AwqCudaKernel::Gemv. The previous GEMV
//   (AwqCudaKernel::GemvLegacy) is the default, and also serves M > 8 when the
//   GEMV is asked for and weights whose buffers are not aligned for the new
//   kernel's loads:
// - Previous GEMV (awq_gemv_kernel): a CTA owns 16 words (128 columns) of a K range;
//   each thread streams its own contiguous rows with 16-byte (or 8/4-byte for
//   larger M) evict-first loads of the packed words, four rows' loads in
//   flight before their math, and keeps per-group sums
//   Σ x·q and Σ x, applying each group's zero point and scale once per group:
//   Σ_{k∈g} x·W = s·(Σ x·q − z·Σ x). A code becomes a float with one OR into
//   the mantissa of 2^23 and one subtract (no int→float conversion: those run
//   at a quarter rate). Threads are reduced with shuffles and shared memory;
//   K is split across CTAs (float32 partials in a stream-ordered workspace,
//   summed by a second kernel) until every SM has two CTAs. Napkin: 4096 ×
//   4096 int4 is 8 MiB, 2.5 µs at H100's 3.35 TB/s — the kernel must keep
//   ~3 MB in flight, hence the split.
// - Tensor cores (mid M, sm_80+, float16/bfloat16 x): a CTA computes a
//   (32·MT) × 128 tile of y with mma.sync m16n8k16 (float32 accumulate). Per
//   K step of 32: the x tile arrives by cp.async (two stages, as in
//   cuda/linear.cu); the packed words are fetched into registers one step
//   ahead and dequantized into shared memory as [n][k] (lanes over k, so the
//   2-byte stores are conflict-free), which is the B operand layout ldmatrix
//   reads. One K step never spans two groups (G is 32, 64, 128 or K).
// - SIMT (float32 x, or sm_75): 64 × 64 tiles in float32 with W dequantized
//   to exactly its float16 values in shared memory.
// - Dequantize + dense GEMM (large M): W is written transposed into a
//   workspace [N, K] of x's 16-bit type (float16 for float32 x) and
//   linear_cuda (model_ops.h) runs on it: past the crossover the GEMM is
//   compute-bound and dequantizing once costs less than in every tile.
//
// The dispatch thresholds (kGemvMaxRows, kDequantMinRows) and the split-K
// targets are to be tuned with benchmarks/awq-gemm.bench.ts on a GPU. What the
// first H200 run measured (benchmarks/results/linear-H200-2026-12-04.json, auto
// dispatch): at M = 128 the tensor-core kernel took 0.320 ms (4096 × 4096) and
// 0.342 ms (4096 × 11008) where the dense fp16 GEMM on the same shapes took
// 0.082 and 0.125 ms; dequantizing the weight moves 42 / 113 MB, about 10 /
// 27 µs at the 4.2 TB/s copy rate, so dequantize + dense is the faster path
// from well below M = 128 on that GPU. kDequantMinRows was 256 (vLLM's AWQ
// threshold) and is now 16; the tensor-core kernel keeps 9 ≤ M < 16 until it
// is made faster. Each kernel is tested on every shape whatever the dispatch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cuda_stream.h"
#include "mma.cuh"
#include "pagedllm/awq.h"
#include "pagedllm/convert.h"
#include "pagedllm/memory_resource.h"

namespace pagedllm {
namespace {

constexpr int64_t kGemvMaxRows = 8;       // M ≤ this: GEMV (to tune: vLLM's AWQ GEMV wins to ~8)
constexpr int64_t kDequantMinRows = 16;   // M ≥ this: dequantize + dense GEMM (see above)
constexpr int kGemvTileWords = 16;        // words (128 columns) per GEMV CTA
constexpr int kThreads = 256;

// ---- device helpers ------------------------------------------------------------------------------

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

// out[m, n] = acc + bias[n], rounded to the output dtype.
__device__ __forceinline__ void store_out(const AwqLinearArgs& a, int64_t m, int64_t n, float acc) {
  if (a.bias) acc += load_any(a.bias, a.bias_dtype, n);
  store_any(a.out, a.out_dtype, m * a.out_stride + n, acc);
}

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(half_t v) { return __half2float(__ushort_as_half(v.bits)); }
__device__ __forceinline__ float to_f(bfloat16_t v) { return __uint_as_float(static_cast<uint32_t>(v.bits) << 16); }

// The code in slot `slot` of a word as a float: OR-ed into the mantissa of 2^23, minus 2^23 (exact).
__device__ __forceinline__ float slot_code(uint32_t word, int slot) {
  return __uint_as_float(((word >> (4 * slot)) & 0xFu) | 0x4B000000u) - 8388608.0f;
}

// (q − z)·s of column j of a word pair, exact in float32 (awq.h): W before its float16 rounding.
__device__ __forceinline__ float dequant_exact(uint32_t qword, uint32_t zword, int j, float s) {
  const int shift = awq::column_shift(j);
  return static_cast<float>(static_cast<int>((qword >> shift) & 0xFu) - static_cast<int>((zword >> shift) & 0xFu)) * s;
}

template <typename T>
__device__ __forceinline__ uint16_t to_bits(float v);
template <>
__device__ __forceinline__ uint16_t to_bits<half_t>(float v) { return __half_as_ushort(__float2half_rn(v)); }
template <>
__device__ __forceinline__ uint16_t to_bits<bfloat16_t>(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

template <int VEC>
__device__ __forceinline__ void load_words(const int32_t* p, uint32_t (&w)[VEC]) {
  if constexpr (VEC == 4) {
    const int4 v = __ldcs(reinterpret_cast<const int4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (VEC == 2) {
    const int2 v = __ldcs(reinterpret_cast<const int2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = static_cast<uint32_t>(__ldcs(p));
  }
}

using namespace tc;  // cp.async, ldmatrix, mma.sync: cuda/mma.cuh

// ---- kernels: GEMV -------------------------------------------------------------------------------

// CTA (blockIdx.x, blockIdx.y, blockIdx.z) = (16-word column tile, MT-row chunk of x, K range).
// Thread: TPR threads share a row (VEC words each); RP row-threads split the CTA's K range into
// contiguous runs. partial: null → y is written (+ bias); else [splits, M, N] float32 partials.
template <int MT, int VEC, typename X>
__global__ void __launch_bounds__(kThreads) awq_gemv_kernel(AwqLinearArgs a, float* partial, int64_t rows_per_split) {
  constexpr int TPR = kGemvTileWords / VEC, RP = kThreads / TPR, COLS = 8 * kGemvTileWords;
  __shared__ float red[kThreads / 32][MT][COLS];
  const AwqWeight& w = a.weight;
  const int64_t K = w.in_features, N = w.out_features, G = w.group_size, words = N / 8, M = a.num_tokens;
  const int tid = threadIdx.x, tp = tid % TPR, rt = tid / TPR, lane = tid & 31, warp = tid >> 5;
  const int64_t word0 = static_cast<int64_t>(blockIdx.x) * kGemvTileWords + tp * VEC;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int64_t kb = static_cast<int64_t>(blockIdx.z) * rows_per_split, ke = min(K, kb + rows_per_split);
  const int64_t run = (ke - kb + RP - 1) / RP, k_begin = kb + rt * run, k_end = min(ke, k_begin + run);
  const bool active = word0 < words;  // idle threads still join the reductions
  const X* x = static_cast<const X*>(a.x);

  float out[MT][VEC * 8];  // slot order: out[m][v·8 + i] is column 8·(word0 + v) + kOrder[i]
  float acc[MT][VEC * 8], xsum[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int e = 0; e < VEC * 8; ++e) out[m][e] = 0.0f;

  // y += s · (Σ x·q − z · Σ x) for group g, columns of this thread.
  auto flush = [&](int64_t g) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const uint32_t zword = static_cast<uint32_t>(w.qzeros[g * words + word0 + v]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float s = __half2float(__ushort_as_half(w.scales[g * N + 8 * (word0 + v) + awq::slot_column(i)]));
        const float z = static_cast<float>((zword >> (4 * i)) & 0xFu);
#pragma unroll
        for (int m = 0; m < MT; ++m) out[m][v * 8 + i] = fmaf(s, acc[m][v * 8 + i] - z * xsum[m], out[m][v * 8 + i]);
      }
    }
  };

  // acc[m][·] += x[m, k] · q[k, ·] for the U rows from k (all in one group).
  auto rows = [&](int64_t k, auto unroll) {
    constexpr int U = decltype(unroll)::value;
    uint32_t qw[U][VEC];
    float xv[U][MT];
#pragma unroll
    for (int u = 0; u < U; ++u) load_words<VEC>(w.qweight + (k + u) * words + word0, qw[u]);  // all loads first
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        xv[u][m] = m0 + m < M ? to_f(x[(m0 + m) * a.x_stride + k + u]) : 0.0f;
        xsum[m] += xv[u][m];
      }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int v = 0; v < VEC; ++v)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float q = slot_code(qw[u][v], i);
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[m][v * 8 + i] = fmaf(xv[u][m], q, acc[m][v * 8 + i]);
        }
  };

  if (active && k_begin < k_end) {
    // Group by group over this thread's rows; within a group, 4 rows' loads are issued before their
    // math so that each thread keeps several 16-byte loads in flight.
    for (int64_t k = k_begin; k < k_end;) {
      const int64_t g = k / G, seg_end = min(k_end, (g + 1) * G);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        xsum[m] = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC * 8; ++e) acc[m][e] = 0.0f;
      }
      for (; k + 4 <= seg_end; k += 4) rows(k, std::integral_constant<int, 4>{});
      for (; k < seg_end; ++k) rows(k, std::integral_constant<int, 1>{});
      flush(g);
    }
  }

  // Sum over the row-threads: lanes of a warp with the same tp, then the warps.
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int e = 0; e < VEC * 8; ++e) {
      float v = out[m][e];
#pragma unroll
      for (int off = TPR; off < 32; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane < TPR) red[warp][m][(tp * VEC + e / 8) * 8 + awq::slot_column(e % 8)] = v;
    }
  __syncthreads();
  for (int e = tid; e < MT * COLS; e += kThreads) {
    const int m = e / COLS, c = e % COLS;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * COLS + c;
    if (m0 + m >= M || n >= N) continue;
    float v = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kThreads / 32; ++wi) v += red[wi][m][c];
    if (partial) partial[(static_cast<int64_t>(blockIdx.z) * M + m0 + m) * N + n] = v;
    else store_out(a, m0 + m, n, v);
  }
}

// y[m, n] = Σ_s partial[s, m, n] (+ bias).
__global__ void awq_split_sum_kernel(AwqLinearArgs a, const float* partial, int splits) {
  const int64_t M = a.num_tokens, N = a.weight.out_features;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[s * M * N + i];
    store_out(a, i / N, i % N, v);
  }
}

// ---- kernels: GEMV (current) ---------------------------------------------------------------------
//
// CTA (blockIdx.x, blockIdx.y, blockIdx.z) = (32-word = 256-column tile, MT-row chunk of x, K slice).
// A row's 32 words (128 contiguous bytes) are read by LW = 32 / VEC lanes (VEC words each), so a
// warp holds VEC rows per load and the CTA RT = 8 · VEC "row-threads" per column. Row-thread rt owns
// `run` consecutive rows of the CTA's slice (run a multiple of 8 dividing G, or any when G = K, so a
// thread's rows are one group: it applies one zero point and one scale, once). It issues a batch of
// UB rows' loads (UB · VEC = 16 words, 64 bytes, in flight; 8 or 4 words for MT = 8) before any
// math, then its zero points (and an L1 prefetch of its scales, read after the sums), while x is
// staged in shared memory; other warps (2-3 CTAs of 8 per SM) cover the next batch's latency.
//
// The codes become floats with no conversion at all: word & (0xF << 4c) read as a float is the
// subnormal q · 2^(4c − 149) (bit patterns below 2^24 are exactly bits · 2^−149), so the FMA
// x · 2^(89 − 4c) · that = x · q · 2^−60, exact up to the FMA's own rounding. x is staged once as
// the four scaled copies (c = 0 … 3; slots 4 … 7 use word >> 16), and the thread's sums are
// Σ x·q · 2^−60 and Σ x · 2^89; its result s·(Σ x·q − z·Σ x) is formed with z the same way, and the
// CTA's sum is scaled back by 2^60 (exact). Per code: one LOP3 and MT FFMAs (plus a shift per 8).
// The FMAs are inline PTX without .ftz so that a -ftz build keeps the subnormal operands. Range:
// |x| < 2^39 (x · 2^89 must be finite) and products x · q below 2^−66 in magnitude lose bits
// (subnormal at 2^−60): neither happens for activations.
//
// Reduction: shuffles across the VEC row-groups of a warp, then shared memory across the 8 warps
// (fixed order: deterministic). K slices: float32 partials [splits, M, N] summed by
// awq_split_sum_kernel, as the previous GEMV.
constexpr int kGemv2TileWords = 32;
constexpr int kGemv2Smem = 2112;  // float4s: x staging (≤ 2048 + 32 pad) or the reduction (2048)
constexpr float kTwo89 = 618970019642690137449562112.0f;  // 2^89
constexpr float kTwo60 = 1152921504606846976.0f;          // 2^60
constexpr float kTwoM4 = 0.0625f;                         // 2^-4

__device__ __forceinline__ float fma_subnormal(float a, float b, float c) {
  float d;
  asm("fma.rn.f32 %0, %1, %2, %3;\n" : "=f"(d) : "f"(a), "f"(b), "f"(c));
  return d;
}

// The 8 codes of a word as subnormal floats, in slot order: slot c (and c + 4) is q · 2^(4c − 149).
__device__ __forceinline__ void word_codes(uint32_t word, float (&q)[8]) {
  const uint32_t hi = word >> 16;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    q[c] = __uint_as_float(word & (0xFu << (4 * c)));
    q[c + 4] = __uint_as_float(hi & (0xFu << (4 * c)));
  }
}

template <int VEC>
__device__ __forceinline__ void load_words_ldg(const int32_t* p, uint32_t (&w)[VEC]) {
  if constexpr (VEC == 4) {
    const int4 v = __ldg(reinterpret_cast<const int4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (VEC == 2) {
    const int2 v = __ldg(reinterpret_cast<const int2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = static_cast<uint32_t>(__ldg(p));
  }
}

// MT: rows of x per CTA (M ≤ MT); VEC: words per load; U: rows per batch of loads. partial: null →
// y is written (+ bias); else [splits, M, N] float32 partials. run: rows per row-thread (see above).
// CTAs per SM the registers are capped for (launch bounds): 3 (≤ 80 registers) for MT ≤ 2, else 2
// (≤ 128) — except MT = 8 on sm_86/87/89, where ptxas spills at 128 (1: no cap). Device code only.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 870 || __CUDA_ARCH__ == 890)
#define PAGEDLLM_GEMV2_MIN_BLOCKS(MT) ((MT) <= 2 ? 3 : (MT) == 8 ? 1 : 2)
#else
#define PAGEDLLM_GEMV2_MIN_BLOCKS(MT) ((MT) <= 2 ? 3 : 2)
#endif
template <int MT, int VEC, int U, typename X>
__global__ void __launch_bounds__(kThreads, PAGEDLLM_GEMV2_MIN_BLOCKS(MT)) awq_gemv2_kernel(AwqLinearArgs a, float* partial, int run) {
  constexpr int LW = kGemv2TileWords / VEC, RG = 32 / LW, RT = (kThreads / 32) * RG, COLS = 8 * kGemv2TileWords;
  constexpr int MC = MT < 4 ? MT : 4;  // rows of y per round of the cross-warp reduction
  // Rows per batch (a divisor of 8): ptxas keeps these without spills at the launch bounds'
  // register caps — sm_90 holds MT = 8 with 8 rows, sm_80 with 4; sm_86/89 MT = 2 with 4.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int UB = MT == 8 ? 2 * U : U;
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 870 || __CUDA_ARCH__ == 890)
  constexpr int UB = MT == 2 ? U / 2 : U;
#else
  constexpr int UB = U;
#endif
  static_assert(RT * UB * MT + RT <= kGemv2Smem && (kThreads / 32) * MC * COLS <= 4 * kGemv2Smem, "shared memory");
  __shared__ float4 smem[kGemv2Smem];
  const AwqWeight& w = a.weight;
  const int64_t K = w.in_features, N = w.out_features, G = w.group_size, words = N / 8, M = a.num_tokens;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, lw = lane % LW, rt = warp * RG + lane / LW;
  const int64_t word0 = static_cast<int64_t>(blockIdx.x) * kGemv2TileWords + lw * VEC;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int slice = RT * run;
  const int64_t k0 = static_cast<int64_t>(blockIdx.z) * slice, kb = k0 + static_cast<int64_t>(rt) * run;
  const bool active = word0 < words && kb < K;  // words % VEC == 0: a thread's VEC words are all in or all out
  const int64_t g = active ? kb / G : 0;

  uint32_t qw[UB][VEC];
  auto load_batch = [&](int64_t k) {
#pragma unroll
    for (int u = 0; u < UB; ++u) {
      if (active && k + u < K) {
        load_words<VEC>(w.qweight + (k + u) * words + word0, qw[u]);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) qw[u][v] = 0u;
      }
    }
  };
  load_batch(kb);  // the first loads go out before anything else

  // The zero points now (VEC registers); the scales (4 · VEC registers) only prefetched into L1, and
  // read after the sums (an L1 or L2 hit then), which keeps the kernel at ≤ 80 registers.
  uint32_t zw[VEC];
  const uint16_t* scales = w.scales + g * N + 8 * word0;
  if (active) {
    load_words_ldg<VEC>(w.qzeros + g * words + word0, zw);
#pragma unroll
    for (int v = 0; v < VEC; ++v) asm volatile("prefetch.global.L1 [%0];\n" ::"l"(scales + 8 * v));
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) zw[v] = 0u;
  }

  // x of the slice → shared memory: row-thread r's rows at [r · pitch, r · pitch + run · MT), m fastest.
  const X* x = static_cast<const X*>(a.x);
  const int pitch = run * MT + 1;  // + 1: the VEC row-groups of a warp read different banks
  for (int e = tid; e < slice * MT; e += kThreads) {
    const int m = e / slice, kl = e % slice;
    const int64_t k = k0 + kl, row = m0 + m;
    const float v = k < K && row < M ? to_f(x[row * a.x_stride + k]) : 0.0f;
    const float v0 = v * kTwo89, v1 = v0 * kTwoM4, v2 = v1 * kTwoM4, v3 = v2 * kTwoM4;
    smem[(kl / run) * pitch + (kl % run) * MT + m] = make_float4(v0, v1, v2, v3);
  }
  __syncthreads();

  float acc[MT][VEC * 8], xsum[MT];  // Σ x·q · 2^−60 (slot order) and Σ x · 2^89
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    xsum[m] = 0.0f;
#pragma unroll
    for (int e = 0; e < VEC * 8; ++e) acc[m][e] = 0.0f;
  }
  const float4* xr = smem + rt * pitch;
  const int batches = run / UB;  // run: a multiple of 8 (the launcher) and so of UB
  for (int b = 0; b < batches; ++b) {
    if (b > 0) load_batch(kb + static_cast<int64_t>(b) * UB);
#pragma unroll
    for (int u = 0; u < UB; ++u) {
      float q[VEC][8];
#pragma unroll
      for (int v = 0; v < VEC; ++v) word_codes(qw[u][v], q[v]);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float4 xv = xr[(b * UB + u) * MT + m];
        const float xs[4] = {xv.x, xv.y, xv.z, xv.w};
        xsum[m] += xv.x;
#pragma unroll
        for (int v = 0; v < VEC; ++v)
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[m][v * 8 + i] = fma_subnormal(xs[i & 3], q[v][i], acc[m][v * 8 + i]);
      }
    }
  }

  // r = s · (Σ x·q − z · Σ x) · 2^−60 per column (slot order), then summed over the row-threads.
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    float z[8];
    word_codes(zw[v], z);
    const uint4 sv = active ? __ldg(reinterpret_cast<const uint4*>(scales + 8 * v)) : make_uint4(0u, 0u, 0u, 0u);
    const uint32_t sw[4] = {sv.x, sv.y, sv.z, sv.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int col = awq::slot_column(i);
      const float s = __half2float(__ushort_as_half(static_cast<uint16_t>(sw[col >> 1] >> (16 * (col & 1)))));
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float xs = (i & 3) == 0 ? xsum[m] : (i & 3) == 1 ? xsum[m] * kTwoM4 : (i & 3) == 2 ? xsum[m] * (kTwoM4 * kTwoM4) : xsum[m] * (kTwoM4 * kTwoM4 * kTwoM4);
        acc[m][v * 8 + i] = s * fma_subnormal(-xs, z[i], acc[m][v * 8 + i]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int e = 0; e < VEC * 8; ++e)
#pragma unroll
      for (int off = LW; off < 32; off <<= 1) acc[m][e] += __shfl_xor_sync(0xffffffffu, acc[m][e], off);

  float* red = reinterpret_cast<float*>(smem);  // [warp][MC][COLS]
#pragma unroll
  for (int mc = 0; mc < MT; mc += MC) {
    __syncthreads();  // the x staging (or the previous round) is done with smem
    if (lane < LW) {
#pragma unroll
      for (int mm = 0; mm < MC; ++mm)
#pragma unroll
        for (int v = 0; v < VEC; ++v)
#pragma unroll
          for (int i = 0; i < 8; ++i)
            red[(warp * MC + mm) * COLS + (lw * VEC + v) * 8 + awq::slot_column(i)] = acc[mc + mm][v * 8 + i];
    }
    __syncthreads();
    for (int e = tid; e < MC * COLS; e += kThreads) {
      const int mm = e / COLS, c = e % COLS;
      const int64_t m = m0 + mc + mm, n = static_cast<int64_t>(blockIdx.x) * COLS + c;
      float v = 0.0f;
#pragma unroll
      for (int wi = 0; wi < kThreads / 32; ++wi) v += red[(wi * MC + mm) * COLS + c];
      v *= kTwo60;
      if (m >= M || n >= N) continue;
      if (partial) partial[(static_cast<int64_t>(blockIdx.z) * M + m) * N + n] = v;
      else store_out(a, m, n, v);
    }
  }
}

// ---- kernels: tensor cores ------------------------------------------------------------------------

// T: half_t or bfloat16_t (x's dtype; W is rounded to it). Warp (wm, wn) of the 2 × 4 grid owns
// rows wm·16·MT … and columns wn·32 … of the (32·MT) × 128 CTA tile. ALIGNED: K % 8 == 0, x stride
// % 8 == 0 and x 16-byte aligned (cp.async of whole 16-byte chunks).
template <typename T, int MT, bool ALIGNED>
__global__ void __launch_bounds__(kThreads) awq_gemm_tensor_core_kernel(AwqLinearArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int NT = 4, BM = 32 * MT, BN = 128, BK = 32, LDS = BK + 8;
  __shared__ __align__(16) uint16_t x_tile[2][BM * LDS];
  __shared__ __align__(16) uint16_t w_tile[BN * LDS];  // W[k0 + k, n0 + n] at w_tile[n · LDS + k]

  const AwqWeight& w = a.weight;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int64_t M = a.num_tokens, N = w.out_features, K = w.in_features, G = w.group_size, xs = a.x_stride;
  const int64_t words = N / 8;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);

  auto load_x = [&](int stage, int64_t k0) {
    for (int c = tid; c < BM * (BK / 8); c += kThreads) {
      const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
      const int64_t gr = m0 + r, gk = k0 + kc;
      uint16_t* dst = x_tile[stage] + r * LDS + kc;
      if constexpr (ALIGNED) {
        const bool valid = gr < M && gk < K;
        cp_async16_zfill(dst, valid ? x + gr * xs + gk : x, valid);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = gr < M && gk + e < K ? x[gr * xs + gk + e] : uint16_t(0);
      }
    }
    if constexpr (ALIGNED) cp_async_commit();
  };
  // This thread's two words of a K step: row k0 + lane, words warp and warp + 8 of the tile.
  auto fetch_words = [&](int64_t k0, uint32_t (&qw)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t k = k0 + lane, word = n0 / 8 + warp + 8 * h;
      qw[h] = k < K && word < words ? static_cast<uint32_t>(__ldg(w.qweight + k * words + word)) : 0u;
    }
  };
  auto dequantize = [&](int64_t k0, const uint32_t (&qw)[2]) {
    const int64_t g = k0 / G;  // one group per K step (G % 32 == 0, or G == K)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t word = n0 / 8 + warp + 8 * h;
      const int col = 8 * (warp + 8 * h);
      const bool valid = k0 + lane < K && word < words;
      const uint32_t zword = word < words ? static_cast<uint32_t>(__ldg(w.qzeros + g * words + word)) : 0u;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float s = word < words ? __half2float(__ushort_as_half(w.scales[g * N + 8 * word + j])) : 0.0f;
        w_tile[(col + j) * LDS + lane] = valid ? to_bits<T>(dequant_exact(qw[h], zword, j, s)) : uint16_t(0);
      }
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int64_t k_tiles = (K + BK - 1) / BK;
  uint32_t qw[2];
  load_x(0, 0);
  fetch_words(0, qw);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    dequantize(kt * BK, qw);  // the previous step's MMAs are done (trailing __syncthreads)
    if (kt + 1 < k_tiles) {
      load_x((kt + 1) & 1, (kt + 1) * BK);  // the next stage's copies overlap this stage's math
      fetch_words((kt + 1) * BK, qw);
      if constexpr (ALIGNED) cp_async_wait<1>();
    } else {
      if constexpr (ALIGNED) cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* xt = x_tile[kt & 1];
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i)
        ldmatrix_x4(af[i], xt + (wm * 16 * MT + i * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int j = 0; j < NT / 2; ++j) {
        uint32_t r[4];
        ldmatrix_x4(r, w_tile + (wn * 8 * NT + j * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + ks * 16 + ((lane >> 3) & 1) * 8);
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
    __syncthreads();
  }

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

// ---- kernels: SIMT ---------------------------------------------------------------------------------

// 64 × 64 tiles of y, K steps of 16; thread (ty, tx) owns rows ty + 16i, columns tx + 16j.
template <typename X>
__global__ void __launch_bounds__(kThreads) awq_gemm_simt_kernel(AwqLinearArgs a) {
  constexpr int BM = 64, BN = 64, BK = 16;
  __shared__ float xs_tile[BK][BM + 4];
  __shared__ float ws_tile[BK][BN + 4];
  const AwqWeight& w = a.weight;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t M = a.num_tokens, N = w.out_features, K = w.in_features, G = w.group_size, words = N / 8;
  const X* x = static_cast<const X*>(a.x);
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = tid + r * kThreads, row = e / BK, kk = e % BK;
      const int64_t gk = k0 + kk, gm = m0 + row;
      xs_tile[kk][row] = gm < M && gk < K ? to_f(x[gm * a.x_stride + gk]) : 0.0f;
    }
    if (tid < BK * (BN / 8)) {  // one word (8 columns of one row) per thread, exactly W
      const int kk = tid / (BN / 8), wi = tid % (BN / 8);
      const int64_t k = k0 + kk, word = n0 / 8 + wi;
      const bool valid = k < K && word < words;
      const int64_t g = valid ? k / G : 0;
      const uint32_t qword = valid ? static_cast<uint32_t>(w.qweight[k * words + word]) : 0u;
      const uint32_t zword = valid ? static_cast<uint32_t>(w.qzeros[g * words + word]) : 0u;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float s = valid ? half_bits_to_float(w.scales[g * N + 8 * word + j]) : 0.0f;
        ws_tile[kk][8 * wi + j] = half_bits_to_float(float_to_half_bits(dequant_exact(qword, zword, j, s)));
      }
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

// ---- kernels: dequantize ------------------------------------------------------------------------

// W → out [K, N] (float16 bits or float32): one word (8 columns) per thread, lanes along N.
__global__ void awq_dequantize_kernel(AwqWeight w, void* out, DType out_dtype) {
  const int64_t words = w.out_features / 8, total = w.in_features * words;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = i / words, word = i % words, g = k / w.group_size;
    const uint32_t qword = static_cast<uint32_t>(w.qweight[i]), zword = static_cast<uint32_t>(w.qzeros[g * words + word]);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint16_t h = float_to_half_bits(dequant_exact(qword, zword, j, half_bits_to_float(w.scales[g * w.out_features + 8 * word + j])));
      if (out_dtype == DType::Float16) static_cast<uint16_t*>(out)[8 * i + j] = h;
      else static_cast<float*>(out)[8 * i + j] = half_bits_to_float(h);
    }
  }
}

// W transposed → out [N, K] of T (the dense linear's weight orientation). A CTA moves a 32-row ×
// 32-word tile through shared memory: read along N (coalesced words), written along K.
template <typename T>
__global__ void __launch_bounds__(kThreads) awq_dequantize_transposed_kernel(AwqWeight w, uint16_t* out) {
  __shared__ uint32_t tile[32][33];
  const int64_t K = w.in_features, words = w.out_features / 8;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * 32, c0 = static_cast<int64_t>(blockIdx.x) * 32;
  const int lane = threadIdx.x & 31, row = threadIdx.x >> 5;  // 8 rows of 32 lanes
  for (int r = row; r < 32; r += 8) {
    const int64_t k = k0 + r, c = c0 + lane;
    tile[r][lane] = k < K && c < words ? static_cast<uint32_t>(w.qweight[k * words + c]) : 0u;
  }
  __syncthreads();
  const int64_t k = k0 + lane;  // lanes along K for the writes
  if (k >= K) return;
  const int64_t g = k / w.group_size;
  for (int r = row; r < 32; r += 8) {
    const int64_t c = c0 + r;
    if (c >= words) break;
    const uint32_t zword = static_cast<uint32_t>(w.qzeros[g * words + c]);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float s = half_bits_to_float(w.scales[g * w.out_features + 8 * c + j]);
      out[(8 * c + j) * K + k] = to_bits<T>(dequant_exact(tile[lane][r], zword, j, s));
    }
  }
}

// ---- launchers ------------------------------------------------------------------------------------

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether the tensor-core kernel runs as sm_80+ code on `device` (not compute_75 PTX JIT-compiled
// with an empty body). Cached per device.
bool tensor_cores_usable(int device) {
  static std::atomic<int> cached[64];  // 0: not asked yet, 1: no, 2: yes
  if (device >= 0 && device < 64) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known) return known == 2;
  }
  cudaFuncAttributes attr{};
  PAGEDLLM_CUDA_CHECK(cudaFuncGetAttributes(&attr, awq_gemm_tensor_core_kernel<half_t, 2, true>));
  const bool usable = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
  if (device >= 0 && device < 64) cached[device].store(usable ? 2 : 1, std::memory_order_relaxed);
  return usable;
}

// A stream-ordered workspace from the device's default resource, freed (stream-ordered) on scope exit.
struct Workspace {
  Workspace(size_t n, Stream& s) : bytes(n), stream(s) { ptr = workspace_allocate(bytes, stream); }
  ~Workspace() { workspace_deallocate(ptr, bytes, stream); }
  Workspace(const Workspace&) = delete;
  size_t bytes;
  Stream& stream;
  void* ptr;
};

template <int MT, int VEC, typename X>
void launch_gemv_x(const AwqLinearArgs& a, Stream& stream, int sms, cudaStream_t s) {
  constexpr int RP = kThreads / (kGemvTileWords / VEC);
  const int64_t K = a.weight.in_features, words = a.weight.out_features / 8;
  const int64_t tiles = (words + kGemvTileWords - 1) / kGemvTileWords, chunks = (a.num_tokens + MT - 1) / MT;
  // Split K until every SM has two CTAs, keeping ≥ 8 rows per thread.
  int64_t splits = std::max<int64_t>(1, (2 * sms + tiles * chunks - 1) / (tiles * chunks));
  splits = std::min<int64_t>({splits, std::max<int64_t>(1, K / (8 * RP)), 64});
  const int64_t rows_per_split = (K + splits - 1) / splits;
  splits = (K + rows_per_split - 1) / rows_per_split;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks), static_cast<unsigned>(splits));
  if (splits == 1) {
    awq_gemv_kernel<MT, VEC, X><<<grid, kThreads, 0, s>>>(a, nullptr, rows_per_split);
    PAGEDLLM_CUDA_CHECK(cudaGetLastError());
    return;
  }
  Workspace partial(static_cast<size_t>(splits * a.num_tokens * a.weight.out_features) * sizeof(float), stream);
  awq_gemv_kernel<MT, VEC, X><<<grid, kThreads, 0, s>>>(a, static_cast<float*>(partial.ptr), rows_per_split);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
  const int64_t total = a.num_tokens * a.weight.out_features;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 8 * sms));
  awq_split_sum_kernel<<<blocks, kThreads, 0, s>>>(a, static_cast<const float*>(partial.ptr), static_cast<int>(splits));
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

template <int MT, int VEC>
void launch_gemv(const AwqLinearArgs& a, Stream& stream, int sms, cudaStream_t s) {
  switch (a.x_dtype) {
    case DType::Float16: launch_gemv_x<MT, VEC, half_t>(a, stream, sms, s); break;
    case DType::BFloat16: launch_gemv_x<MT, VEC, bfloat16_t>(a, stream, sms, s); break;
    default: launch_gemv_x<MT, VEC, float>(a, stream, sms, s); break;
  }
}

void run_gemv(const AwqLinearArgs& a, Stream& stream, int sms, cudaStream_t s) {
  // 16-byte loads need every row's words 16-byte aligned; fewer words per thread for larger M keep
  // the accumulators (MT · 8 · VEC) at 64 registers.
  const bool vec = a.weight.out_features / 8 % 4 == 0 && aligned16(a.weight.qweight);
  if (vec && a.num_tokens == 1) launch_gemv<1, 4>(a, stream, sms, s);
  else if (vec && a.num_tokens == 2) launch_gemv<2, 4>(a, stream, sms, s);
  else if (vec && a.num_tokens <= 4) launch_gemv<4, 2>(a, stream, sms, s);
  else launch_gemv<8, 1>(a, stream, sms, s);
}

// The current GEMV (awq_gemv2_kernel): run = the largest of max(U, 8) · 2^i ≤ 64 that fits the
// shared memory, divides G (any run when G = K) and still gives two CTAs per SM (to tune on a GPU);
// false when the grid cannot hold the K slices (the caller falls back to the previous GEMV).
template <int MT, int VEC, int U, typename X>
bool launch_gemv2_x(const AwqLinearArgs& a, Stream& stream, int sms, cudaStream_t s) {
  constexpr int RT = (kThreads / 32) * VEC;  // row-threads per CTA (see the kernel)
  const int64_t K = a.weight.in_features, G = a.weight.group_size, words = a.weight.out_features / 8;
  const int64_t tiles = (words + kGemv2TileWords - 1) / kGemv2TileWords, chunks = (a.num_tokens + MT - 1) / MT;
  auto ctas = [&](int64_t r) { return tiles * chunks * ((K + RT * r - 1) / (RT * r)); };
  int run = U < 8 ? 8 : U;  // ≥ 8 rows per thread: the zero point, scale and reduction are paid once per run
  for (int r = 2 * run; r <= 64; r *= 2) {
    if (RT * r * MT > 2048 || (G != K && G % r != 0) || ctas(r) < 2 * sms) break;
    run = r;
  }
  const int64_t splits = (K + RT * run - 1) / (RT * run);
  if (splits > 65535 || tiles > INT_MAX || chunks > 65535) return false;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks), static_cast<unsigned>(splits));
  if (splits == 1) {
    awq_gemv2_kernel<MT, VEC, U, X><<<grid, kThreads, 0, s>>>(a, nullptr, run);
    PAGEDLLM_CUDA_CHECK(cudaGetLastError());
    return true;
  }
  Workspace partial(static_cast<size_t>(splits * a.num_tokens * a.weight.out_features) * sizeof(float), stream);
  awq_gemv2_kernel<MT, VEC, U, X><<<grid, kThreads, 0, s>>>(a, static_cast<float*>(partial.ptr), run);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
  const int64_t total = a.num_tokens * a.weight.out_features;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 8 * sms));
  awq_split_sum_kernel<<<blocks, kThreads, 0, s>>>(a, static_cast<const float*>(partial.ptr), static_cast<int>(splits));
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
  return true;
}

template <int MT, int VEC, int U>
bool launch_gemv2(const AwqLinearArgs& a, Stream& stream, int sms, cudaStream_t s) {
  switch (a.x_dtype) {
    case DType::Float16: return launch_gemv2_x<MT, VEC, U, half_t>(a, stream, sms, s);
    case DType::BFloat16: return launch_gemv2_x<MT, VEC, U, bfloat16_t>(a, stream, sms, s);
    default: return launch_gemv2_x<MT, VEC, U, float>(a, stream, sms, s);
  }
}

// PAGEDLLM_AWQ_GEMV=new: the dispatch (Auto, M ≤ 8) runs awq_gemv2_kernel; by default it runs the
// previous GEMV, which has run on a GPU, until awq_gemv2_kernel has too (it was written without
// one) — and it also needs |x| < 2^39 (x is staged scaled by up to 2^89). Read once.
bool gemv2_chosen() {
  static const bool chosen = [] {
    const char* env = std::getenv("PAGEDLLM_AWQ_GEMV");
    return env != nullptr && std::strcmp(env, "new") == 0;
  }();
  return chosen;
}

// The current GEMV where the weight's buffers allow its loads (M ≤ 8); false: not run.
bool run_gemv2(const AwqLinearArgs& a, Stream& stream, int sms, cudaStream_t s) {
  const AwqWeight& w = a.weight;
  const int64_t words = w.out_features / 8, M = a.num_tokens;
  const auto aligned = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
  if (M > 8 || !aligned(w.scales, 16) || !aligned(w.qweight, 4) || !aligned(w.qzeros, 4)) return false;
  const bool vec4 = words % 4 == 0 && aligned(w.qweight, 16) && aligned(w.qzeros, 16);
  const bool vec2 = words % 2 == 0 && aligned(w.qweight, 8) && aligned(w.qzeros, 8);
  // Accumulators MT · 8 · VEC ≤ 32 (64 for MT = 8); U · VEC = 16 words (64 bytes) in flight per
  // thread per batch (8 words for MT = 8 on sm_90, 4 elsewhere: its FMAs, not its loads, set its pace).
  if (M == 1 && vec4) return launch_gemv2<1, 4, 4>(a, stream, sms, s);
  if (M <= 2 && vec2) return launch_gemv2<2, 2, 8>(a, stream, sms, s);
  if (M <= 4) return launch_gemv2<4, 1, 16>(a, stream, sms, s);
  return launch_gemv2<8, 1, 4>(a, stream, sms, s);
}

template <typename T, int MT>
void launch_tensor_core_tiles(const AwqLinearArgs& a, bool aligned, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((a.weight.out_features + 127) / 128), static_cast<unsigned>((a.num_tokens + 32 * MT - 1) / (32 * MT)));
  if (aligned) awq_gemm_tensor_core_kernel<T, MT, true><<<grid, kThreads, 0, s>>>(a);
  else awq_gemm_tensor_core_kernel<T, MT, false><<<grid, kThreads, 0, s>>>(a);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

void run_tensor_core(const AwqLinearArgs& a, cudaStream_t s) {
  const bool aligned = a.weight.in_features % 8 == 0 && a.x_stride % 8 == 0 && aligned16(a.x);
  const bool small = a.num_tokens <= 32;  // 32-row tiles: less padding, more CTAs
  if (a.x_dtype == DType::Float16) {
    if (small) launch_tensor_core_tiles<half_t, 1>(a, aligned, s);
    else launch_tensor_core_tiles<half_t, 2>(a, aligned, s);
  } else {
    if (small) launch_tensor_core_tiles<bfloat16_t, 1>(a, aligned, s);
    else launch_tensor_core_tiles<bfloat16_t, 2>(a, aligned, s);
  }
}

void run_simt(const AwqLinearArgs& a, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((a.weight.out_features + 63) / 64), static_cast<unsigned>((a.num_tokens + 63) / 64));
  switch (a.x_dtype) {
    case DType::Float16: awq_gemm_simt_kernel<half_t><<<grid, kThreads, 0, s>>>(a); break;
    case DType::BFloat16: awq_gemm_simt_kernel<bfloat16_t><<<grid, kThreads, 0, s>>>(a); break;
    default: awq_gemm_simt_kernel<float><<<grid, kThreads, 0, s>>>(a); break;
  }
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

void run_dequant_gemm(const AwqLinearArgs& a, Stream& stream, cudaStream_t s) {
  const AwqWeight& w = a.weight;
  const DType wt = a.x_dtype == DType::BFloat16 ? DType::BFloat16 : DType::Float16;
  Workspace dense(static_cast<size_t>(w.in_features * w.out_features) * 2, stream);
  const dim3 grid(static_cast<unsigned>((w.out_features / 8 + 31) / 32), static_cast<unsigned>((w.in_features + 31) / 32));
  if (wt == DType::Float16) awq_dequantize_transposed_kernel<half_t><<<grid, kThreads, 0, s>>>(w, static_cast<uint16_t*>(dense.ptr));
  else awq_dequantize_transposed_kernel<bfloat16_t><<<grid, kThreads, 0, s>>>(w, static_cast<uint16_t*>(dense.ptr));
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
  const LinearArgs dense_args{a.x, a.x_stride, a.x_dtype, dense.ptr, wt, a.bias, a.bias_dtype, a.out, a.out_stride,
                              a.out_dtype, a.num_tokens, w.out_features, w.in_features};
  linear_cuda(dense_args, stream);
}

}  // namespace

// ---- dispatch -------------------------------------------------------------------------------------

const char* awq_cuda_kernel_name(AwqCudaKernel kernel) {
  switch (kernel) {
    case AwqCudaKernel::Auto: return "auto";
    case AwqCudaKernel::Gemv: return "gemv";
    case AwqCudaKernel::TensorCore: return "tensor-core";
    case AwqCudaKernel::Simt: return "simt";
    case AwqCudaKernel::DequantGemm: return "dequant-gemm";
    case AwqCudaKernel::GemvLegacy: return "gemv-legacy";
  }
  return "unknown";
}

void awq_linear_cuda(const AwqLinearArgs& a, Stream& stream, AwqCudaKernel kernel) {
  PAGEDLLM_CHECK(a.weight.layout == AwqLayout::AutoAwq, Unsupported, "awq_linear: the CUDA kernels read the autoawq layout, not ",
                 awq_layout_name(a.weight.layout));
  if (a.num_tokens == 0) return;
  PAGEDLLM_CHECK(a.num_tokens <= 65535LL * 32, InvalidArgument, "awq_linear: num_tokens ", a.num_tokens,
                 " is too large for the CUDA kernels");
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  cudaStream_t s = cuda.handle();
  const int device = cuda.device().index;
  const int sms = device_attribute<cudaDevAttrMultiProcessorCount>(device);
  const bool sixteen_bit = a.x_dtype == DType::Float16 || a.x_dtype == DType::BFloat16;
  if (kernel == AwqCudaKernel::Auto) {
    if (a.num_tokens <= kGemvMaxRows) kernel = gemv2_chosen() ? AwqCudaKernel::Gemv : AwqCudaKernel::GemvLegacy;
    else if (a.num_tokens >= kDequantMinRows) kernel = AwqCudaKernel::DequantGemm;
    else if (sixteen_bit && tensor_cores_usable(device)) kernel = AwqCudaKernel::TensorCore;
    else kernel = AwqCudaKernel::Simt;
  }
  switch (kernel) {
    case AwqCudaKernel::Gemv:
      if (!run_gemv2(a, stream, sms, s)) run_gemv(a, stream, sms, s);
      break;
    case AwqCudaKernel::GemvLegacy: run_gemv(a, stream, sms, s); break;
    case AwqCudaKernel::TensorCore:
      PAGEDLLM_CHECK(sixteen_bit && tensor_cores_usable(device), Unsupported,
                     "awq_linear: the tensor-core kernel needs sm_80+ code and float16/bfloat16 x");
      run_tensor_core(a, s);
      break;
    case AwqCudaKernel::DequantGemm: run_dequant_gemm(a, stream, s); break;
    default: run_simt(a, s); break;
  }
}

void awq_linear_cuda(const AwqLinearArgs& a, Stream& stream) { awq_linear_cuda(a, stream, AwqCudaKernel::Auto); }

void awq_dequantize_cuda(const AwqDequantizeArgs& a, Stream& stream) {
  PAGEDLLM_CHECK(a.weight.layout == AwqLayout::AutoAwq, Unsupported, "awq_dequantize: the CUDA kernel reads the autoawq layout, not ",
                 awq_layout_name(a.weight.layout));
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  const int64_t total = a.weight.in_features * (a.weight.out_features / 8);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
  awq_dequantize_kernel<<<blocks, kThreads, 0, cuda.handle()>>>(a.weight, a.out, a.out_dtype);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pagedllm
