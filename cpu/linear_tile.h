// The CPU linear kernels (include/pagedllm/model_ops.h, linear): the inner
// loops that cpu/linear.cpp splits over the thread pool.
//
// - gemv: rows [n0, n1) of the weight against m ≤ 8 float32 activation rows.
//   Each weight row is read once for all m rows (decode is limited by memory
//   bandwidth: the weights are the bytes), converted in registers, dotted with
//   every activation row; up to 8 accumulator chains per step.
// - pack_x: activation rows to float32 6-row panels ([panel][K][6]), once per
//   call (the AWQ GEMM uses the same panels).
// - gemm_block: one (block of ≤ kGemmMB activation rows, block of ≤ kGemmNB
//   weight rows) tile, over K in steps of kGemmKC: the weight block is packed
//   (converted to float32, transposed into 16-column panels), then a 6×16
//   register tile does 6 broadcasts and 12 FMAs per 2 weight loads (the
//   outer-product kernel of BLIS / GotoBLAS) over every 6-row panel of the
//   block. Ragged edges are zero-padded in the packs, so any M, N, K works;
//   only valid results are stored by the caller.
//
// This header is compiled three times: by linear_tile.cpp (portable: 4-wide GCC/Clang
// vector extensions, i.e. SSE2 or NEON, or plain loops), by linear_tile_avx2.cpp
// (AVX2 + FMA + F16C) and by linear_tile_avx512.cpp (AVX-512: the same code, but
// pairs of weight panels run through a 6 × 32 tile of 512-bit registers), each
// chosen at run time when the CPU has them. PAGEDLLM_TILE_AVX2 selects the vector
// primitives, PAGEDLLM_TILE_AVX512 (with it) the 512-bit tile. The tile code never
// allocates and calls no shared template, so the AVX2 build emits no inline
// function or template instance that another file also emits (no ODR hazard).
//
// Measured (2 Zen 3 cores, N = K = 4096, float16 weights): AVX2 gemv M = 1
// streams the weights at 82–99 % of the bandwidth of a plain parallel read;
// gemm M = 128 runs at ~105–115 GFLOP/s (~70 % of the FMA peak). On 2 Xeon
// (AVX-512) cores, M = 128, one thread: avx512 94–110 GFLOP/s against avx2's
// 64–66 in the same run; two threads: 172–186. (benchmarks/native/linear_bench.cpp.)
#pragma once

#include <cstdint>

#include "pagedllm/convert.h"
#include "pagedllm/dtype.h"

namespace pagedllm::linear_kernels {

constexpr int64_t kGemvMaxRows = 8;  // m ≤ this takes the gemv path
constexpr int64_t kGemmMR = 6, kGemmNR = 16;  // register tile
constexpr int64_t kGemmMB = 132;  // activation rows per block (a multiple of kGemmMR; a 128-token prefill is one)
constexpr int64_t kGemmNB = 128;  // weight rows per block (a multiple of kGemmNR); its pack is 128 KiB (L2)
constexpr int64_t kGemmKC = 256;  // K per packed step: a 16-column weight panel is 16 KiB (L1)

// c[i · ldc + (j − n0)] = Σ_k x[i · k + kk] · weight[j, kk] for i < m, n0 ≤ j < n1.
struct GemvJob {
  const float* x;  // [m, k] float32, contiguous
  int64_t m;       // 1 … kGemvMaxRows
  const void* weight;  // [n, k] of weight_dtype, contiguous
  DType weight_dtype;
  int64_t k;
  int64_t n0, n1;
  float* c;  // [m, ldc]
  int64_t ldc;
};

// xp[q · k · 6 + kk · 6 + ii] = x[6q + ii, kk] for panels q0 ≤ q < q1 (0 for rows ≥ m).
struct PackXJob {
  const void* x;  // rows of x_dtype, x_stride elements apart
  int64_t x_stride;
  DType x_dtype;
  int64_t m, k;
  int64_t q0, q1;
  float* xp;  // [ceil(m / 6)][k][6]
};

// c[i · ldc + j] = Σ_k xp(i, kk) · weight[n0 + j, kk] for i < round_up(mb, 6), j < round_up(nb, 16).
struct GemmJob {
  const float* xp;  // the block's first 6-row panel of pack_x's output (panel stride k · 6)
  int64_t mb;       // ≤ kGemmMB
  const void* weight;  // [n, k] of weight_dtype, contiguous
  DType weight_dtype;
  int64_t k;
  int64_t n0, nb;  // nb ≤ kGemmNB
  float* c;  // [round_up(mb, 6), ldc] with ldc ≥ round_up(nb, 16); columns past nb get garbage
  int64_t ldc;
  float* scratch;  // kGemmScratchFloats floats, 32-byte aligned
};
constexpr int64_t kGemmScratchFloats = kGemmNB * kGemmKC;

void gemv_portable(const GemvJob& job);
void gemv_avx2(const GemvJob& job);
void pack_x_portable(const PackXJob& job);
void pack_x_avx2(const PackXJob& job);
void gemm_block_portable(const GemmJob& job);
void gemm_block_avx2(const GemmJob& job);
void gemv_avx512(const GemvJob& job);
void pack_x_avx512(const PackXJob& job);
void gemm_block_avx512(const GemmJob& job);

}  // namespace pagedllm::linear_kernels

