// The CPU paged-attention tile: one (sequence, KV head, run of query rows,
// range of keys) work item, all query heads of the KV head's group at once, so
// each cached K/V row is read and converted once per tile. Online softmax over
// cache blocks; the result is the unnormalised partial (max logit m, exp-sum l,
// Σ exp(logit − m)·v) that the caller normalises or merges across key ranges.
//
// This header is compiled twice: by paged_attention_tile.cpp (portable C++)
// and by paged_attention_tile_avx2.cpp (AVX2 + FMA + F16C, chosen at run time
// when the CPU has them). PAGEDLLM_TILE_AVX2 selects the vector primitives.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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

// vectors: all query vectors of the job; per_head: those of one KV head (rows * group).
inline int64_t tile_scratch_floats(int64_t vectors, int64_t per_head, int64_t block_size, int64_t head_size) {
  return vectors * head_size + 2 * block_size * head_size + per_head * block_size + per_head;
}

// Float32 value of one fp8 e4m3 byte (a table built from fp8.h's conversion).
const float* fp8_table();

void attention_tile_portable(const TileJob& job);
void attention_tile_avx2(const TileJob& job);

}  // namespace pagedllm::attention_cpu

#ifdef PAGEDLLM_TILE_IMPLEMENTATION
#include "simd.h"

namespace pagedllm::attention_cpu {
namespace PAGEDLLM_TILE_NAMESPACE {

using namespace simd::PAGEDLLM_TILE_NAMESPACE;

// Element sources (cpu/simd.h): a K or V row is read straight from the cache in its own dtype
// (F32, F16, BF16, I8; the int8 scale is applied by the caller per row), or from a float32
// scratch copy (F32) when a tile reuses each row for several query vectors (GQA) or the dtype
// has no vector conversion (fp8).

// out[t] = q · k_t for n rows k_t = k + t·D (D a multiple of 16): four rows at a time share
// each load of q, eight independent accumulator chains.
template <typename Src>
inline void scores(const float* q, const typename Src::T* k, int64_t n, int64_t D, float* out) {
  int64_t t = 0;
#if PAGEDLLM_TILE_AVX2
  for (; t + 4 <= n; t += 4) {
    const typename Src::T* k0 = k + t * D;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t i = 0; i < D; i += 16) {
      const __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
      a0 = _mm256_fmadd_ps(q0, Src::load8(k0 + i), a0);
      b0 = _mm256_fmadd_ps(q1, Src::load8(k0 + i + 8), b0);
      a1 = _mm256_fmadd_ps(q0, Src::load8(k0 + D + i), a1);
      b1 = _mm256_fmadd_ps(q1, Src::load8(k0 + D + i + 8), b1);
      a2 = _mm256_fmadd_ps(q0, Src::load8(k0 + 2 * D + i), a2);
      b2 = _mm256_fmadd_ps(q1, Src::load8(k0 + 2 * D + i + 8), b2);
      a3 = _mm256_fmadd_ps(q0, Src::load8(k0 + 3 * D + i), a3);
      b3 = _mm256_fmadd_ps(q1, Src::load8(k0 + 3 * D + i + 8), b3);
    }
    out[t] = hsum(_mm256_add_ps(a0, b0));
    out[t + 1] = hsum(_mm256_add_ps(a1, b1));
    out[t + 2] = hsum(_mm256_add_ps(a2, b2));
    out[t + 3] = hsum(_mm256_add_ps(a3, b3));
  }
  for (; t < n; ++t) {
    const typename Src::T* kt = k + t * D;
    __m256 a = _mm256_setzero_ps(), b = a;
    for (int64_t i = 0; i < D; i += 16) {
      a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), Src::load8(kt + i), a);
      b = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), Src::load8(kt + i + 8), b);
    }
    out[t] = hsum(_mm256_add_ps(a, b));
  }
#else
  for (; t < n; ++t) {
    const typename Src::T* kt = k + t * D;
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < D; i += 8)
      for (int j = 0; j < 8; ++j) s[j] += q[i + j] * Src::load1(kt + i + j);
    out[t] = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  }
#endif
}

