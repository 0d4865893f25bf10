// The CPU paged-attention tile: one (sequence, KV head(s), run of query rows, range of keys) work
// item, all query heads of a KV head's group at once. Online softmax over cache blocks; the result
// is the unnormalised partial (max logit m, exp-sum l, Σ exp(logit − m)·v) that the caller
// normalises or merges across key ranges.
//
// Per (block, KV head) step, for the `group × rows` query vectors of the KV head, in runs of 4
// (then 2, 1) vectors:
// - block_scores: a register tile of (4 vectors × W/4 keys) accumulators, so each K slice is
//   loaded and converted once per run (straight from the cache for float32/16, bf16, int8: no
//   scratch copy) and fed to 4 FMAs; a transpose-and-add tree reduces the W accumulators to W
//   scores with 15 adds instead of W horizontal sums;
// - the online softmax over the block's scores (exp by polynomial, all in vector registers;
//   decode tiles keep the weights by key, so one vector op covers the whole run);
// - block_accumulate: acc = acc · c + Σ_t w_t · v_t with the run's accumulators (4 vectors × up to
//   4 slices) loaded and stored once per block, each V slice converted once for the run.
// K and V of the next step are prefetched a line pair at a time during the step.
//
// Measured against the previous tile (per-vector scores with a horizontal sum each, a float32
// copy of every block under GQA; 2 Zen 5 cores, AVX-512, D 128, float16 KV unless said;
// benchmarks/native/attention_bench.cpp, medians of interleaved runs): batch 1 × 256, 16 / 4 heads
// 41 → 22 µs (float32 KV 55 → 25 µs); batch 8 × 2048 GQA-4 5.9 → 1.8 ms (0.66 of a sequential
// read's bandwidth, about what a plain read of random 4 KiB K/V runs reaches here), MHA 8.6 →
// 5.2 ms (0.92).
//
// This header is compiled three times: by paged_attention_tile.cpp (portable C++: plain loops),
// paged_attention_tile_avx2.cpp (AVX2 + FMA + F16C, 8-lane vectors) and
// paged_attention_tile_avx512.cpp (AVX-512: the same code with 16-lane vectors), each chosen at
// run time when the CPU has them (paged_attention.cpp). PAGEDLLM_TILE_AVX2 selects the vector
// code, PAGEDLLM_TILE_AVX512 (with it) the 512-bit width. The tile never allocates and calls no
// shared template, so the vector builds emit no inline function or template instance that
// another file also emits.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include "pagedllm/convert.h"
#include "pagedllm/paged_attention.h"

namespace pagedllm::attention_cpu {

struct TileJob {
  const PagedAttentionArgs* a;
  int64_t seq;
  int64_t kv_head, kv_heads;  // KV heads [kv_head, kv_head + kv_heads), visited together block by block
  int64_t row0, rows;  // query rows [row0, row0 + rows) of the sequence
  int64_t pos0;        // position of row0 in the sequence
  int64_t key_begin, key_end;  // keys considered: [key_begin, key_end)
  // Outputs, indexed by v = (k * rows + r) * group + g (KV head k of the job, row r of the
  // tile, query head g of the group):
  float* m;    // [kv_heads * rows * group]  max logit (−inf: no key in range)
  float* l;    // [kv_heads * rows * group]  Σ exp(logit − m)
  float* acc;  // [kv_heads * rows * group, head_size]  Σ exp(logit − m) · v
  float* scratch;  // tile_scratch_floats(kv_heads * rows * group, rows * group, block_size, head_size) floats
};

// Stride of one query vector's row of block weights in the scratch: the block size rounded up to
// whole 16-lane vectors.
inline int64_t tile_weight_stride(int64_t block_size) { return (block_size + 15) / 16 * 16; }

// vectors: all query vectors of the job; per_head: those of one KV head (rows * group).
inline int64_t tile_scratch_floats(int64_t vectors, int64_t per_head, int64_t block_size, int64_t head_size) {
  return vectors * (head_size + 16) + 2 * block_size * head_size + per_head * (tile_weight_stride(block_size) + 1);
}

// Float32 value of one fp8 e4m3 byte (a table built from fp8.h's conversion).
const float* fp8_table();

void attention_tile_portable(const TileJob& job);
void attention_tile_avx2(const TileJob& job);
void attention_tile_avx512(const TileJob& job);

}  // namespace pagedllm::attention_cpu


#ifdef PAGEDLLM_TILE_IMPLEMENTATION
#ifndef PAGEDLLM_TILE_AVX512
#define PAGEDLLM_TILE_AVX512 0
#endif
#include "simd.h"

