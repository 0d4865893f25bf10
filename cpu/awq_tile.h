// The CPU AWQ int4 kernels (include/pagedllm/awq.h, awq_linear): the inner
// loops that cpu/awq.cpp splits over the thread pool.
//
// - gemv (M ≤ kAwqGemvMaxRows, AutoAWQ weights, float32 x): rows [k0, k1), words [word0, word1) against
//   M float32 activation rows. A strip is L consecutive words (L = 8 with
//   AVX2: 64 columns, 32 bytes per row); slot i of all L words is unpacked at
//   once — masked in place and converted, q·16^i, the power of two undone per
//   group — so an accumulator holds columns 8·word + kOrder[i] and nothing is
//   shuffled in the loop. Per group g:
//     Σ_{k∈g} x·W = s·(Σ_{k∈g} x·q − z·Σ_{k∈g} x)
//   so the loop is one FMA per code; the zero point (unpacked the same way,
//   already in slot order) and the scale (8 × 8 transposed into slot order)
//   are applied once per group and strip. Loop order is block-major: a block's
//   rows × the job's columns are read strip by strip, and the second strip of
//   each 64-byte line finds it in L1. Groups are cut into 32-row blocks
//   (partial sums kept in memory), and jobs are row ranges of whole rows: each
//   thread streams one contiguous stretch of memory and prefetches the next
//   block (~64 KiB ahead at N = 4096) in order while it computes this one.
//   Napkin math: a 4096 × 4096 int4 weight is 8 MiB (+ 4 % scales and zeros),
//   ~0.4 ms at 20 GB/s; per 8 codes the loop issues an AND, a convert and an
//   FMA (3.25 vector µops with the load and broadcast shared by 64 codes), so
//   two AVX2 cores only just keep up with DRAM — every µop counts here.
// - gemv_i8 (M ≤ kAwqGemvMaxRows, AVX2, Slab8 weights, x quantized to int8): the decode path of
//   a model loaded on an AVX2 CPU; see its section below.
// - gemm_block (larger M): a block of ≤ kAwqGemmNB columns × all M rows.
//   K is walked in steps of kAwqGemmKC; each step dequantizes the block to
//   exactly W (float32 values of float16, natural column order — the words are
//   row-major, so this is the weight panel of a GotoBLAS GEMM with no
//   transpose) and runs the 6 × 16 register tile of linear_tile.h over
//   every 6-row panel of the activations (packed by linear_tile.h pack_x).
//
// Compiled three times, like linear_tile.h: awq_tile.cpp (portable: GCC/Clang
// 4-wide vector extensions or plain loops), awq_tile_avx2.cpp (AVX2 + FMA +
// F16C) and awq_tile_avx512.cpp (AVX-512 + VNNI: the int8 dot products are
// vpdpbusd, and the float gemm runs linear_tile.h's 512-bit tile), chosen at run
// time. Nothing here allocates or calls a shared template, so
// the AVX2 build emits nothing that a file built for another target also emits
// (the register tile and pack it takes from linear_tile.h are built for the
// same target in both).
#pragma once

#include <cstdint>

#include "pagedllm/awq.h"