#ifdef PAGEDLLM_TILE_IMPLEMENTATION
#include <cstring>
#if PAGEDLLM_TILE_AVX2
#include <immintrin.h>
#endif

#include "simd.h"

namespace pagedllm::linear_kernels {
namespace PAGEDLLM_TILE_NAMESPACE {

using namespace simd::PAGEDLLM_TILE_NAMESPACE;

template <typename F>
inline void with_src(DType t, const void* p, F&& f) {
  switch (t) {
    case DType::Float16: f(SrcF16{}, static_cast<const uint16_t*>(p)); return;
    case DType::BFloat16: f(SrcBF16{}, static_cast<const uint16_t*>(p)); return;
    default: f(SrcF32{}, static_cast<const float*>(p)); return;
  }
}

// n values of Src to float32.
template <typename Src>
inline void convert(const typename Src::T* p, int64_t n, float* out) {
  int64_t i = 0;
#if PAGEDLLM_TILE_AVX2
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, Src::load8(p + i));
#elif PAGEDLLM_TILE_VEC4
  for (; i + 4 <= n; i += 4) store4(out + i, Src::load4(p + i));
#endif
  for (; i < n; ++i) out[i] = Src::load1(p + i);
}

// ---- gemv --------------------------------------------------------------------------------------

// NR weight rows starting at row j against activation rows [i0, i0 + M): c[i0 + i, j + r].
template <typename Src, int M, int NR>
inline void gemv_rows(const GemvJob& job, const typename Src::T* w, int64_t j, int64_t i0 = 0) {
  const int64_t K = job.k;
  const float* x = job.x + i0 * K;
  const typename Src::T* row[NR];
  for (int r = 0; r < NR; ++r) row[r] = w + (j + r) * K;
  float sum[M][NR];
  int64_t k = 0;
#if PAGEDLLM_TILE_AVX2
  __m256 acc[M][NR];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[i][r] = _mm256_setzero_ps();
  // The first pass over these rows requests each row's line 1 KiB ahead (a second pass, for
  // activation rows 4–7, finds them in L1).
  constexpr int64_t kAhead = 1024 / sizeof(typename Src::T), kLine = 64 / sizeof(typename Src::T);
  const bool prefetch = i0 == 0;
  for (; k + 8 <= K; k += 8) {
    if (prefetch && k % kLine == 0)
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) __builtin_prefetch(row[r] + k + kAhead, 0, 3);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m256 wv = Src::load8(row[r] + k);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) acc[i][r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * K + k), wv, acc[i][r]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int r = 0; r < NR; ++r) sum[i][r] = hsum(acc[i][r]);
#elif PAGEDLLM_TILE_VEC4
  f32x4 acc[M][NR] = {};
  for (; k + 4 <= K; k += 4) {
    for (int r = 0; r < NR; ++r) {
      const f32x4 wv = Src::load4(row[r] + k);
      for (int i = 0; i < M; ++i) acc[i][r] += load4(x + i * K + k) * wv;
    }
  }
  for (int i = 0; i < M; ++i)
    for (int r = 0; r < NR; ++r) sum[i][r] = hsum4(acc[i][r]);
#else
  float acc[M][NR][8] = {};
  for (; k + 8 <= K; k += 8) {
    for (int r = 0; r < NR; ++r) {
      float wv[8];
      for (int l = 0; l < 8; ++l) wv[l] = Src::load1(row[r] + k + l);
      for (int i = 0; i < M; ++i)
        for (int l = 0; l < 8; ++l) acc[i][r][l] += x[i * K + k + l] * wv[l];
    }
  }
  for (int i = 0; i < M; ++i)
    for (int r = 0; r < NR; ++r) {
      const float* a = acc[i][r];
      sum[i][r] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    }