namespace pagedllm::attention_cpu {
namespace PAGEDLLM_TILE_NAMESPACE {

using namespace simd::PAGEDLLM_TILE_NAMESPACE;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// (Local helpers rather than std::min / std::max: no template instance shared with other files is
// emitted for this file's target.)
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

#if defined(__GNUC__) || defined(__clang__)
#define PAGEDLLM_ATTN_INLINE inline __attribute__((always_inline))
#else
#define PAGEDLLM_ATTN_INLINE inline
#endif

PAGEDLLM_ATTN_INLINE void prefetch_line(const char* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}

// Software prefetch of the next (block, head) step's K and V runs: a block's run of one head is a
// few KiB at a random place (the block table), where the hardware prefetchers, which stop at page
// boundaries, start cold. One K line and one V line per step() of the block kernels (a key group
// of block_scores, a row of block_accumulate), the rest in one go when the step is done: a burst
// of a whole run's prefetches ahead of the arithmetic stalls it (measured: up to 2× slower with
// a float32 cache).
struct Prefetcher {
  const char* k = nullptr;  // next K line
  const char* v = nullptr;  // next V line
  int64_t left = 0;         // lines left in each run
  PAGEDLLM_ATTN_INLINE void step() {
    if (left > 0) {
      prefetch_line(k);
      prefetch_line(v);
      k += 64;
      v += 64;
      --left;
    }
  }
  void rest() {
    for (; left > 0; --left, k += 64, v += 64) {
      prefetch_line(k);
      prefetch_line(v);
    }
  }
};

// Element sources (cpu/simd.h): a K or V row is read straight from the cache in its own dtype
// (F32, F16, BF16, I8; the int8 scale is applied by the caller per row), or from a float32
// scratch copy (F32) when a tile reuses each row for many query vectors (prefill tiles) or the
// dtype has no vector conversion (fp8).

#if PAGEDLLM_TILE_AVX2
// ---- vector primitives: W lanes (8: AVX2, 16: AVX-512) -------------------------------------

#if PAGEDLLM_TILE_AVX512
struct Vec {
  using R = __m512;
  static constexpr int W = 16;
  static PAGEDLLM_ATTN_INLINE R zero() { return _mm512_setzero_ps(); }
  static PAGEDLLM_ATTN_INLINE R set1(float x) { return _mm512_set1_ps(x); }
  static PAGEDLLM_ATTN_INLINE R loadu(const float* p) { return _mm512_loadu_ps(p); }
  static PAGEDLLM_ATTN_INLINE void storeu(float* p, R x) { _mm512_storeu_ps(p, x); }
  static PAGEDLLM_ATTN_INLINE R add(R a, R b) { return _mm512_add_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R max(R a, R b) { return _mm512_max_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static PAGEDLLM_ATTN_INLINE float hsum(R x) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    return simd::PAGEDLLM_TILE_NAMESPACE::hsum(h);
  }
  static PAGEDLLM_ATTN_INLINE float first(R x) { return _mm512_cvtss_f32(x); }
  // Lane i = the max of the lanes ≡ i (mod G), G a power of two ≤ 8.
  template <int G>
  static PAGEDLLM_ATTN_INLINE R gmax(R x) {
    x = _mm512_max_ps(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(1, 0, 3, 2)));
    if constexpr (G <= 4) x = _mm512_max_ps(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(2, 3, 0, 1)));
    if constexpr (G <= 2) x = _mm512_max_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(1, 0, 3, 2)));
    if constexpr (G == 1) x = _mm512_max_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)));
    return x;
  }
  // Lane i = p[i mod G], G ∈ {1, 2, 4}.
  template <int G>
  static PAGEDLLM_ATTN_INLINE R gload(const float* p) {
    if constexpr (G == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
    else if constexpr (G == 2) {
      double pair;
      std::memcpy(&pair, p, sizeof pair);
      return _mm512_castpd_ps(_mm512_set1_pd(pair));
    }
    else return _mm512_set1_ps(*p);
  }
  // mask: the lanes with lo ≤ base + lane < hi; keep: x there, −inf elsewhere.
  using Mask = __mmask16;
  static PAGEDLLM_ATTN_INLINE Mask mask(int64_t lo, int64_t hi, int64_t base) {
    const int64_t a = imin(imax(lo - base, 0), W), b = imin(imax(hi - base, 0), W);
    return static_cast<Mask>(((1u << b) - 1u) & ~((1u << a) - 1u));
  }
  static PAGEDLLM_ATTN_INLINE R keep(R x, Mask k) { return _mm512_mask_blend_ps(k, _mm512_set1_ps(kNegInf), x); }
  static PAGEDLLM_ATTN_INLINE R keep(R x, int64_t lo, int64_t hi, int64_t base) { return keep(x, mask(lo, hi, base)); }
  // W accumulators to one vector: lane i = the sum of x[i]'s lanes (a transpose-and-add tree:
  // 15 adds and 30 shuffles for 16 sums, against 16 separate horizontal sums).
  static PAGEDLLM_ATTN_INLINE R reduce(const R* x) {
    R t[8], u[4];
    for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
      t[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 4; ++i)  // per 128-bit lane: [a, b, c, d]
      u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    const R w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const R w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // exp(x) for x ≤ 0 with the Cephes expf polynomial (≈ 2 ulp); x < −87.3 (−inf included) gives 0.
  static PAGEDLLM_ATTN_INLINE R exp(R x) {
    const R lo = _mm512_set1_ps(-87.3f), half = _mm512_set1_ps(0.5f);
    const __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    R v = _mm512_max_ps(x, lo);
    const R fx = _mm512_roundscale_ps(_mm512_fmadd_ps(v, _mm512_set1_ps(1.44269504088896341f), half),
                                      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    v = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), v));
    R y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, v, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, v, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, v, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, v, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, v, half);
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(v, v), _mm512_add_ps(v, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(y, fx));
  }
};
PAGEDLLM_ATTN_INLINE __m512 vload(SrcF32, const float* p) { return _mm512_loadu_ps(p); }
PAGEDLLM_ATTN_INLINE __m512 vload(SrcF16, const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
PAGEDLLM_ATTN_INLINE __m512 vload(SrcBF16, const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
PAGEDLLM_ATTN_INLINE __m512 vload(SrcI8, const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#else
struct Vec {
  using R = __m256;
  static constexpr int W = 8;
  static PAGEDLLM_ATTN_INLINE R zero() { return _mm256_setzero_ps(); }
  static PAGEDLLM_ATTN_INLINE R set1(float x) { return _mm256_set1_ps(x); }
  static PAGEDLLM_ATTN_INLINE R loadu(const float* p) { return _mm256_loadu_ps(p); }
  static PAGEDLLM_ATTN_INLINE void storeu(float* p, R x) { _mm256_storeu_ps(p, x); }
  static PAGEDLLM_ATTN_INLINE R add(R a, R b) { return _mm256_add_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R max(R a, R b) { return _mm256_max_ps(a, b); }
  static PAGEDLLM_ATTN_INLINE R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static PAGEDLLM_ATTN_INLINE float hsum(R x) { return simd::PAGEDLLM_TILE_NAMESPACE::hsum(x); }
  static PAGEDLLM_ATTN_INLINE float first(R x) { return _mm256_cvtss_f32(x); }
  // Lane i = the max of the lanes ≡ i (mod G), G a power of two ≤ 4.
  template <int G>
  static PAGEDLLM_ATTN_INLINE R gmax(R x) {
    x = _mm256_max_ps(x, _mm256_permute2f128_ps(x, x, 1));
    if constexpr (G <= 2) x = _mm256_max_ps(x, _mm256_permute_ps(x, _MM_SHUFFLE(1, 0, 3, 2)));
    if constexpr (G == 1) x = _mm256_max_ps(x, _mm256_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)));
    return x;
  }
  // Lane i = p[i mod G], G ∈ {1, 2, 4}.
  template <int G>
  static PAGEDLLM_ATTN_INLINE R gload(const float* p) {
    if constexpr (G == 4) return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
    else if constexpr (G == 2) {
      double pair;
      std::memcpy(&pair, p, sizeof pair);
      return _mm256_castpd_ps(_mm256_set1_pd(pair));
    }
    else return _mm256_set1_ps(*p);
  }
  // mask: the lanes with lo ≤ base + lane < hi; keep: x there, −inf elsewhere.
  using Mask = __m256;
  static PAGEDLLM_ATTN_INLINE Mask mask(int64_t lo, int64_t hi, int64_t base) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int a = static_cast<int>(imin(imax(lo - base, 0), W)), b = static_cast<int>(imin(imax(hi - base, 0), W));
    return _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(a), lane), _mm256_cmpgt_epi32(_mm256_set1_epi32(b), lane)));
  }
  static PAGEDLLM_ATTN_INLINE R keep(R x, Mask k) { return _mm256_blendv_ps(_mm256_set1_ps(kNegInf), x, k); }
  static PAGEDLLM_ATTN_INLINE R keep(R x, int64_t lo, int64_t hi, int64_t base) { return keep(x, mask(lo, hi, base)); }
  // W accumulators to one vector: lane i = the sum of x[i]'s lanes (transpose-and-add tree).
  static PAGEDLLM_ATTN_INLINE R reduce(const R* x) {
    R t[4];
    for (int i = 0; i < 4; ++i)
      t[i] = _mm256_add_ps(_mm256_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm256_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    const R u0 = _mm256_add_ps(_mm256_shuffle_ps(t[0], t[1], _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t[0], t[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const R u1 = _mm256_add_ps(_mm256_shuffle_ps(t[2], t[3], _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t[2], t[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
  }
  // exp(x) for x ≤ 0 with the Cephes expf polynomial (≈ 2 ulp); x < −87.3 (−inf included) gives 0.
  static PAGEDLLM_ATTN_INLINE R exp(R x) {
    const R lo = _mm256_set1_ps(-87.3f), half = _mm256_set1_ps(0.5f);
    const R live = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    R v = _mm256_max_ps(x, lo);
    const R fx = _mm256_floor_ps(_mm256_fmadd_ps(v, _mm256_set1_ps(1.44269504088896341f), half));
    v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), v));
    R y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, v, half);
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(v, v), _mm256_add_ps(v, _mm256_set1_ps(1.0f)));
    const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(live, _mm256_mul_ps(y, _mm256_castsi256_ps(pow2)));
  }
};
template <typename Src>
PAGEDLLM_ATTN_INLINE __m256 vload(Src, const typename Src::T* p) { return Src::load8(p); }
#endif

// ---- the block kernels: VB query vectors of one KV head against a block's n K / V rows --------

// Block weights live in a run's scratch in one of two layouts: by vector (w[b · E + t], any
// per-vector masking and logit adjustment) or, for decode tiles, by key (w[t · VB + b]: each
// W-lane vector holds W / VB keys of all VB vectors, so one vector op serves the run).

// Scores q_b · k_t for b < VB, t < n, q_b = q + b·D, k_t = k + t·D, into e by vector (KM false:
// e[b · E + t]) or by key (KM true: e[t · VB + b]); junk up to the next multiple of W / VB keys,
// which the caller masks. VB × (W / VB) accumulators — VB vectors times W / VB key rows — share
// each load and conversion of a K slice across the VB vectors, and one transpose-and-add
// reduction turns them into W scores. Key rows past n repeat row n − 1 (never a row outside the
// visible keys).
template <int VB, bool KM, typename Src>
PAGEDLLM_ATTN_INLINE void block_scores(const float* q, int64_t D, const typename Src::T* k, int64_t n, float* e, int64_t E, Prefetcher& pf_io) {
  using R = Vec::R;
  constexpr int W = Vec::W, TB = W / VB;
  Prefetcher pf = pf_io;  // a local copy lives in registers
  for (int64_t t = 0; t < n; t += TB) {
    pf.step();
    const typename Src::T* kp[TB];
    for (int j = 0; j < TB; ++j) kp[j] = k + imin(t + j, n - 1) * D;
    R acc[W];  // lane order of the reduction: KM: j · VB + b, else b · TB + j
    for (int j = 0; j < W; ++j) acc[j] = Vec::zero();
    for (int64_t i = 0; i < D; i += W) {
      R kv[TB];
      for (int j = 0; j < TB; ++j) kv[j] = vload(Src{}, kp[j] + i);
      for (int b = 0; b < VB; ++b) {
        const R qv = Vec::loadu(q + b * D + i);
        for (int j = 0; j < TB; ++j) {
          R& a = acc[KM ? j * VB + b : b * TB + j];
          a = Vec::fmadd(qv, kv[j], a);
        }
      }
    }
    if constexpr (KM) {
      Vec::storeu(e + t * VB, Vec::reduce(acc));
    } else {
      float s[W];
      Vec::storeu(s, Vec::reduce(acc));
      for (int b = 0; b < VB; ++b)
        for (int j = 0; j < TB; ++j) e[b * E + t + j] = s[b * TB + j];
    }
  }
  pf_io = pf;
}

// acc_b[0, NC·W) = acc_b · c[b] + Σ_t w[b · wb + t · wt] · v_t[0, NC·W) for b < VB: VB × NC
// accumulators loaded and stored once per block; each V slice is loaded (converted) once for the
// VB vectors.
template <int VB, int NC, typename Src>
PAGEDLLM_ATTN_INLINE void accumulate_part(float* acc, int64_t D, const float* c, const float* w, int64_t wb, int64_t wt, const typename Src::T* v,
                            int64_t n, Prefetcher& pf_io) {
  using R = Vec::R;
  constexpr int W = Vec::W;
  Prefetcher pf = pf_io;  // a local copy lives in registers
  R r[VB][NC];
  for (int b = 0; b < VB; ++b) {
    const R cb = Vec::set1(c[b]);
    for (int i = 0; i < NC; ++i) r[b][i] = Vec::mul(Vec::loadu(acc + b * D + i * W), cb);
  }
  for (int64_t t = 0; t < n; ++t) {
    pf.step();
    R x[NC];
    for (int i = 0; i < NC; ++i) x[i] = vload(Src{}, v + t * D + i * W);
    for (int b = 0; b < VB; ++b) {
      const R wv = Vec::set1(w[b * wb + t * wt]);
      for (int i = 0; i < NC; ++i) r[b][i] = Vec::fmadd(wv, x[i], r[b][i]);
    }
  }
  for (int b = 0; b < VB; ++b)
    for (int i = 0; i < NC; ++i) Vec::storeu(acc + b * D + i * W, r[b][i]);
  pf_io = pf;
}

// The widest accumulate_part of at most NC vector slices that fits in `left`; returns its width.
template <int VB, int NC, typename Src>
PAGEDLLM_ATTN_INLINE int64_t accumulate_some(float* acc, int64_t D, const float* c, const float* w, int64_t wb, int64_t wt,
                               const typename Src::T* v, int64_t n, int64_t left, Prefetcher& pf) {
  if constexpr (NC > 1) {
    if (left < NC) return accumulate_some<VB, NC - 1, Src>(acc, D, c, w, wb, wt, v, n, left, pf);
  }
  accumulate_part<VB, NC, Src>(acc, D, c, w, wb, wt, v, n, pf);
  return NC;
}

template <int VB, typename Src>
PAGEDLLM_ATTN_INLINE void block_accumulate(float* acc, int64_t D, const float* c, const float* w, int64_t wb, int64_t wt, const typename Src::T* v,
                             int64_t n, Prefetcher& pf) {
  // Accumulators per step: 16 (AVX-512, of 32 registers) or 8 (AVX2, of 16); one vector takes 8.
  constexpr int NC = VB == 1 ? 8 : (Vec::W == 16 ? 16 : 8) / VB;
  for (int64_t i = 0; i < D;) i += Vec::W * accumulate_some<VB, NC, Src>(acc + i, D, c, w, wb, wt, v + i, n, (D - i) / Vec::W, pf);
}

#else  // portable
// Plain loops with the same contracts (rows t < n only).
template <int VB, bool KM, typename Src>
inline void block_scores(const float* q, int64_t D, const typename Src::T* k, int64_t n, float* e, int64_t E, Prefetcher&) {
  for (int b = 0; b < VB; ++b)
    for (int64_t t = 0; t < n; ++t) {
      const typename Src::T* kt = k + t * D;
      const float* qb = q + b * D;
      float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t i = 0; i < D; i += 8)
        for (int j = 0; j < 8; ++j) s[j] += qb[i + j] * Src::load1(kt + i + j);
      e[KM ? t * VB + b : b * E + t] = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    }
}