namespace pagedllm::awq_kernels {

constexpr int64_t kAwqGemvMaxRows = 8;   // M ≤ this takes the gemv path
constexpr int64_t kAwqBlockRows = 32;    // rows per gemv block (larger groups are split; sums kept in memory)
constexpr int64_t kAwqGemmMR = 6, kAwqGemmNR = 16;
constexpr int64_t kAwqGemmNB = 128;      // columns per gemm block (16 words)
constexpr int64_t kAwqGemmKC = 256;      // rows per dequantized step: a 16-column panel is 16 KiB (L1)

// Rows per gemv block: blocks never straddle a group (G is 32, 64, 128, or K: then the last block
// may be short), and xsum is kept per block so that a job may start and end anywhere on a block.
constexpr int64_t awq_gemv_block_rows(int64_t group_size) { return group_size < kAwqBlockRows ? group_size : kAwqBlockRows; }

// y[i · ldy + 8·(c − word0) + j] = Σ_{k0 ≤ k < k1} x[i, k] · W[k, 8c + j] for i < m, word0 ≤ c < word1, j < 8:
// the partial sum of rows [k0, k1) (block boundaries).
struct AwqGemvJob {
  const float* x;     // [m, K] float32, contiguous
  const float* xsum;  // [m, blocks]: Σ x[i, k] over each block of awq_gemv_block_rows(G) rows
  int64_t m;          // 1 … kAwqGemvMaxRows
  const AwqWeight* w;
  int64_t k0, k1;
  int64_t word0, word1;
  float* y;  // [m, ldy]
  int64_t ldy;
  float* scratch;  // awq_gemv_scratch_floats(m, word1 − word0) floats, 32-byte aligned
};
// Scratch of a gemv job: the output and (for groups over one block) partial sums, each
// [strips][m][8 slots][8 lanes], plus the scales of one strip in slot order.
constexpr int64_t awq_gemv_scratch_floats(int64_t m, int64_t words) { return 2 * ((words + 7) / 8) * m * 64 + 64; }

// c[i · ldc + j] = Σ_k x[i, k] · W[k, n0 + j] for i < round_up(m, 6), j < round_up(nb, 16).
struct AwqGemmJob {
  const float* xp;  // x packed in 6-row panels: [ceil(m / 6)][K][6] float32, rows past m zero
  int64_t m;
  const AwqWeight* w;
  int64_t n0, nb;  // n0 a multiple of 8, nb ≤ kAwqGemmNB (a multiple of 8)
  float* c;        // [round_up(m, 6), ldc], ldc ≥ kAwqGemmNB
  int64_t ldc;
  float* scratch;  // kAwqGemmNB · kAwqGemmKC floats, 32-byte aligned
};

// ---- gemv with int8 activations over a Slab8 weight (AVX2 and AVX-512 paths) -----------------
// The product of gemv over whole rows with x quantized by awq_quantize_activations (awq.h): per
// 16-row activation block (two slabs) and column, Σ c·q is exact in integers — each slab's 32-byte
// vector of 8 columns, masked to its low and its high nibbles, times the 4 broadcast codes of those
// rows (vpmaddubsw: codes q ∈ [0, 15] unsigned times c ∈ [−127, 127] signed, pairs of rows summed
// in int16), the four products added (|Σ| ≤ 16 · 15 · 127 / 2 = 15240 < 2^15 per int16 lane) and
// the two lanes of a column summed into int32 (vpmaddwd by ones) — then per block acc += d_b · Σ c·q
// in float32 and per group y += s · (acc − z · Σ_b d_b · Σ c), all in natural column order. Each
// 32-row step reads four contiguous runs of 4·N bytes (its slabs) and requests the next step's.
constexpr int64_t kAwqI8BlockRows = 32;  // rows per step; jobs are ranges of whole steps
struct AwqGemvI8Job {
  const int8_t* xq;      // [m, xq_stride] codes; xq_stride ≥ K
  int64_t xq_stride;
  const float* xscale;   // [m, xblocks]: d_b of each 16-row block
  const float* xsum;     // [m, xblocks]: d_b · Σ c over the block
  int64_t xblocks;       // K / 16
  int64_t m;             // 1 … kAwqGemvMaxRows
  const AwqWeight* w;    // layout Slab8 (K a multiple of 32)
  int64_t k0, k1;        // multiples of 32
  float* y;              // [m, ldy]: y[i · ldy + n] = Σ_{k0 ≤ k < k1} x̂[i, k] · W[k, n] (overwritten)
  int64_t ldy;
  float* scratch;        // awq_gemv_i8_scratch_floats(m, N) floats, 32-byte aligned
};
constexpr int64_t awq_gemv_i8_scratch_floats(int64_t m, int64_t n) { return m * n; }
void gemv_i8_avx2(const AwqGemvI8Job& job);
void gemv_i8_avx512(const AwqGemvI8Job& job);

// ---- gemm with int8 activations over a Slab8 weight (AVX2 and AVX-512 paths) -----------------
// The same arithmetic as gemv_i8 for any M: x quantized per 16 values and packed in 6-row panels;
// a task is a range of column octets, each multiplied by every panel with a 6 × 8 register tile
// over all of K (the octet's K/8 words, 4·K bytes, copied to one contiguous run first, stay in L1
// across the panels; see wpack): per 16-row block 2 loads and 6 unpacking ops, then per row 4
// vpmaddubsw, 3 adds, a vpmaddwd, a convert and an FMA by the block's scale — 128 multiply-adds in
// 11 vector ops, where the float32 tile needs 16 FMAs. AVX-512: two octets per zmm and 4 vpdpbusd
// in place of the 4 vpmaddubsw, 3 adds and vpmaddwd — 256 multiply-adds in 7 vector ops.
constexpr int64_t kAwqI8PanelRows = 6;
struct AwqGemmI8Job {
  const int8_t* xq;      // [panels][K/16][6][16] codes (rows past M zero)
  const float* xscale;   // [panels][K/16][6]: d_b
  const float* xsum;     // [panels][K/G][6]: Σ_{b ∈ g} d_b · Σ c
  int64_t panels;
  const AwqWeight* w;    // layout Slab8
  int64_t n0, nb;        // columns [n0, n0 + nb), multiples of 8
  float* c;              // [panels · 6][ldc]: c[r · ldc + j] = Σ_k x̂[r, k] · W[k, n0 + j] (overwritten)
  int64_t ldc;
  int32_t* wpack;        // awq_gemm_i8_pack_words(K) int32, 64-byte aligned: the columns' slabs, contiguous
};
// The columns a gemm_i8 pass reads (two octets on AVX-512, one on AVX2) are copied to `wpack` first:
// in place, slab r of an octet is 4·N bytes from slab r − 1, so with N a multiple of 1024 every
// slab falls in the same L1 set (and its own page), and each of the M/6 panels read them from L2
// again; copied, they are one contiguous run that stays in L1 (or streams from L2) across panels.
constexpr int64_t awq_gemm_i8_pack_words(int64_t K) { return K / 8 * 16; }
void gemm_i8_avx2(const AwqGemmI8Job& job);
void gemm_i8_avx512(const AwqGemmI8Job& job);
// awq_quantize_activations of x[0, n) with AVX2 (the same codes and scales), plus sums[b] = d_b · Σ c.
void quantize_activations_avx2(const float* x, int64_t n, int8_t* codes, float* scales, float* sums);

void gemv_portable(const AwqGemvJob& job);
void gemv_avx2(const AwqGemvJob& job);
void gemm_block_portable(const AwqGemmJob& job);
void gemm_block_avx2(const AwqGemmJob& job);
void gemv_avx512(const AwqGemvJob& job);
void gemm_block_avx512(const AwqGemmJob& job);

}  // namespace pagedllm::awq_kernels

#ifdef PAGEDLLM_TILE_IMPLEMENTATION
#include <cstring>
#include <type_traits>
#include <utility>
#if PAGEDLLM_TILE_AVX2
#include <immintrin.h>
#endif

#include "linear_tile.h"  // (its implementation, built with the same target: the register tile)
#include "simd.h"

