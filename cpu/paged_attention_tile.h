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
  int64_t seq, kv_head;
  int64_t row0, rows;  // query rows [row0, row0 + rows) of the sequence
  int64_t pos0;        // position of row0 in the sequence
  int64_t key_begin, key_end;  // keys considered: [key_begin, key_end)
  // Outputs, indexed by v = r * group + g (row r of the tile, head g of the group):
  float* m;    // [rows * group]  max logit (−inf: no key in range)
  float* l;    // [rows * group]  Σ exp(logit − m)
  float* acc;  // [rows * group, head_size]  Σ exp(logit − m) · v
  float* scratch;  // tile_scratch_floats(rows * group, block_size, head_size) floats
};

inline int64_t tile_scratch_floats(int64_t nv, int64_t block_size, int64_t head_size) {
  return nv * head_size + 2 * block_size * head_size + nv * block_size + nv;
}

// Float32 value of one fp8 e4m3 byte (a table built from fp8.h's conversion).
const float* fp8_table();

void attention_tile_portable(const TileJob& job);
void attention_tile_avx2(const TileJob& job);

}  // namespace pagedllm::attention_cpu

#ifdef PAGEDLLM_TILE_IMPLEMENTATION
#if PAGEDLLM_TILE_AVX2
#include <immintrin.h>
#endif

namespace pagedllm::attention_cpu {
namespace PAGEDLLM_TILE_NAMESPACE {

// ---- vector primitives (n is a multiple of 16: every supported head size is) ---------

inline float dot(const float* a, const float* b, int64_t n) {
#if PAGEDLLM_TILE_AVX2
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  const __m256 s = _mm256_add_ps(s0, s1);
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
#else
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += a[i + k] * b[i + k];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
#endif
}

inline void axpy(float* y, float w, const float* x, int64_t n) {
#if PAGEDLLM_TILE_AVX2
  const __m256 vw = _mm256_set1_ps(w);
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vw, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#else
  for (int64_t i = 0; i < n; ++i) y[i] += w * x[i];
#endif
}

inline void scale(float* y, float c, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= c;
}

// rows consecutive cache rows (one head of one block, from offset `at`) to float, dequantised.
inline void load_rows(const void* cache, const float* scales, KvCacheDType t, int64_t at, int64_t rows, int64_t n,
                      float* out) {
  const int64_t count = rows * n;
  switch (t) {
    case KvCacheDType::Float32: std::memcpy(out, static_cast<const float*>(cache) + at, count * 4); return;
    case KvCacheDType::Float16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(static_cast<const half_t*>(cache) + at);
#if PAGEDLLM_TILE_AVX2
      for (int64_t i = 0; i < count; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
#else
      for (int64_t i = 0; i < count; ++i) out[i] = half_bits_to_float(p[i]);
#endif
      return;
    }
    case KvCacheDType::BFloat16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(static_cast<const bfloat16_t*>(cache) + at);
#if PAGEDLLM_TILE_AVX2
      for (int64_t i = 0; i < count; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      }
#else
      for (int64_t i = 0; i < count; ++i) out[i] = bfloat16_bits_to_float(p[i]);
#endif
      return;
    }
    case KvCacheDType::Int8: {
      const int8_t* p = static_cast<const int8_t*>(cache) + at;
      for (int64_t r = 0; r < rows; ++r) {
        const float s = scales[at / n + r];
        const int8_t* row = p + r * n;
        float* o = out + r * n;
#if PAGEDLLM_TILE_AVX2
        const __m256 vs = _mm256_set1_ps(s);
        for (int64_t i = 0; i < n; i += 8) {
          const __m256i w = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i)));
          _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_cvtepi32_ps(w), vs));
        }
#else
        for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(row[i]) * s;