template <int VB, typename Src>
inline void block_accumulate(float* acc, int64_t D, const float* c, const float* w, int64_t wb, int64_t wt, const typename Src::T* v,
                             int64_t n, Prefetcher&) {
  for (int b = 0; b < VB; ++b) {
    float* a = acc + b * D;
    for (int64_t i = 0; i < D; ++i) a[i] *= c[b];
    for (int64_t t = 0; t < n; ++t) {
      const float x = w[b * wb + t * wt];
      if (x == 0.0f) continue;
      for (int64_t i = 0; i < D; ++i) a[i] += x * Src::load1(v + t * D + i);
    }
  }
}
#endif

// Calls f(VB, v0) over [0, nv) in runs of 4, then 2, then 1 query vectors.
template <typename F>
inline void by_vector_runs(int64_t nv, F&& f) {
  int64_t v0 = 0;
  for (; v0 + 4 <= nv; v0 += 4) f(std::integral_constant<int, 4>{}, v0);
  if (v0 + 2 <= nv) {
    f(std::integral_constant<int, 2>{}, v0);
    v0 += 2;
  }
  if (v0 < nv) f(std::integral_constant<int, 1>{}, v0);
}

// n-element rows of `Src` to float32, times `scale`.
template <typename Src>
inline void convert(const typename Src::T* p, int64_t n, float scale, float* out) {
#if PAGEDLLM_TILE_AVX2
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(Src::load8(p + i), vs));
#else
  for (int64_t i = 0; i < n; ++i) out[i] = Src::load1(p + i) * scale;