namespace pagedllm::awq_kernels {
namespace PAGEDLLM_TILE_NAMESPACE {

using namespace simd::PAGEDLLM_TILE_NAMESPACE;
using linear_kernels::PAGEDLLM_TILE_NAMESPACE::run_tiles;
static_assert(kAwqGemmMR == linear_kernels::kGemmMR && kAwqGemmNR == linear_kernels::kGemmNR &&
                  kAwqGemmKC == linear_kernels::kGemmKC,
              "gemm_block runs linear_tile.h's register tiles over its packed steps");
#if PAGEDLLM_TILE_AVX2
using linear_kernels::PAGEDLLM_TILE_NAMESPACE::transpose8;
#endif

// ---- vectors of packed words --------------------------------------------------------------------
// Words::L words per vector; nibble<SHIFT>(v): the code at bit SHIFT of every lane as float32, times
// 2^SHIFT (the code masked in place and converted: no shift, and exact — at most 4 significant bits)
// for SHIFT < 28; the top code is shifted down (in place it would be the sign). Callers scale by 2^−SHIFT.

#if PAGEDLLM_TILE_AVX2
struct Words {
  static constexpr int L = 8;
  using I = __m256i;
  using F = __m256;
  static I load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  template <int SHIFT>
  static F nibble(I v) {
    if constexpr (SHIFT == 28) return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28));
    else return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15 << SHIFT)));
  }
  static F zero() { return _mm256_setzero_ps(); }
  static F splat(float v) { return _mm256_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F loadf(const float* p) { return _mm256_load_ps(p); }
  static void storef(float* p, F v) { _mm256_store_ps(p, v); }
};
#elif PAGEDLLM_TILE_VEC4
struct Words {
  static constexpr int L = 4;
  using I = u32x4;
  using F = f32x4;
  static I load(const int32_t* p) {
    I v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  template <int SHIFT>
  static F nibble(I v) {
    if constexpr (SHIFT == 28) return __builtin_convertvector(v >> 28, f32x4);
    else return __builtin_convertvector(v & (15u << SHIFT), f32x4);
  }
  static F zero() { return F{0, 0, 0, 0}; }
  static F splat(float v) { return F{v, v, v, v}; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F loadf(const float* p) { return load4(p); }
  static void storef(float* p, F v) { store4(p, v); }
};
#else
struct Words {
  static constexpr int L = 1;
  using I = uint32_t;
  using F = float;
  static I load(const int32_t* p) { return static_cast<uint32_t>(*p); }
  template <int SHIFT>
  static F nibble(I v) { return static_cast<float>(v & (15u << SHIFT)); }
  static F zero() { return 0.0f; }
  static F splat(float v) { return v; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F loadf(const float* p) { return *p; }
  static void storef(float* p, F v) { *p = v; }
};
#endif
constexpr int L = Words::L;
using F = Words::F;

// ---- gemv ----------------------------------------------------------------------------------------

// The scales of words [word, word + lanes) of group row `srow` in slot order:
// out[i · L + l] = scale of column 8·(word + l) + kOrder[i].
inline void slot_scales(const uint16_t* srow, int64_t word, int lanes, float* out) {
#if PAGEDLLM_TILE_AVX2
  if (lanes == L) {
    __m256 r[8];
    for (int l = 0; l < 8; ++l)  // row l: the 8 columns of word + l
      r[l] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(srow + 8 * (word + l))));
    transpose8(r);  // r[j], lane l: column 8·(word + l) + j
    for (int i = 0; i < 8; ++i) _mm256_store_ps(out + i * L, r[awq::kOrder[i]]);
    return;
  }
#endif
  for (int i = 0; i < 8; ++i)
    for (int l = 0; l < L; ++l)
      out[i * L + l] = l < lanes ? SrcF16::load1(srow + 8 * (word + l) + awq::kOrder[i]) : 0.0f;
}

// acc[i][IDX] += x[i] · q for the codes at bit SHIFT of v.
template <int SHIFT, int IDX, int M, int S>
inline void fma_slot(typename Words::I v, const F (&x)[M], F (&acc)[M][S]) {
  const F q = Words::template nibble<SHIFT>(v);
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) acc[i][IDX] = Words::fma(x[i], q, acc[i][IDX]);
}
template <int M, int S, int P, int... I>
inline void fma_slots(typename Words::I v, const F (&x)[M], F (&acc)[M][S], std::integer_sequence<int, I...>) {
  (fma_slot<4 * (P * S + I), I>(v, x, acc), ...);
}

// Slots [P·S, P·S + S) of one strip over rows [k0, k1): acc[m][s] += x[m, k] · q[k, slot].
// `words` points at the strip's first word in row 0; a tail strip (lanes < L) reads through `tail`.
// `prefetch`: L words per row to request for later (see gemv_m), or null.
template <int M, int S, int P>
inline void gemv_pass(const AwqGemvJob& job, const int32_t* words, int64_t ldw, int lanes, int64_t k0, int64_t k1,
                      const int32_t* prefetch, F (&acc)[M][S]) {
  const int64_t K = job.w->in_features;
  alignas(32) int32_t tail[L] = {};
  for (int64_t k = k0; k < k1; ++k) {
    const int32_t* p = words + k * ldw;
    if (P == 0 && prefetch) __builtin_prefetch(prefetch + (k - k0) * L, 0, 2);
    if (lanes < L) {
      std::memcpy(tail, p, lanes * sizeof(int32_t));
      p = tail;
    }
    F x[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) x[i] = Words::splat(job.x[i * K + k]);
    fma_slots<M, S, P>(Words::load(p), x, acc, std::make_integer_sequence<int, S>{});
  }
}