#endif
  for (; k < K; ++k)
    for (int r = 0; r < NR; ++r) {
      const float wv = Src::load1(row[r] + k);
      for (int i = 0; i < M; ++i) sum[i][r] += x[i * K + k] * wv;
    }
  for (int i = 0; i < M; ++i)
    for (int r = 0; r < NR; ++r) job.c[(i0 + i) * job.ldc + (j + r - job.n0)] = sum[i][r];
}

#if PAGEDLLM_TILE_AVX2
// M = 1: one weight row at a time, 32 columns (64 bytes of float16) per step into 4 accumulators,
// requesting the line 1 KiB ahead. A thread's rows are one contiguous stretch, read as a single
// sequential stream: on a 2-core Zen 3 VM this runs at the speed of a plain read (25–29 GB/s),
// where 4 interleaved row streams (gemv_rows<Src, 1, 4>) reached 18–24 GB/s.
template <typename Src>
inline void gemv_row1(const GemvJob& job, const typename Src::T* w) {
  using T = typename Src::T;
  constexpr int64_t kAhead = 1024 / sizeof(T), kLine = 64 / sizeof(T);
  const int64_t K = job.k;
  const float* x = job.x;
  for (int64_t j = job.n0; j < job.n1; ++j) {
    const T* row = w + j * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      for (int64_t l = 0; l < 32; l += kLine) __builtin_prefetch(row + k + l + kAhead, 0, 3);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), Src::load8(row + k), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), Src::load8(row + k + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), Src::load8(row + k + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), Src::load8(row + k + 24), a3);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), Src::load8(row + k), a0);
    float sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; ++k) sum += x[k] * Src::load1(row + k);
    job.c[j - job.n0] = sum;
  }
}
#endif

// Rows per step: as many as keep M · NR ≤ 8 accumulators (plus the loads) in 16 registers.
// M > 4 runs as two passes (rows 0–3, then the rest) over each pair of weight rows: the second
// pass finds them in L1, and 6 loads feed 8 FMAs instead of 9 loads (one row at a time) 8 FMAs.
template <typename Src, int M>
inline void gemv_m(const GemvJob& job, const typename Src::T* w) {
#if PAGEDLLM_TILE_AVX2
  if constexpr (M == 1) return gemv_row1<Src>(job, w);
#endif
  constexpr int NR = M == 1 ? 4 : M == 2 ? 4 : 2;
  int64_t j = job.n0;
  for (; j + NR <= job.n1; j += NR) {
    if constexpr (M <= 4) {
      gemv_rows<Src, M, NR>(job, w, j);
    } else {
      gemv_rows<Src, 4, NR>(job, w, j, 0);
      gemv_rows<Src, M - 4, NR>(job, w, j, 4);
    }
  }
  for (; j < job.n1; ++j) {
    if constexpr (M <= 4) {
      gemv_rows<Src, M, 1>(job, w, j);
    } else {
      gemv_rows<Src, 4, 1>(job, w, j, 0);
      gemv_rows<Src, M - 4, 1>(job, w, j, 4);
    }
  }
}

inline void gemv(const GemvJob& job) {
  with_src(job.weight_dtype, job.weight, [&](auto src, const auto* w) {
    using Src = decltype(src);
    switch (job.m) {
      case 1: gemv_m<Src, 1>(job, w); break;
      case 2: gemv_m<Src, 2>(job, w); break;
      case 3: gemv_m<Src, 3>(job, w); break;
      case 4: gemv_m<Src, 4>(job, w); break;
      case 5: gemv_m<Src, 5>(job, w); break;
      case 6: gemv_m<Src, 6>(job, w); break;
      case 7: gemv_m<Src, 7>(job, w); break;
      default: gemv_m<Src, 8>(job, w); break;
    }
  });
}

// ---- gemm --------------------------------------------------------------------------------------

#if PAGEDLLM_TILE_AVX2
// r[i][j] ← r[j][i] for an 8 × 8 block of floats.
inline void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