// acc = acc · c + Σ_t w[t] · v_t over n rows v_t = v + t·D: each slice of acc is loaded and
// stored once per block, not once per row.
template <typename Src>
inline void accumulate(float* acc, float c, const float* w, const typename Src::T* v, int64_t n, int64_t D) {
#if PAGEDLLM_TILE_AVX2
  const __m256 vc = _mm256_set1_ps(c);
  for (int64_t i = 0; i < D; i += 16) {
    __m256 r0 = _mm256_mul_ps(_mm256_loadu_ps(acc + i), vc), r1 = _mm256_mul_ps(_mm256_loadu_ps(acc + i + 8), vc);
    for (int64_t t = 0; t < n; ++t) {
      const __m256 wt = _mm256_set1_ps(w[t]);
      r0 = _mm256_fmadd_ps(wt, Src::load8(v + t * D + i), r0);
      r1 = _mm256_fmadd_ps(wt, Src::load8(v + t * D + i + 8), r1);
    }
    _mm256_storeu_ps(acc + i, r0);
    _mm256_storeu_ps(acc + i + 8, r1);
  }
#else
  for (int64_t i = 0; i < D; ++i) acc[i] *= c;
  for (int64_t t = 0; t < n; ++t) {
    if (w[t] == 0.0f) continue;
    for (int64_t i = 0; i < D; ++i) acc[i] += w[t] * Src::load1(v + t * D + i);
  }
#endif
}

// x[i] = exp(x[i] − m) for n values (all ≤ 0 after the shift); returns their sum. The AVX2
// build evaluates 8 at a time with the Cephes expf polynomial (≈ 2 ulp): under GQA there are
// `group` exponentials per cached token, which a libm call per value would make the bottleneck.
inline float exp_shifted(float* x, int64_t n, float m) {
  float sum = 0;
  int64_t i = 0;
#if PAGEDLLM_TILE_AVX2
  const __m256 vm = _mm256_set1_ps(m), lo = _mm256_set1_ps(-87.3f), log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 c1 = _mm256_set1_ps(0.693359375f), c2 = _mm256_set1_ps(-2.12194440e-4f), half = _mm256_set1_ps(0.5f);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), lo);
    const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(v, log2e, half));
    v = _mm256_fnmadd_ps(fx, c2, _mm256_fnmadd_ps(fx, c1, v));
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, v, half);
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(v, v), _mm256_add_ps(v, one));
    const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
    _mm256_storeu_ps(x + i, y);
    acc = _mm256_add_ps(acc, y);
  }
  sum = hsum(acc);
#endif
  for (; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  return sum;
}