// The group's epilogue for slot P·S + IDX: y += s · (acc − z · Σx), Σx over the rows summed in acc.
template <int SLOT, int IDX, int M, int S>
inline void finish_slot(typename Words::I zv, const float* scales, const float (&sx)[M], const F (&acc)[M][S], float* yacc) {
  // acc holds Σ x·q·2^shift and z comes as z·2^shift (nibble<>): t = 2^shift · (Σ x·q − z·Σx).
  const F z = Words::template nibble<4 * SLOT>(zv);
  const F s = Words::mul(Words::loadf(scales + SLOT * L), Words::splat(SLOT == 7 ? 1.0f : 1.0f / float(1u << (4 * SLOT))));
  for (int i = 0; i < M; ++i) {
    const F t = Words::sub(acc[i][IDX], Words::mul(z, Words::splat(sx[i])));
    float* y = yacc + (i * 8 + SLOT) * L;
    Words::storef(y, Words::fma(s, t, Words::loadf(y)));
  }
}
template <int M, int S, int P, int... I>
inline void finish_slots(typename Words::I zv, const float* scales, const float (&sx)[M], const F (&acc)[M][S], float* yacc,
                         std::integer_sequence<int, I...>) {
  (finish_slot<P * S + I, I>(zv, scales, sx, acc, yacc), ...);
}

template <int M, int S, int P>
inline void gemv_strip_pass(const AwqGemvJob& job, int64_t word, int lanes, int64_t k0, int64_t k1, bool group_start,
                            bool group_end, const float (&sx)[M], const int32_t* prefetch, float* yacc, float* gacc,
                            const float* scales) {
  const AwqWeight& w = *job.w;
  const int64_t ldw = w.out_features / 8, g = k0 / w.group_size;
  F acc[M][S];
  for (int i = 0; i < M; ++i)
    for (int s = 0; s < S; ++s) acc[i][s] = group_start ? Words::zero() : Words::loadf(gacc + (i * 8 + P * S + s) * L);
  gemv_pass<M, S, P>(job, w.qweight + word, ldw, lanes, k0, k1, prefetch, acc);
  if (!group_end) {
    for (int i = 0; i < M; ++i)
      for (int s = 0; s < S; ++s) Words::storef(gacc + (i * 8 + P * S + s) * L, acc[i][s]);
    return;
  }
  alignas(32) int32_t zwords[L] = {};
  std::memcpy(zwords, w.qzeros + g * ldw + word, lanes * sizeof(int32_t));
  finish_slots<M, S, P>(Words::load(zwords), scales, sx, acc, yacc, std::make_integer_sequence<int, S>{});
}

template <int M, int S, int... P>
inline void gemv_strip(const AwqGemvJob& job, int64_t word, int lanes, int64_t k0, int64_t k1, bool group_start,
                       bool group_end, const float (&sx)[M], const int32_t* prefetch, float* yacc, float* gacc,
                       const float* scales, std::integer_sequence<int, P...>) {
  (gemv_strip_pass<M, S, P>(job, word, lanes, k0, k1, group_start, group_end, sx, prefetch, yacc, gacc, scales), ...);
}

// Slots per pass: M · S accumulators, at most 8 (plus M activations and the words in registers).
template <int M>
constexpr int slots_per_pass() { return M == 1 ? 8 : M == 2 ? 4 : M <= 4 ? 2 : 1; }

template <int M>
inline void gemv_m(const AwqGemvJob& job) {
  constexpr int S = slots_per_pass<M>();
  const AwqWeight& w = *job.w;
  const int64_t K = w.in_features, G = w.group_size, ldw = w.out_features / 8;
  const int64_t kb = awq_gemv_block_rows(G), blocks = (K + kb - 1) / kb;
  const int64_t strips = (job.word1 - job.word0 + L - 1) / L, per_strip = M * 8 * L;
  float* yacc = job.scratch;                     // [strips][M][8][L]
  float* gacc = yacc + strips * per_strip;       // [strips][M][8][L]
  float* scales = gacc + strips * per_strip;     // [8][L]
  for (int64_t i = 0; i < strips * per_strip; ++i) yacc[i] = 0.0f;
  // The next block's words are requested while this block runs, L words per row iteration: with
  // whole rows (word0 = 0, word1 = N / 8) that is exactly the next block, one contiguous stretch. The
  // strided walk down a strip would otherwise miss on every 64-byte line: no hardware prefetcher
  // follows a 2 KiB stride with two rows per 4 KiB page.
  const bool whole_rows = job.word0 == 0 && job.word1 == ldw;
  if (whole_rows) {  // the job's first block has no block before it to request it: ask for it all now
    const int32_t* end = w.qweight + (job.k0 + kb < K ? job.k0 + kb : K) * ldw;
    for (const int32_t* p = w.qweight + job.k0 * ldw; p < end; p += 16) __builtin_prefetch(p, 0, 2);
  }
  float sx[M] = {};
  for (int64_t k0 = job.k0; k0 < job.k1; k0 += kb) {
    const int64_t k1 = k0 + kb < K ? k0 + kb : K;
    const bool group_start = k0 == job.k0 || k0 % G == 0, group_end = k1 == job.k1 || k1 % G == 0;
    const int64_t g = k0 / G;
    for (int i = 0; i < M; ++i) sx[i] = (group_start ? 0.0f : sx[i]) + job.xsum[i * blocks + k0 / kb];
    const int32_t* next = whole_rows && k1 < K ? w.qweight + k1 * ldw : nullptr;
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t word = job.word0 + s * L;
      const int lanes = static_cast<int>(job.word1 - word < L ? job.word1 - word : L);
      if (group_end) slot_scales(w.scales + g * w.out_features, word, lanes, scales);
      gemv_strip<M, S>(job, word, lanes, k0, k1, group_start, group_end, sx, next ? next + s * (k1 - k0) * L : nullptr,
                       yacc + s * per_strip, gacc + s * per_strip, scales, std::make_integer_sequence<int, 8 / S>{});
    }
  }
  // Slot order back to columns.
  for (int64_t s = 0; s < strips; ++s) {
    const int64_t word = job.word0 + s * L;
    const int64_t lanes = job.word1 - word < L ? job.word1 - word : L;
    for (int i = 0; i < M; ++i)
      for (int slot = 0; slot < 8; ++slot)
        for (int64_t l = 0; l < lanes; ++l)
          job.y[i * job.ldy + 8 * (word - job.word0 + l) + awq::kOrder[slot]] = yacc[s * per_strip + (i * 8 + slot) * L + l];
  }
}