#endif
      }
      return;
    }
    case KvCacheDType::Fp8E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(cache) + at;
      const float* table = fp8_table();
      for (int64_t r = 0; r < rows; ++r) {
        const float s = scales[at / n + r];
        for (int64_t i = 0; i < n; ++i) out[r * n + i] = table[p[r * n + i]] * s;
      }
      return;
    }
  }
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
  const int64_t nv = job.rows * group;
  const bool quant = kv_dtype_is_quantized(a.cache_dtype);
  const int32_t* table = a.block_tables + job.seq * a.max_blocks_per_seq;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Scratch (no allocation here: this code is also compiled for AVX2, and must
  // not emit shared template instances such as std::vector's with that target).
  float* const qbuf = job.scratch;
  float* const kbuf = qbuf + nv * D;
  float* const vbuf = kbuf + B * D;
  float* const ebuf = vbuf + B * D;
  float* const cbuf = ebuf + nv * B;

  // Queries of the tile, premultiplied by the softmax scale.
  for (int64_t r = 0; r < job.rows; ++r)
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = job.kv_head * group + g;
      const int64_t in = (job.row0 + r) * a.query_stride + h * D;
      float* q = &qbuf[(r * group + g) * D];
      for (int64_t d = 0; d < D; ++d) q[d] = load_query(a.query, a.dtype, in + d) * a.scale;
    }
  for (int64_t v = 0; v < nv; ++v) {
    job.m[v] = kNegInf;
    job.l[v] = 0;
  }
  for (int64_t i = 0; i < nv * D; ++i) job.acc[i] = 0.0f;

  // Keys any row of the tile can see.
  const int64_t last_pos = job.pos0 + job.rows - 1;
  auto lowest = [&](int64_t p) { return a.sliding_window > 0 ? std::max<int64_t>(0, p - a.sliding_window + 1) : 0; };
  const int64_t k_lo = std::max(job.key_begin, lowest(job.pos0));
  const int64_t k_hi = std::min(job.key_end, last_pos + 1);  // exclusive
  for (int64_t block_start = k_lo / B * B; block_start < k_hi; block_start += B) {
    const int64_t t0 = std::max(block_start, k_lo), t1 = std::min(block_start + B, k_hi);
    const int32_t block = table[block_start / B];  // validated by the caller
    const int64_t at = s.index(block, job.kv_head, t0 - block_start);
    const float* kf = static_cast<const float*>(a.key_cache) + at;  // float32 caches are read in place
    if (a.cache_dtype != KvCacheDType::Float32) {
      load_rows(a.key_cache, quant ? a.key_scales : nullptr, a.cache_dtype, at, t1 - t0, D, kbuf);
      kf = kbuf;
    }
    // Scores and the online-softmax update; e = exp(logit − m_new) kept for the V pass.
    bool any_rescale = false;
    for (int64_t r = 0; r < job.rows; ++r) {
      const int64_t p = job.pos0 + r;
      const int64_t j0 = std::max(t0, lowest(p)), j1 = std::min(t1, p + 1);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t v = r * group + g;
        float* e = &ebuf[v * B];
        if (j0 >= j1) {
          cbuf[v] = 1.0f;
          for (int64_t j = t0; j < t1; ++j) e[j - t0] = 0;
          continue;
        }
        const float* q = &qbuf[v * D];
        const int64_t h = job.kv_head * group + g;
        float block_max = kNegInf;
        for (int64_t j = j0; j < j1; ++j) {
          float x = dot(q, kf + (j - t0) * D, D);
          if (a.softcap > 0) x = a.softcap * std::tanh(x / a.softcap);
          if (a.alibi_slopes) x += a.alibi_slopes[h] * static_cast<float>(j - p);
          e[j - t0] = x;
          block_max = std::max(block_max, x);
        }
        const float m_new = std::max(job.m[v], block_max);
        const float c = job.m[v] == kNegInf ? 0.0f : std::exp(job.m[v] - m_new);
        float sum = 0;
        for (int64_t j = t0; j < t1; ++j) {
          const float w = (j >= j0 && j < j1) ? std::exp(e[j - t0] - m_new) : 0.0f;
          e[j - t0] = w;
          sum += w;
        }
        job.l[v] = job.l[v] * c + sum;
        job.m[v] = m_new;
        cbuf[v] = c;
        any_rescale |= c != 1.0f;
      }
    }
    // Values: rows [t0, t1) are all inside the sequence (t1 ≤ last_pos + 1 ≤ seq_len).
    const float* vf = static_cast<const float*>(a.value_cache) + at;
    if (a.cache_dtype != KvCacheDType::Float32) {
      load_rows(a.value_cache, quant ? a.value_scales : nullptr, a.cache_dtype, at, t1 - t0, D, vbuf);
      vf = vbuf;
    }
    for (int64_t v = 0; v < nv; ++v) {
      float* o = job.acc + v * D;
      const float* e = &ebuf[v * B];
      if (any_rescale && cbuf[v] != 1.0f) scale(o, cbuf[v], D);
      for (int64_t j = t0; j < t1; ++j)
        if (e[j - t0] != 0.0f) axpy(o, e[j - t0], vf + (j - t0) * D, D);
    }
  }
}

}  // namespace PAGEDLLM_TILE_NAMESPACE
}  // namespace pagedllm::attention_cpu
#endif  // PAGEDLLM_TILE_IMPLEMENTATION