// Weight rows [n0, n0 + nb), columns [k0, k0 + kc) → wp: 16-column panels, panel p holding
// wp[p · KC · 16 + kk · 16 + jj] = weight[n0 + 16p + jj, k0 + kk] (0 past nb).
template <typename Src>
inline void pack_weight(const typename Src::T* w, int64_t K, int64_t n0, int64_t nb, int64_t k0, int64_t kc,
                        float* wp) {
  const int64_t panels = (nb + kGemmNR - 1) / kGemmNR;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = wp + p * kGemmKC * kGemmNR;
    for (int64_t jj = 0; jj < kGemmNR; ++jj) {
      const int64_t j = p * kGemmNR + jj;
      if (j >= nb) {
        for (int64_t kk = 0; kk < kc; ++kk) dst[kk * kGemmNR + jj] = 0.0f;
        continue;
      }
      const typename Src::T* src = w + (n0 + j) * K + k0;
      int64_t kk = 0;
#if PAGEDLLM_TILE_AVX2
      if (jj % 8 == 0 && j + 8 <= nb) {  // rows jj … jj + 7 all valid: 8 × 8 blocks transposed in registers
        for (; kk + 8 <= kc; kk += 8) {
          __m256 r[8];
          for (int l = 0; l < 8; ++l) r[l] = Src::load8(src + l * K + kk);
          transpose8(r);
          for (int l = 0; l < 8; ++l) _mm256_store_ps(dst + (kk + l) * kGemmNR + jj, r[l]);
        }
        for (int l = 0; l < 8; ++l)
          for (int64_t t = kk; t < kc; ++t) dst[t * kGemmNR + jj + l] = Src::load1(src + l * K + t);
        jj += 7;  // (the loop's ++jj makes it 8: those rows are done)
        continue;
      }
#elif PAGEDLLM_TILE_VEC4
      for (; kk + 4 <= kc; kk += 4) {
        const f32x4 v = Src::load4(src + kk);
        for (int l = 0; l < 4; ++l) dst[(kk + l) * kGemmNR + jj] = v[l];
      }
#endif
      for (; kk < kc; ++kk) dst[kk * kGemmNR + jj] = Src::load1(src + kk);
    }
  }
}

// Panels [q0, q1) of x (see PackXJob). AVX2: 6 rows × 8 columns are transposed in registers (with
// two zero rows) and stored as 8 runs of 6 floats, each 8-wide store overlapping the next run.
template <typename Src>
inline void pack_x_rows(const PackXJob& job, const typename Src::T* x) {
  const int64_t K = job.k;
  for (int64_t q = job.q0; q < job.q1; ++q) {
    float* dst = job.xp + q * K * kGemmMR;
    const int64_t rows = job.m - q * kGemmMR < kGemmMR ? job.m - q * kGemmMR : kGemmMR;
    const typename Src::T* row[kGemmMR];
    for (int64_t ii = 0; ii < kGemmMR; ++ii) row[ii] = ii < rows ? x + (q * kGemmMR + ii) * job.x_stride : nullptr;
    int64_t k = 0;
#if PAGEDLLM_TILE_AVX2
    for (; k + 8 <= K; k += 8) {
      __m256 r[8];
      for (int ii = 0; ii < kGemmMR; ++ii) r[ii] = row[ii] ? Src::load8(row[ii] + k) : _mm256_setzero_ps();
      r[6] = r[7] = _mm256_setzero_ps();
      transpose8(r);
      float* d = dst + k * kGemmMR;
      for (int l = 0; l < 7; ++l) _mm256_storeu_ps(d + l * kGemmMR, r[l]);
      _mm256_maskstore_ps(d + 7 * kGemmMR, _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0), r[7]);
    }
#endif
    for (; k < K; ++k)
      for (int64_t ii = 0; ii < kGemmMR; ++ii) dst[k * kGemmMR + ii] = row[ii] ? Src::load1(row[ii] + k) : 0.0f;
  }
}

inline void pack_x(const PackXJob& job) {
  with_src(job.x_dtype, job.x, [&](auto src, const auto* x) { pack_x_rows<decltype(src)>(job, x); });
}