// f(std::integral_constant<int, m>{}) for m = 1 … kAwqGemvMaxRows (the gemvs' row counts as template
// arguments, so their accumulators are registers).
template <typename F>
inline void with_rows(int64_t m, F&& f) {
  switch (m) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}
static_assert(kAwqGemvMaxRows == 8, "with_rows covers 1 … 8 rows");

inline void gemv(const AwqGemvJob& job) {
  with_rows(job.m, [&](auto m) { gemv_m<decltype(m)::value>(job); });
}

// ---- gemv, int8 activations (AVX2, AVX-512) ------------------------------------------------------
#if PAGEDLLM_TILE_AVX2

inline void quantize_activations(const float* x, int64_t n, int8_t* codes, float* scales, float* sums) {
  constexpr int64_t B = awq::kActivationBlock;
  static_assert(B == 16, "two vectors per block");
  const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.4028234663852886e38f);
  int64_t b0 = 0;
  for (; b0 + B <= n; b0 += B) {
    const __m256 v0 = _mm256_loadu_ps(x + b0), v1 = _mm256_loadu_ps(x + b0 + 8);
    const __m256 a0 = _mm256_andnot_ps(sign, v0), a1 = _mm256_andnot_ps(sign, v1);
    // Finite: |x| ≤ FLT_MAX, false for NaN (ordered compare).
    const int finite = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(a0, big, _CMP_LE_OQ), _mm256_cmp_ps(a1, big, _CMP_LE_OQ)));
    __m256 m = _mm256_max_ps(a0, a1);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    const float amax = _mm_cvtss_f32(h);
    const int64_t b = b0 / B;
    if (finite != 0xFF || amax < 1e-30f) {
      std::memset(codes + b0, 0, B);
      scales[b] = finite != 0xFF ? __builtin_nanf("") : 0.0f;
      sums[b] = scales[b];
      continue;
    }
    const __m256 inv = _mm256_set1_ps(127.0f / amax);
    // cvtps rounds to nearest even (the default mode), as nearbyint does; |x · inv| ≤ 127.
    const __m256i c0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), c1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
    const __m256i c16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(c0, c1), 0xD8);  // 16 int16 in order
    const __m128i c8 = _mm_packs_epi16(_mm256_castsi256_si128(c16), _mm256_extracti128_si256(c16, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + b0), c8);
    __m256i t = _mm256_add_epi32(c0, c1);
    __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0x4E));
    u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0xB1));
    scales[b] = amax / 127.0f;
    sums[b] = scales[b] * static_cast<float>(_mm_cvtsi128_si32(u));
  }
  if (b0 < n) {  // a short last block: the definition itself
    awq_quantize_activations(x + b0, n - b0, codes + b0, scales + b0 / B);
    int sum = 0;
    for (int64_t k = b0; k < n; ++k) sum += codes[k];
    sums[b0 / B] = scales[b0 / B] * static_cast<float>(sum);
  }
}

// Vectors of W int32 (or float32) lanes for the int8 kernels: W = 8 columns (ymm) on both paths,
// W = 16 (zmm: one 64-byte line of a slab, two octets) on avx512. The kernels below are written once
// over W; per column they do the same operations in the same order at either width.
// dot: Σ_{t<4} (4 codes of u_t) · (4 codes x4[t]) per 32-bit lane, for the masked slabs
// u = l0, h0, l1, h1. AVX2: vpmaddubsw (pairs summed in int16: exact, see above), three adds and
// vpmaddwd by ones; AVX-512 VNNI: four vpdpbusd (a lane's 4 products summed straight into int32).
// Both sums are exact integers, so both paths give the same bits.
template <int W>
struct I8V;

template <>
struct I8V<8> {
  using I = __m256i;
  using F = __m256;
  static I load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(int32_t* p, I v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
  static I low(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
  static I high(I v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F)); }
  static I dot(I l0, I h0, I l1, I h1, const int32_t* x4) {
#if PAGEDLLM_TILE_AVX512
    I a = _mm256_dpbusd_epi32(_mm256_setzero_si256(), l0, _mm256_set1_epi32(x4[0]));
    a = _mm256_dpbusd_epi32(a, h0, _mm256_set1_epi32(x4[1]));
    a = _mm256_dpbusd_epi32(a, l1, _mm256_set1_epi32(x4[2]));
    return _mm256_dpbusd_epi32(a, h1, _mm256_set1_epi32(x4[3]));
#else
    const I p = _mm256_add_epi16(
        _mm256_add_epi16(_mm256_maddubs_epi16(l0, _mm256_set1_epi32(x4[0])), _mm256_maddubs_epi16(h0, _mm256_set1_epi32(x4[1]))),
        _mm256_add_epi16(_mm256_maddubs_epi16(l1, _mm256_set1_epi32(x4[2])), _mm256_maddubs_epi16(h1, _mm256_set1_epi32(x4[3]))));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
  }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  static F splat(float v) { return _mm256_set1_ps(v); }
  static F zero() { return _mm256_setzero_ps(); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F loadf(const float* p) { return _mm256_loadu_ps(p); }
  static void storef(float* p, F v) { _mm256_storeu_ps(p, v); }
  // The scales of W columns (float16), and the zero points of their octets' words in column order.
  static F scales(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F zeros(const int32_t* words) {
    const I shifts = _mm256_setr_epi32(awq::column_shift(0), awq::column_shift(1), awq::column_shift(2), awq::column_shift(3),
                                       awq::column_shift(4), awq::column_shift(5), awq::column_shift(6), awq::column_shift(7));
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(words[0]), shifts), _mm256_set1_epi32(15)));
  }
};