// Asks for `bytes` at p ahead of use: a block's K or V run of one head is a few KiB at a
// random place (the block table), where the hardware prefetchers, which stop at page
// boundaries, would start cold on every block.
inline void prefetch(const void* p, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
#else
  (void)p;
  (void)bytes;
#endif
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

// Calls f(Src, pointer) with the cache's own element type at element `at`, or with the
// float32 copy in `buf` (filled here) when `direct` is false or the dtype needs it.
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

// ---- the tile ------------------------------------------------------------------------

inline void tile(const TileJob& job) {
  const PagedAttentionArgs& a = *job.a;
  const KvCacheShape& s = a.shape;
  const int64_t D = s.head_size, B = s.block_size;
  const int64_t group = a.num_heads / s.num_kv_heads;
  const int64_t nv = job.rows * group;  // query vectors per KV head
  const int64_t total = nv * job.kv_heads;
  const bool quant = kv_dtype_is_quantized(a.cache_dtype);
  const int32_t* table = a.block_tables + job.seq * a.max_blocks_per_seq;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Scratch (no allocation here: this code is also compiled for AVX2, and must
  // not emit shared template instances such as std::vector's with that target).
  float* const qbuf = job.scratch;
  float* const kbuf = qbuf + total * D;
  float* const vbuf = kbuf + B * D;
  float* const ebuf = vbuf + B * D;
  float* const cbuf = ebuf + nv * B;

  // Queries of the job, premultiplied by the softmax scale.
  for (int64_t k = 0; k < job.kv_heads; ++k)
    for (int64_t r = 0; r < job.rows; ++r)
      for (int64_t g = 0; g < group; ++g) {
        const int64_t h = (job.kv_head + k) * group + g;
        const int64_t in = (job.row0 + r) * a.query_stride + h * D;
        float* q = &qbuf[((k * job.rows + r) * group + g) * D];
        for (int64_t d = 0; d < D; ++d) q[d] = load_query(a.query, a.dtype, in + d) * a.scale;
      }
  for (int64_t v = 0; v < total; ++v) {
    job.m[v] = kNegInf;
    job.l[v] = 0;
  }
  for (int64_t i = 0; i < total * D; ++i) job.acc[i] = 0.0f;

  // Keys any row of the tile can see.
  const int64_t last_pos = job.pos0 + job.rows - 1;
  auto lowest = [&](int64_t p) { return a.sliding_window > 0 ? std::max<int64_t>(0, p - a.sliding_window + 1) : 0; };
  const int64_t k_lo = std::max(job.key_begin, lowest(job.pos0));
  const int64_t k_hi = std::min(job.key_end, last_pos + 1);  // exclusive
  // One or two query vectors read each K/V row straight from the cache; more share a float32 copy.
  const bool direct = nv <= 2;
  const int64_t esize = static_cast<int64_t>(kv_dtype_size(a.cache_dtype));
  for (int64_t block_start = k_lo / B * B; block_start < k_hi; block_start += B) {
    const int64_t t0 = std::max(block_start, k_lo), t1 = std::min(block_start + B, k_hi);
    const int32_t block = table[block_start / B];  // validated by the caller
    const int64_t n = t1 - t0;
    // The job's KV heads of one block are consecutive runs (HND): K and V stream through them.
    for (int64_t k = 0; k < job.kv_heads; ++k) {
      const int64_t kv_head = job.kv_head + k;
      // Ask for what comes next: this block's next head, or the next block's first.
      const bool last_head = k + 1 == job.kv_heads;
      if (!last_head || block_start + B < k_hi) {
        const int64_t next = last_head ? s.index(table[block_start / B + 1], job.kv_head, 0) : s.index(block, kv_head + 1, 0);
        prefetch(static_cast<const char*>(a.key_cache) + next * esize, B * D * esize);
        prefetch(static_cast<const char*>(a.value_cache) + next * esize, B * D * esize);
        if (quant) {
          prefetch(a.key_scales + next / D, B * 4);
          prefetch(a.value_scales + next / D, B * 4);
        }
      }
      const int64_t at = s.index(block, kv_head, t0 - block_start);
      float* const m = job.m + k * nv;
      float* const l = job.l + k * nv;
      float* const acc = job.acc + k * nv * D;
      const float* const qk = qbuf + k * nv * D;
      // Scores and the online-softmax update; e = exp(logit − m_new) kept for the V pass.
      with_rows(a.key_cache, a.key_scales, a.cache_dtype, at, n, D, direct, kbuf, [&](auto src, const auto* krows, bool scaled) {
        using Src = decltype(src);
        for (int64_t r = 0; r < job.rows; ++r) {
          const int64_t p = job.pos0 + r;
          const int64_t j0 = std::max(t0, lowest(p)), j1 = std::min(t1, p + 1);
          for (int64_t g = 0; g < group; ++g) {
            const int64_t v = r * group + g;
            float* e = &ebuf[v * B];
            for (int64_t j = 0; j < n; ++j) e[j] = 0.0f;
            if (j0 >= j1) {
              cbuf[v] = 1.0f;
              continue;
            }
            scores<Src>(&qk[v * D], krows + (j0 - t0) * D, j1 - j0, D, e + (j0 - t0));
            const int64_t h = kv_head * group + g;
            float block_max = kNegInf;
            for (int64_t j = j0; j < j1; ++j) {
              float x = e[j - t0];
              if (scaled) x *= a.key_scales[at / D + (j - t0)];
              if (a.softcap > 0) x = a.softcap * std::tanh(x / a.softcap);
              if (a.alibi_slopes) x += a.alibi_slopes[h] * static_cast<float>(j - p);
              e[j - t0] = x;
              block_max = std::max(block_max, x);
            }
            const float m_new = std::max(m[v], block_max);
            const float c = m[v] == kNegInf ? 0.0f : std::exp(m[v] - m_new);
            const float sum = exp_shifted(e + (j0 - t0), j1 - j0, m_new);
            l[v] = l[v] * c + sum;
            m[v] = m_new;
            cbuf[v] = c;
          }
        }
      });
      // Values: rows [t0, t1) are all inside the sequence (t1 ≤ last_pos + 1 ≤ seq_len); a row's
      // weight is 0 where it may not look.
      with_rows(a.value_cache, a.value_scales, a.cache_dtype, at, n, D, direct, vbuf, [&](auto src, const auto* vrows, bool scaled) {
        using Src = decltype(src);
        for (int64_t v = 0; v < nv; ++v) {
          float* e = &ebuf[v * B];
          if (scaled)
            for (int64_t j = 0; j < n; ++j) e[j] *= a.value_scales[at / D + j];
          accumulate<Src>(acc + v * D, cbuf[v], e, vrows, n, D);
        }
      });
    }
  }
}

}  // namespace PAGEDLLM_TILE_NAMESPACE
}  // namespace pagedllm::attention_cpu
#endif  // PAGEDLLM_TILE_IMPLEMENTATION