#endif
}

// Rows of any cache dtype to a float32 scratch copy, dequantised.
inline void load_rows(const void* cache, const float* scales, KvCacheDType t, int64_t at, int64_t rows, int64_t n,
                      float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = at + r * n;
    float* o = out + r * n;
    switch (t) {
      case KvCacheDType::Float32: std::memcpy(o, static_cast<const float*>(cache) + base, n * 4); break;
      case KvCacheDType::Float16: convert<SrcF16>(static_cast<const uint16_t*>(cache) + base, n, 1.0f, o); break;
      case KvCacheDType::BFloat16: convert<SrcBF16>(static_cast<const uint16_t*>(cache) + base, n, 1.0f, o); break;
      case KvCacheDType::Int8: convert<SrcI8>(static_cast<const int8_t*>(cache) + base, n, scales[base / n], o); break;
      case KvCacheDType::Fp8E4M3: {
        const uint8_t* p = static_cast<const uint8_t*>(cache) + base;
        const float* table = fp8_table();
        const float s = scales[base / n];
        for (int64_t i = 0; i < n; ++i) o[i] = table[p[i]] * s;
        break;
      }
    }
  }
}

// Calls f(Src, pointer, scaled) with the cache's own element type at element `at`, or with the
// float32 copy in `buf` (filled here) when `direct` is false or the dtype needs it. A float32
// cache is always read in place.
template <typename F>
inline void with_rows(const void* cache, const float* scales, KvCacheDType t, int64_t at, int64_t rows, int64_t n,
                      bool direct, float* buf, F&& f) {
  if (direct || t == KvCacheDType::Float32) {
    switch (t) {
      case KvCacheDType::Float32: f(SrcF32{}, static_cast<const float*>(cache) + at, false); return;
      case KvCacheDType::Float16: f(SrcF16{}, static_cast<const uint16_t*>(cache) + at, false); return;
      case KvCacheDType::BFloat16: f(SrcBF16{}, static_cast<const uint16_t*>(cache) + at, false); return;
      case KvCacheDType::Int8: f(SrcI8{}, static_cast<const int8_t*>(cache) + at, true); return;  // scaled by the caller
      case KvCacheDType::Fp8E4M3: break;
    }
  }
  load_rows(cache, scales, t, at, rows, n, buf);
  f(SrcF32{}, static_cast<const float*>(buf), false);
}