#if PAGEDLLM_TILE_AVX512
template <>
struct I8V<16> {
  using I = __m512i;
  using F = __m512;
  static I load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store(int32_t* p, I v) { _mm512_store_si512(p, v); }
  static I low(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
  static I high(I v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F)); }
  static I dot(I l0, I h0, I l1, I h1, const int32_t* x4) {
    I a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), l0, _mm512_set1_epi32(x4[0]));
    a = _mm512_dpbusd_epi32(a, h0, _mm512_set1_epi32(x4[1]));
    a = _mm512_dpbusd_epi32(a, l1, _mm512_set1_epi32(x4[2]));
    return _mm512_dpbusd_epi32(a, h1, _mm512_set1_epi32(x4[3]));
  }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static F splat(float v) { return _mm512_set1_ps(v); }
  static F zero() { return _mm512_setzero_ps(); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F loadf(const float* p) { return _mm512_loadu_ps(p); }
  static void storef(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F scales(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F zeros(const int32_t* words) {
    const I shifts = _mm512_setr_epi32(awq::column_shift(0), awq::column_shift(1), awq::column_shift(2), awq::column_shift(3),
                                       awq::column_shift(4), awq::column_shift(5), awq::column_shift(6), awq::column_shift(7),
                                       awq::column_shift(0), awq::column_shift(1), awq::column_shift(2), awq::column_shift(3),
                                       awq::column_shift(4), awq::column_shift(5), awq::column_shift(6), awq::column_shift(7));
    const I z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(words[0])), _mm256_set1_epi32(words[1]), 1);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(z, shifts), _mm512_set1_epi32(15)));
  }
};
constexpr int kI8Wide = 16;  // the widest I8V: columns per step of the int8 loops
#else
constexpr int kI8Wide = 8;
#endif

// Σ c·q of one 16-row block (slabs v0, v1) for W columns, int32 → float32; x4: the block's 16 codes.
template <int W>
inline typename I8V<W>::F block_sum(typename I8V<W>::I v0, typename I8V<W>::I v1, const int32_t* x4) {
  using V = I8V<W>;
  return V::cvt(V::dot(V::low(v0), V::high(v0), V::low(v1), V::high(v1), x4));
}

// One 32-row step of gemv_i8_m over octets [j, octets) in runs of W / 8 (what is left over is
// returned for a narrower W): facc[i][cols] (+)= d0 · Σ_block0 c·q + d1 · Σ_block1 c·q.
template <int W, int M>
inline int64_t gemv_i8_step(const int32_t* s0, int64_t N, int64_t j, int64_t octets, bool next, bool group_start,
                            const int32_t (&quads)[M][8], const float (&d0)[M], const float (&d1)[M], float* facc) {
  using V = I8V<W>;
  for (; j + W / 8 <= octets; j += W / 8) {
    if (next && (W == 16 || (j & 1) == 0))  // the next step, 64 bytes of each slab per 64 bytes read here
      for (int t = 4; t < 8; ++t) __builtin_prefetch(s0 + t * N + 8 * j, 0, 2);
    const typename V::I v0 = V::load(s0 + 8 * j), v1 = V::load(s0 + N + 8 * j);
    const typename V::I v2 = V::load(s0 + 2 * N + 8 * j), v3 = V::load(s0 + 3 * N + 8 * j);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      float* const f = facc + i * N + 8 * j;
      // Block b then block b + 1, each one rounding: the same sums as one block at a time.
      const typename V::F first = group_start ? V::mul(block_sum<W>(v0, v1, quads[i]), V::splat(d0[i]))
                                              : V::fmadd(block_sum<W>(v0, v1, quads[i]), V::splat(d0[i]), V::loadf(f));
      V::storef(f, V::fmadd(block_sum<W>(v2, v3, quads[i] + 4), V::splat(d1[i]), first));
    }
  }
  return j;
}

// The group's end for octets [o, octets) in runs of W / 8 (what is left over is returned for a
// narrower W): y (+)= s · (facc − z · Σx).
template <int W, int M>
inline int64_t gemv_i8_finish(const AwqGemvI8Job& job, const float* facc, const float (&sx)[M], int64_t g, int64_t o,
                              bool y_written) {
  using V = I8V<W>;
  const AwqWeight& w = *job.w;
  const int64_t N = w.out_features, octets = N / 8;
  for (; o + W / 8 <= octets; o += W / 8) {
    const typename V::F sv = V::scales(w.scales + g * N + 8 * o), zv = V::zeros(w.qzeros + g * octets + o);
    for (int i = 0; i < M; ++i) {
      float* const y = job.y + i * job.ldy + 8 * o;
      const typename V::F t = V::fnmadd(zv, V::splat(sx[i]), V::loadf(facc + i * N + 8 * o));
      V::storef(y, y_written ? V::fmadd(sv, t, V::loadf(y)) : V::mul(sv, t));
    }
  }
  return o;
}