// c[6 × 16] (= or +=) xp panel (kc × 6) · wp panel (kc × 16). Never inlined: its 12 accumulators,
// 2 weight vectors and the broadcast need all 16 registers, and inlined into a caller with more
// live values (the AWQ gemm_block) the compiler kept one accumulator on the stack, a store-load
// round trip in the loop's dependency chain that made the whole GEMM 1.5x slower.
[[gnu::noinline]] inline void micro_6x16(const float* xp, const float* wp, int64_t kc, float* c, int64_t ldc, bool accumulate) {
#if PAGEDLLM_TILE_AVX2
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  // Unrolled: the loop's own increments and branch otherwise take issue slots from the 12 FMAs
  // (M = 128 GEMM on the decode-bench shapes: 110-132 -> 127-154 GFLOP/s, side by side).
#pragma GCC unroll 8
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_load_ps(wp + k * 16), w1 = _mm256_load_ps(wp + k * 16 + 8);
    const float* xk = xp + k * 6;
    __m256 b = _mm256_broadcast_ss(xk);
    c00 = _mm256_fmadd_ps(b, w0, c00);
    c01 = _mm256_fmadd_ps(b, w1, c01);
    b = _mm256_broadcast_ss(xk + 1);
    c10 = _mm256_fmadd_ps(b, w0, c10);
    c11 = _mm256_fmadd_ps(b, w1, c11);
    b = _mm256_broadcast_ss(xk + 2);
    c20 = _mm256_fmadd_ps(b, w0, c20);
    c21 = _mm256_fmadd_ps(b, w1, c21);
    b = _mm256_broadcast_ss(xk + 3);
    c30 = _mm256_fmadd_ps(b, w0, c30);
    c31 = _mm256_fmadd_ps(b, w1, c31);
    b = _mm256_broadcast_ss(xk + 4);
    c40 = _mm256_fmadd_ps(b, w0, c40);
    c41 = _mm256_fmadd_ps(b, w1, c41);
    b = _mm256_broadcast_ss(xk + 5);
    c50 = _mm256_fmadd_ps(b, w0, c50);
    c51 = _mm256_fmadd_ps(b, w1, c51);
  }
  // (Stored one by one: an array of the accumulators would make the compiler spill and copy them.)
  auto put = [&](int i, __m256 lo, __m256 hi) {
    float* ci = c + i * ldc;
    if (accumulate) {
      lo = _mm256_add_ps(_mm256_loadu_ps(ci), lo);
      hi = _mm256_add_ps(_mm256_loadu_ps(ci + 8), hi);
    }
    _mm256_storeu_ps(ci, lo);
    _mm256_storeu_ps(ci + 8, hi);
  };
  put(0, c00, c01);
  put(1, c10, c11);
  put(2, c20, c21);
  put(3, c30, c31);
  put(4, c40, c41);
  put(5, c50, c51);
#elif PAGEDLLM_TILE_VEC4
  // Two 8-column halves, so the 6 × 8 accumulators fit the 16 registers of a 128-bit SIMD ISA.
  for (int half = 0; half < 16; half += 8) {
    f32x4 acc[6][2] = {};
    for (int64_t k = 0; k < kc; ++k) {
      const f32x4 w0 = load4(wp + k * 16 + half), w1 = load4(wp + k * 16 + half + 4);
      const float* xk = xp + k * 6;
      for (int i = 0; i < 6; ++i) {
        acc[i][0] += xk[i] * w0;
        acc[i][1] += xk[i] * w1;
      }
    }
    for (int i = 0; i < 6; ++i)
      for (int v = 0; v < 2; ++v) {
        float* ci = c + i * ldc + half + 4 * v;
        store4(ci, accumulate ? load4(ci) + acc[i][v] : acc[i][v]);
      }
  }
#else
  for (int half = 0; half < 16; half += 8) {
    float acc[6][8] = {};
    for (int64_t k = 0; k < kc; ++k) {
      const float* wk = wp + k * 16 + half;
      const float* xk = xp + k * 6;
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 8; ++j) acc[i][j] += xk[i] * wk[j];
    }
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 8; ++j) c[i * ldc + half + j] = accumulate ? c[i * ldc + half + j] + acc[i][j] : acc[i][j];
  }
#endif
}