inline float load_query(const void* q, DType t, int64_t i) {
  switch (t) {
    case DType::Float16: return half_bits_to_float(static_cast<const half_t*>(q)[i].bits);
    case DType::BFloat16: return bfloat16_bits_to_float(static_cast<const bfloat16_t*>(q)[i].bits);
    default: return static_cast<const float*>(q)[i];
  }
}

// The online-softmax step of one query vector over one block: e[0, n) holds its raw logits;
// keys outside [lo, hi) (lo < hi) are masked. Leaves e[j] = exp(logit_j − m_new) (0 where
// masked), sets *m = m_new and returns c = exp(m_old − m_new), the factor the accumulator and the
// exp-sum must be scaled by. The SIMD builds keep the exp-sum as W lane partials lsum[0, W)
// (reduced once, at the end of the tile) and never leave the vector registers: the block max is
// broadcast by a butterfly, c comes from the same polynomial.
#if PAGEDLLM_TILE_AVX2
PAGEDLLM_ATTN_INLINE float softmax_step(float* e, int64_t n, int64_t lo, int64_t hi, float* m, float* lsum) {
  using R = Vec::R;
  constexpr int W = Vec::W;
  R mx = Vec::set1(kNegInf);
  for (int64_t j = 0; j < n; j += W) {
    const R x = Vec::keep(Vec::loadu(e + j), lo, hi, j);
    Vec::storeu(e + j, x);
    mx = Vec::max(mx, x);
  }
  const R m_old = Vec::set1(*m);
  const R m_new = Vec::max(m_old, Vec::template gmax<1>(mx));  // finite: lo < hi
  const R c = Vec::exp(Vec::sub(m_old, m_new));  // 0 when m_old = −inf, exactly 1 when unchanged
  R sum = Vec::zero();
  for (int64_t j = 0; j < n; j += W) {
    const R y = Vec::exp(Vec::sub(Vec::loadu(e + j), m_new));
    Vec::storeu(e + j, y);
    sum = Vec::add(sum, y);
  }
  Vec::storeu(lsum, Vec::fmadd(Vec::loadu(lsum), c, sum));
  *m = Vec::first(m_new);
  return Vec::first(c);
}