// Steps of 32 rows (two activation blocks, four slabs: jobs and groups are whole steps), so each
// octet's running sum is loaded and stored once per 32 rows; a group's first step writes it (no
// clearing pass), and so does the job's first group end write y. (Splitting N instead of K, which
// would need no partial sums, was measured slower: a column range is a short run of every slab,
// 512 bytes at a 4·N stride, where a row range is one contiguous stretch the prefetchers follow.)
template <int M>
inline void gemv_i8_m(const AwqGemvI8Job& job) {
  const AwqWeight& w = *job.w;
  const int64_t N = w.out_features, G = w.group_size, octets = N / 8, B = awq::kActivationBlock, S = kAwqI8BlockRows;
  float* const facc = job.scratch;  // [M][N]: the group's Σ_b d_b · Σ c·q so far
  {  // the job's first step has no step before it to request it: ask for it all now
    const int32_t* p = w.qweight + (job.k0 / 8) * N;
    for (int64_t e = 0; e < 4 * N; e += 16) __builtin_prefetch(p + e, 0, 2);
  }
  float sx[M] = {};
  bool y_written = false;
  for (int64_t k = job.k0; k < job.k1; k += S) {
    const int64_t b = k / B, g = k / G;
    const bool group_start = k == job.k0 || k % G == 0;
    int32_t quads[M][8];  // codes of rows k … k+31, 4 at a time
    float d0[M], d1[M];
    for (int i = 0; i < M; ++i) {
      std::memcpy(quads[i], job.xq + i * job.xq_stride + k, sizeof quads[i]);
      d0[i] = job.xscale[i * job.xblocks + b];
      d1[i] = job.xscale[i * job.xblocks + b + 1];
      if (group_start) sx[i] = 0.0f;
      sx[i] += job.xsum[i * job.xblocks + b];
      sx[i] += job.xsum[i * job.xblocks + b + 1];
    }
    const int32_t* const s0 = w.qweight + (k / 8) * N;  // slabs of rows k … k+31: s0 + t·N, t < 4
    const bool next = k + S < w.in_features;
    const int64_t j = gemv_i8_step<kI8Wide, M>(s0, N, 0, octets, next, group_start, quads, d0, d1, facc);
    if (kI8Wide > 8) gemv_i8_step<8, M>(s0, N, j, octets, next, group_start, quads, d0, d1, facc);
    if (k + S == job.k1 || (k + S) % G == 0) {  // the group (or the job's part of it) ends here
      const int64_t o = gemv_i8_finish<kI8Wide, M>(job, facc, sx, g, 0, y_written);
      if (kI8Wide > 8) gemv_i8_finish<8, M>(job, facc, sx, g, o, y_written);
      y_written = true;
    }
  }
}

inline void gemv_i8(const AwqGemvI8Job& job) {
  with_rows(job.m, [&](auto m) { gemv_i8_m<decltype(m)::value>(job); });
}

// gemm_i8 over the W columns from octet o of the job: copied to wpack (see awq_gemm_i8_pack_words),
// then every panel times them, with a 6 × W register tile over all of K.
template <int W>
inline void gemm_i8_cols(const AwqGemmI8Job& job, int64_t o) {
  using V = I8V<W>;
  constexpr int MR = static_cast<int>(kAwqI8PanelRows);
  const AwqWeight& w = *job.w;
  const int64_t K = w.in_features, N = w.out_features, G = w.group_size, B = awq::kActivationBlock;
  const int64_t blocks = K / B, groups = K / G, per_group = G / B;
  const int64_t j = job.n0 / 8 + o;  // the first octet: columns 8j … 8j + W − 1
  int32_t* const wcol = job.wpack;   // slab r's words at wcol + W r
  for (int64_t r = 0; r < K / 8; ++r) V::store(wcol + W * r, V::load(w.qweight + r * N + 8 * j));
  for (int64_t p = 0; p < job.panels; ++p) {
    const int8_t* const xq = job.xq + p * blocks * MR * B;
    const float* const xd = job.xscale + p * blocks * MR;
    const float* const xs = job.xsum + p * groups * MR;
    typename V::F y[MR];
    for (int m = 0; m < MR; ++m) y[m] = V::zero();
    for (int64_t g = 0; g < groups; ++g) {
      typename V::F f[MR];
      for (int m = 0; m < MR; ++m) f[m] = V::zero();
      for (int64_t b = g * per_group; b < (g + 1) * per_group; ++b) {
        const typename V::I v0 = V::load(wcol + 2 * W * b), v1 = V::load(wcol + 2 * W * b + W);
        const typename V::I l0 = V::low(v0), h0 = V::high(v0), l1 = V::low(v1), h1 = V::high(v1);
        const int8_t* const xb = xq + b * MR * B;
#pragma GCC unroll 6
        for (int m = 0; m < MR; ++m) {
          int32_t x4[4];
          std::memcpy(x4, xb + m * B, sizeof x4);
          f[m] = V::fmadd(V::cvt(V::dot(l0, h0, l1, h1, x4)), V::splat(xd[b * MR + m]), f[m]);
        }
      }
      const typename V::F sv = V::scales(w.scales + g * N + 8 * j), zv = V::zeros(w.qzeros + g * (N / 8) + j);
      for (int m = 0; m < MR; ++m) y[m] = V::fmadd(sv, V::fnmadd(zv, V::splat(xs[g * MR + m]), f[m]), y[m]);
    }
    float* const c = job.c + p * MR * job.ldc + 8 * o;
    for (int m = 0; m < MR; ++m) V::storef(c + m * job.ldc, y[m]);
  }
}