#if PAGEDLLM_TILE_AVX512
// c[6 × 32] (= or +=) xp panel (kc × 6) · two 16-column weight panels side by side (wp0: columns
// 0–15, wp1: 16–31): per k, 2 weight loads and 6 broadcasts feed 12 512-bit FMAs — twice the work
// of micro_6x16's 12 256-bit FMAs for the same loads. Each accumulator sums k in the same order as
// micro_6x16, so the results are the same bits.
[[gnu::noinline]] inline void micro_6x32(const float* xp, const float* wp0, const float* wp1, int64_t kc, float* c,
                                         int64_t ldc, bool accumulate) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_loadu_ps(wp0 + k * 16), w1 = _mm512_loadu_ps(wp1 + k * 16);
    const float* xk = xp + k * 6;
    __m512 b = _mm512_set1_ps(xk[0]);
    c00 = _mm512_fmadd_ps(b, w0, c00);
    c01 = _mm512_fmadd_ps(b, w1, c01);
    b = _mm512_set1_ps(xk[1]);
    c10 = _mm512_fmadd_ps(b, w0, c10);
    c11 = _mm512_fmadd_ps(b, w1, c11);
    b = _mm512_set1_ps(xk[2]);
    c20 = _mm512_fmadd_ps(b, w0, c20);
    c21 = _mm512_fmadd_ps(b, w1, c21);
    b = _mm512_set1_ps(xk[3]);
    c30 = _mm512_fmadd_ps(b, w0, c30);
    c31 = _mm512_fmadd_ps(b, w1, c31);
    b = _mm512_set1_ps(xk[4]);
    c40 = _mm512_fmadd_ps(b, w0, c40);
    c41 = _mm512_fmadd_ps(b, w1, c41);
    b = _mm512_set1_ps(xk[5]);
    c50 = _mm512_fmadd_ps(b, w0, c50);
    c51 = _mm512_fmadd_ps(b, w1, c51);
  }
  auto put = [&](int i, __m512 lo, __m512 hi) {
    float* ci = c + i * ldc;
    if (accumulate) {
      lo = _mm512_add_ps(_mm512_loadu_ps(ci), lo);
      hi = _mm512_add_ps(_mm512_loadu_ps(ci + 16), hi);
    }
    _mm512_storeu_ps(ci, lo);
    _mm512_storeu_ps(ci + 16, hi);
  };
  put(0, c00, c01);
  put(1, c10, c11);
  put(2, c20, c21);
  put(3, c30, c31);
  put(4, c40, c41);
  put(5, c50, c51);
}
#endif

// One K step of a GEMM block: every (weight panel, x panel) pair of tiles, c (= or +=) their product.
// A weight panel (16 KiB; a pair, 32 KiB, on AVX-512) stays in L1 while the x panels stream from L2.
// `xp`: the block's first x panel at this step's k0 (panel stride k · 6); `wp`: the packed step.
inline void run_tiles(const float* xp, int64_t k, int64_t x_panels, const float* wp, int64_t w_panels, int64_t kc,
                      float* c, int64_t ldc, bool accumulate) {
  int64_t p = 0;
#if PAGEDLLM_TILE_AVX512
  for (; p + 2 <= w_panels; p += 2)
    for (int64_t q = 0; q < x_panels; ++q)
      micro_6x32(xp + q * k * kGemmMR, wp + p * kGemmKC * kGemmNR, wp + (p + 1) * kGemmKC * kGemmNR, kc,
                 c + q * kGemmMR * ldc + p * kGemmNR, ldc, accumulate);
#endif
  for (; p < w_panels; ++p)
    for (int64_t q = 0; q < x_panels; ++q)
      micro_6x16(xp + q * k * kGemmMR, wp + p * kGemmKC * kGemmNR, kc, c + q * kGemmMR * ldc + p * kGemmNR, ldc, accumulate);
}

inline void gemm_block(const GemmJob& job) {
  float* const wp = job.scratch;  // [kGemmNB / 16][KC][16]
  const int64_t K = job.k;
  const int64_t x_panels = (job.mb + kGemmMR - 1) / kGemmMR;
  const int64_t w_panels = (job.nb + kGemmNR - 1) / kGemmNR;
  for (int64_t k0 = 0; k0 < K; k0 += kGemmKC) {
    const int64_t kc = K - k0 < kGemmKC ? K - k0 : kGemmKC;
    with_src(job.weight_dtype, job.weight, [&](auto src, const auto* w) {
      pack_weight<decltype(src)>(w, K, job.n0, job.nb, k0, kc, wp);
    });
    run_tiles(job.xp + k0 * kGemmMR, K, x_panels, wp, w_panels, kc, job.c, job.ldc, k0 > 0);
  }
}

}  // namespace PAGEDLLM_TILE_NAMESPACE
}  // namespace pagedllm::linear_kernels
#endif  // PAGEDLLM_TILE_IMPLEMENTATION