// softmax_step for a run of VB vectors whose rows all see keys [lo, hi) (lo < hi) of the block,
// weights by key (e[t · VB + b], t < n): each vector op serves W / VB keys of all VB vectors, the
// block maxes are a per-lane-group butterfly, and the exp-sums stay W lane partials in lsum[0, W)
// (lane i: vector i mod VB). Sets m[b], c[b] for b < VB.
template <int VB>
PAGEDLLM_ATTN_INLINE void softmax_km(float* e, int64_t n, int64_t lo, int64_t hi, float* m, float* lsum, float* c) {
  using R = Vec::R;
  constexpr int W = Vec::W, TB = W / VB;
  R mx = Vec::set1(kNegInf);
  for (int64_t t = 0; t < n; t += TB) {
    const R x = Vec::keep(Vec::loadu(e + t * VB), (lo - t) * VB, (hi - t) * VB, 0);
    Vec::storeu(e + t * VB, x);
    mx = Vec::max(mx, x);
  }
  const R m_old = Vec::template gload<VB>(m);
  const R m_new = Vec::max(m_old, Vec::template gmax<VB>(mx));  // finite: lo < hi
  const R cv = Vec::exp(Vec::sub(m_old, m_new));  // 0 when m_old = −inf, exactly 1 when unchanged
  R sum = Vec::zero();
  for (int64_t t = 0; t < n; t += TB) {
    const R y = Vec::exp(Vec::sub(Vec::loadu(e + t * VB), m_new));
    Vec::storeu(e + t * VB, y);
    sum = Vec::add(sum, y);
  }
  Vec::storeu(lsum, Vec::fmadd(Vec::loadu(lsum), cv, sum));
  float mm[W], cc[W];
  Vec::storeu(mm, m_new);
  Vec::storeu(cc, cv);
  for (int b = 0; b < VB; ++b) {
    m[b] = mm[b];
    c[b] = cc[b];
  }
}
#else
inline float softmax_step(float* e, int64_t n, int64_t lo, int64_t hi, float* m, float* lsum) {
  float block_max = kNegInf;
  for (int64_t j = 0; j < n; ++j) {
    if (j < lo || j >= hi) e[j] = kNegInf;
    block_max = std::max(block_max, e[j]);
  }
  const float m_new = std::max(block_max, *m);  // finite: lo < hi
  const float c = m_new == *m ? 1.0f : *m == kNegInf ? 0.0f : std::exp(*m - m_new);
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (e[j] = e[j] == kNegInf ? 0.0f : std::exp(e[j] - m_new));
  *lsum = *lsum * c + sum;
  *m = m_new;
  return c;
}
#endif

// ---- the tile ------------------------------------------------------------------------