inline void gemm_i8(const AwqGemmI8Job& job) {
  int64_t o = 0;
  for (; o + kI8Wide / 8 <= job.nb / 8; o += kI8Wide / 8) gemm_i8_cols<kI8Wide>(job, o);
  for (; o < job.nb / 8; ++o) gemm_i8_cols<8>(job, o);
}

#endif  // PAGEDLLM_TILE_AVX2

// ---- gemm ----------------------------------------------------------------------------------------

// Columns [n0, n0 + nb), rows [k0, k0 + kc) of W → wp: 16-column panels, panel p holding
// wp[p · KC · 16 + kk · 16 + jj] = W[k0 + kk, n0 + 16p + jj] (0 past nb), exactly W (float16 values).
inline void pack_weight(const AwqWeight& w, int64_t n0, int64_t nb, int64_t k0, int64_t kc, float* wp) {
  const int64_t ldw = w.out_features / 8, G = w.group_size;
  const int64_t panels = (nb + kAwqGemmNR - 1) / kAwqGemmNR;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t half = 0; half < 2; ++half) {
      float* dst = wp + p * kAwqGemmKC * kAwqGemmNR + 8 * half;
      const int64_t n = n0 + p * kAwqGemmNR + 8 * half;  // this word's first column
      if (n - n0 >= nb) {
        for (int64_t kk = 0; kk < kc; ++kk)
          for (int j = 0; j < 8; ++j) dst[kk * kAwqGemmNR + j] = 0.0f;
        continue;
      }
      const int32_t* qcol = w.qweight + n / 8;
      // The first word of the block (its 64-byte line holds all 16 words of a row) requests the next
      // step's rows: 2 KiB-strided rows are never prefetched by the hardware (see gemv).
      const bool prefetch_next = p == 0 && half == 0 && k0 + kc < w.in_features;
      for (int64_t kk = 0; kk < kc;) {
        // A run of rows in one group: its zero points and scales are loaded once.
        const int64_t g = (k0 + kk) / G;
        const int64_t run_end = (g + 1) * G - k0 < kc ? (g + 1) * G - k0 : kc;
        const uint32_t zword = static_cast<uint32_t>(w.qzeros[g * ldw + n / 8]);
        const uint16_t* srow = w.scales + g * w.out_features + n;
#if PAGEDLLM_TILE_AVX2
        // Column j's code is at bit 4·kReverseOrder[j]: one variable shift puts all 8 in natural order.
        const __m256i shifts = _mm256_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28), mask = _mm256_set1_epi32(15);
        const __m256 z = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(zword)), shifts), mask));
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(srow)));
        const bool slab = w.layout == AwqLayout::Slab8;
        for (; kk < run_end; ++kk) {
          __m256i qv;
          if (slab) {  // the 8 columns' words of this slab, shifted to row k's nibble
            const int32_t* words = w.qweight + ((k0 + kk) / 8) * w.out_features + n;
            if (prefetch_next && (k0 + kk) % 8 == 0) __builtin_prefetch(words + (kc / 8) * w.out_features, 0, 2);
            qv = _mm256_srlv_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(words)),
                                   _mm256_set1_epi32(awq::slab_shift(static_cast<int>((k0 + kk) % 8))));
          } else {
            if (prefetch_next) __builtin_prefetch(qcol + (k0 + kk + kc) * ldw, 0, 2);
            qv = _mm256_srlv_epi32(_mm256_set1_epi32(qcol[(k0 + kk) * ldw]), shifts);
          }
          const __m256 q = _mm256_cvtepi32_ps(_mm256_and_si256(qv, mask));
          // (q − z)·s is exact in float32; one round trip through float16 makes it W.
          const __m128i h = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_sub_ps(q, z), s), _MM_FROUND_TO_NEAREST_INT);
          _mm256_store_ps(dst + kk * kAwqGemmNR, _mm256_cvtph_ps(h));
        }
#else
        float z[8], s[8];
        for (int j = 0; j < 8; ++j) {
          z[j] = static_cast<float>(awq::code(zword, j));
          s[j] = SrcF16::load1(srow + j);
        }
        for (; kk < run_end; ++kk) {  // (AutoAwq only: awq.cpp runs Slab8 weights on the avx2 path)
          if (prefetch_next) __builtin_prefetch(qcol + (k0 + kk + kc) * ldw, 0, 2);
          const uint32_t word = static_cast<uint32_t>(qcol[(k0 + kk) * ldw]);
          for (int j = 0; j < 8; ++j)
            dst[kk * kAwqGemmNR + j] = half_bits_to_float(float_to_half_bits((static_cast<float>(awq::code(word, j)) - z[j]) * s[j]));
        }
#endif
      }
    }
}

inline void gemm_block(const AwqGemmJob& job) {
  const int64_t K = job.w->in_features;
  const int64_t x_panels = (job.m + kAwqGemmMR - 1) / kAwqGemmMR;
  const int64_t w_panels = (job.nb + kAwqGemmNR - 1) / kAwqGemmNR;
  for (int64_t k0 = 0; k0 < K; k0 += kAwqGemmKC) {
    const int64_t kc = K - k0 < kAwqGemmKC ? K - k0 : kAwqGemmKC;
    pack_weight(*job.w, job.n0, job.nb, k0, kc, job.scratch);
    run_tiles(job.xp + k0 * kAwqGemmMR, K, x_panels, job.scratch, w_panels, kc, job.c, job.ldc, k0 > 0);
  }
}

}  // namespace PAGEDLLM_TILE_NAMESPACE
}  // namespace pagedllm::awq_kernels
#endif  // PAGEDLLM_TILE_IMPLEMENTATION