inline void tile(const TileJob& job) {
  const PagedAttentionArgs& a = *job.a;
  const KvCacheShape& s = a.shape;
  const int64_t D = s.head_size, B = s.block_size, E = tile_weight_stride(B);
  const int64_t group = a.num_heads / s.num_kv_heads;
  const int64_t nv = job.rows * group;  // query vectors per KV head
  const int64_t total = nv * job.kv_heads;
  const bool quant = kv_dtype_is_quantized(a.cache_dtype);
  const int32_t* table = a.block_tables + job.seq * a.max_blocks_per_seq;

  // Scratch (no allocation here: this code is also compiled for AVX2 and AVX-512, and must
  // not emit shared template instances such as std::vector's with those targets).
  float* const qbuf = job.scratch;
  float* const kbuf = qbuf + total * D;
  float* const vbuf = kbuf + B * D;
  float* const ebuf = vbuf + B * D;  // [nv][E]: a block's scores, then its weights
  float* const cbuf = ebuf + nv * E;  // [nv]: the accumulator factor of the block
#if PAGEDLLM_TILE_AVX2
  constexpr int64_t LW = Vec::W;  // lane partials of each exp-sum
#else
  constexpr int64_t LW = 1;
#endif
  float* const lbuf = cbuf + nv;  // [total][LW]: the exp-sums, reduced into job.l at the end

  // Queries of the job, premultiplied by the softmax scale.
  for (int64_t k = 0; k < job.kv_heads; ++k)
    for (int64_t r = 0; r < job.rows; ++r)
      for (int64_t g = 0; g < group; ++g) {
        const int64_t h = (job.kv_head + k) * group + g;
        const int64_t in = (job.row0 + r) * a.query_stride + h * D;
        float* q = &qbuf[((k * job.rows + r) * group + g) * D];
        if (a.dtype == DType::Float32) {
          const float* src = static_cast<const float*>(a.query) + in;
          for (int64_t d = 0; d < D; ++d) q[d] = src[d] * a.scale;
        } else {
          for (int64_t d = 0; d < D; ++d) q[d] = load_query(a.query, a.dtype, in + d) * a.scale;
        }
      }
  for (int64_t v = 0; v < total; ++v) job.m[v] = kNegInf;
  std::memset(lbuf, 0, static_cast<size_t>(total * LW) * sizeof(float));
  std::memset(job.acc, 0, static_cast<size_t>(total * D) * sizeof(float));

  // Keys any row of the tile can see.
  const int64_t last_pos = job.pos0 + job.rows - 1;
  auto lowest = [&](int64_t p) { return a.sliding_window > 0 ? imax(0, p - a.sliding_window + 1) : int64_t(0); };
  const int64_t k_lo = imax(job.key_begin, lowest(job.pos0));
  const int64_t k_hi = imin(job.key_end, last_pos + 1);  // exclusive
  // Up to 16 query vectors read each K/V row straight from the cache (converting it again per run
  // of 4 vectors: measured faster than a float32 copy for GQA groups of 8 and 16); more (prefill
  // tiles) share a float32 copy.
  const bool direct = nv <= 16;
  // Logit adjustments beyond the scale (rare): applied per score before the softmax.
  const bool adjust = a.softcap > 0 || a.alibi_slopes != nullptr;
  const int64_t esize = static_cast<int64_t>(kv_dtype_size(a.cache_dtype));
  // An int8 cache read in place leaves its key scales to the logits.
  const bool kscaled = a.cache_dtype == KvCacheDType::Int8 && direct;
  // Decode tiles (one row: every vector sees every key of the tile) with nothing to apply per
  // logit keep their weights by key (softmax_km); the rest by vector.
#if PAGEDLLM_TILE_AVX2
  const bool by_key = job.rows == 1 && !adjust && !kscaled;
#else
  const bool by_key = false;
#endif
  for (int64_t block_start = k_lo / B * B; block_start < k_hi; block_start += B) {
    const int64_t t0 = imax(block_start, k_lo), t1 = imin(block_start + B, k_hi);
    const int32_t block = table[block_start / B];  // validated by the caller
    const int64_t n = t1 - t0;
    if (n <= 0) continue;
    // The job's KV heads of one block are consecutive runs (HND): K and V stream through them.
    for (int64_t k = 0; k < job.kv_heads; ++k) {
      const int64_t kv_head = job.kv_head + k;
      // Ask for the next (block, head) step's K and V: this block's next head, or the next block's first.
      Prefetcher pf;
      if (k + 1 < job.kv_heads || block_start + B < k_hi) {
        const int64_t next = k + 1 < job.kv_heads ? s.index(block, kv_head + 1, 0) : s.index(table[block_start / B + 1], job.kv_head, 0);
        pf.k = static_cast<const char*>(a.key_cache) + next * esize;
        pf.v = static_cast<const char*>(a.value_cache) + next * esize;
        pf.left = (B * D * esize + 63) / 64;
        if (quant)
          for (int64_t i = 0; i < B * 4; i += 64) {
            prefetch_line(reinterpret_cast<const char*>(a.key_scales + next / D) + i);
            prefetch_line(reinterpret_cast<const char*>(a.value_scales + next / D) + i);
          }
      }
      const int64_t at = s.index(block, kv_head, t0 - block_start);
      float* const m = job.m + k * nv;
      float* const lsum = lbuf + k * nv * LW;
      float* const acc = job.acc + k * nv * D;
      const float* const qk = qbuf + k * nv * D;
      // Scores of every query vector against every row of the block, then the online-softmax
      // update per vector; e = exp(logit − m_new) kept for the V pass.
      if (by_key) {
#if PAGEDLLM_TILE_AVX2
        with_rows(a.key_cache, a.key_scales, a.cache_dtype, at, n, D, direct, kbuf, [&](auto src, const auto* krows, bool) {
          using Src = decltype(src);
          by_vector_runs(nv, [&](auto vb, int64_t v0) {
            block_scores<decltype(vb)::value, true, Src>(qk + v0 * D, D, krows, n, ebuf + v0 * E, E, pf);
          });
        });
        // A decode row sees every key of the tile.
        const int64_t lo = imax(t0, lowest(job.pos0)) - t0, hi = imin(t1, job.pos0 + 1) - t0;
        by_vector_runs(nv, [&](auto vb, int64_t v0) {
          softmax_km<decltype(vb)::value>(ebuf + v0 * E, n, lo, hi, m + v0, lsum + v0 * LW, cbuf + v0);
        });
        with_rows(a.value_cache, a.value_scales, a.cache_dtype, at, n, D, direct, vbuf, [&](auto src, const auto* vrows, bool) {
          using Src = decltype(src);
          by_vector_runs(nv, [&](auto vb, int64_t v0) {
            constexpr int VB = decltype(vb)::value;
            block_accumulate<VB, Src>(acc + v0 * D, D, cbuf + v0, ebuf + v0 * E, 1, VB, vrows, n, pf);
          });
        });
#endif
      } else {
        with_rows(a.key_cache, a.key_scales, a.cache_dtype, at, n, D, direct, kbuf, [&](auto src, const auto* krows, bool) {
          using Src = decltype(src);
          by_vector_runs(nv, [&](auto vb, int64_t v0) {
            block_scores<decltype(vb)::value, false, Src>(qk + v0 * D, D, krows, n, ebuf + v0 * E, E, pf);
          });
        });
        for (int64_t v = 0; v < nv; ++v) {
          const int64_t r = v / group, p = job.pos0 + r;
          const int64_t lo = imax(t0, lowest(p)) - t0, hi = imin(t1, p + 1) - t0;  // visible to this row
          float* e = ebuf + v * E;
          if (lo >= hi) {
            for (int64_t j = 0; j < n; ++j) e[j] = 0.0f;
            cbuf[v] = 1.0f;
            continue;
          }
          if (kscaled || adjust) {
            const int64_t h = kv_head * group + v % group;
            for (int64_t j = lo; j < hi; ++j) {
              float x = e[j];
              if (kscaled) x *= a.key_scales[at / D + j];
              if (a.softcap > 0) x = a.softcap * std::tanh(x / a.softcap);
              if (a.alibi_slopes) x += a.alibi_slopes[h] * static_cast<float>(t0 + j - p);
              e[j] = x;
            }
          }
          cbuf[v] = softmax_step(e, n, lo, hi, &m[v], lsum + v * LW);
        }
        // Values: rows [t0, t1) are all inside the sequence (t1 ≤ last_pos + 1 ≤ seq_len); a row's
        // weight is 0 where it may not look.
        with_rows(a.value_cache, a.value_scales, a.cache_dtype, at, n, D, direct, vbuf, [&](auto src, const auto* vrows, bool scaled) {
          using Src = decltype(src);
          if (scaled)
            for (int64_t v = 0; v < nv; ++v)
              for (int64_t j = 0; j < n; ++j) ebuf[v * E + j] *= a.value_scales[at / D + j];
          by_vector_runs(nv, [&](auto vb, int64_t v0) {
            block_accumulate<decltype(vb)::value, Src>(acc + v0 * D, D, cbuf + v0, ebuf + v0 * E, E, 1, vrows, n, pf);
          });
        });
      }
      pf.rest();
    }
  }
#if PAGEDLLM_TILE_AVX2
  if (by_key) {  // a run's exp-sums: lane i of its first slot holds vector i mod VB's partials
    for (int64_t k = 0; k < job.kv_heads; ++k)
      by_vector_runs(nv, [&](auto vb, int64_t v0) {
        constexpr int VB = decltype(vb)::value;
        const float* ls = lbuf + (k * nv + v0) * LW;
        for (int b = 0; b < VB; ++b) {
          float sum = 0;
          for (int i = b; i < Vec::W; i += VB) sum += ls[i];
          job.l[k * nv + v0 + b] = sum;
        }
      });
  } else {
    for (int64_t v = 0; v < total; ++v) job.l[v] = Vec::hsum(Vec::loadu(lbuf + v * LW));
  }
#else
  for (int64_t v = 0; v < total; ++v) job.l[v] = lbuf[v];
#endif
}

}  // namespace PAGEDLLM_TILE_NAMESPACE
}  // namespace pagedllm::attention_cpu
#endif  // PAGEDLLM_TILE_IMPLEMENTATION
