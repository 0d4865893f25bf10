// Paged-attention test problems in host memory, and the float64 reference
// they are checked against (written from the definition in
// include/pagedllm/paged_attention.h, independently of the kernels).
//
// A case holds a shuffled, non-contiguous block table per sequence, padded
// with the id of a "poison" block full of NaN; every cache slot past a
// sequence's length is NaN too (for int8 caches: a NaN scale; fp8: the NaN
// byte), so any read past the end shows up as NaN in the output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "pagedllm/convert.h"
#include "pagedllm/paged_attention.h"
#include "pagedllm/paged_kv.h"

namespace test {

struct AttentionSpec {
  int num_heads = 8;
  int num_kv_heads = 8;
  int head_size = 128;
  int block_size = 16;
  pagedllm::DType dtype = pagedllm::DType::Float32;
  pagedllm::KvCacheDType cache_dtype = pagedllm::KvCacheDType::Float32;
  std::vector<int> seq_lens;  // context per sequence, new tokens included
  std::vector<int> q_lens;    // new tokens per sequence; empty: decode (1 each)
  int sliding_window = 0;
  bool alibi = false;
  float softcap = 0.0f;
  uint32_t seed = 1;
};

inline std::string describe(const AttentionSpec& s) {
  std::string lens;
  for (size_t i = 0; i < s.seq_lens.size(); ++i)
    lens += (i ? "," : "") + std::to_string(s.seq_lens[i]) + (s.q_lens.empty() ? "" : "/" + std::to_string(s.q_lens[i]));
  return str("heads ", s.num_heads, "/", s.num_kv_heads, " head_size ", s.head_size, " block ", s.block_size, " q ",
             pagedllm::dtype_name(s.dtype), " kv ", pagedllm::kv_dtype_name(s.cache_dtype), " lens [", lens, "]",
             s.sliding_window ? str(" window ", s.sliding_window) : "", s.alibi ? " alibi" : "",
             s.softcap > 0 ? str(" softcap ", s.softcap) : "");
}

struct AttentionCase {
  AttentionSpec spec;
  int64_t num_seqs = 0, num_tokens = 0, max_blocks_per_seq = 0, max_seq_len = 0, max_query_len = 0;
  pagedllm::KvCacheShape shape;
  std::vector<unsigned char> query;  // [num_tokens, num_heads, head_size] of dtype
  std::vector<unsigned char> key_cache, value_cache;
  std::vector<float> key_scales, value_scales;  // empty unless quantized
  std::vector<int32_t> block_tables, seq_lens, cu_seqlens_q;  // cu_seqlens_q empty for decode
  std::vector<float> alibi_slopes;
  float scale = 0;

  size_t out_bytes() const { return static_cast<size_t>(num_tokens * spec.num_heads * spec.head_size) * pagedllm::dtype_size(spec.dtype); }

  // Arguments over host copies (the caller swaps in device pointers for CUDA).
  pagedllm::PagedAttentionArgs args(void* out) const {
    pagedllm::PagedAttentionArgs a{};
    a.query = query.data();
    a.query_stride = spec.num_heads * spec.head_size;
    a.out = out;
    a.dtype = spec.dtype;
    a.num_tokens = num_tokens;
    a.num_heads = spec.num_heads;
    a.key_cache = key_cache.data();
    a.value_cache = value_cache.data();
    a.key_scales = key_scales.empty() ? nullptr : key_scales.data();
    a.value_scales = value_scales.empty() ? nullptr : value_scales.data();
    a.cache_dtype = spec.cache_dtype;
    a.shape = shape;
    a.block_tables = block_tables.data();
    a.max_blocks_per_seq = max_blocks_per_seq;
    a.seq_lens = seq_lens.data();
    a.cu_seqlens_q = cu_seqlens_q.empty() ? nullptr : cu_seqlens_q.data();
    a.num_seqs = num_seqs;
    a.max_seq_len = max_seq_len;
    a.max_query_len = max_query_len;
    a.scale = scale;
    a.sliding_window = spec.sliding_window;
    a.alibi_slopes = alibi_slopes.empty() ? nullptr : alibi_slopes.data();
    a.softcap = spec.softcap;
    return a;
  }
};

// Value of a stored element (float, before any dequantization scale).
inline float stored_value(const unsigned char* base, pagedllm::KvCacheDType t, int64_t i) {
  using namespace pagedllm;
  switch (t) {
    case KvCacheDType::Float32: { float f; std::memcpy(&f, base + 4 * i, 4); return f; }
    case KvCacheDType::Float16: { half_t h; std::memcpy(&h, base + 2 * i, 2); return to_float(h); }
    case KvCacheDType::BFloat16: { bfloat16_t h; std::memcpy(&h, base + 2 * i, 2); return to_float(h); }
    default: return 0;
  }
}

inline float load_dtype(const unsigned char* base, pagedllm::DType t, int64_t i) {
  using namespace pagedllm;
  switch (t) {
    case DType::Float32: { float f; std::memcpy(&f, base + 4 * i, 4); return f; }
    case DType::Float16: { half_t h; std::memcpy(&h, base + 2 * i, 2); return to_float(h); }
    case DType::BFloat16: { bfloat16_t h; std::memcpy(&h, base + 2 * i, 2); return to_float(h); }
    default: return NAN;
  }
}

inline void store_dtype(unsigned char* base, pagedllm::DType t, int64_t i, float v) {
  using namespace pagedllm;
  switch (t) {
    case DType::Float32: std::memcpy(base + 4 * i, &v, 4); break;
    case DType::Float16: { half_t h = from_float<half_t>(v); std::memcpy(base + 2 * i, &h, 2); break; }
    case DType::BFloat16: { bfloat16_t h = from_float<bfloat16_t>(v); std::memcpy(base + 2 * i, &h, 2); break; }
    default: break;
  }
}

// Dequantized cache element (block, head, offset, d) as double.
inline double cache_value(const AttentionCase& c, bool value, int64_t block, int64_t head, int64_t offset, int64_t d) {
  using namespace pagedllm;
  const auto& cache = value ? c.value_cache : c.key_cache;
  const int64_t at = c.shape.index(block, head, offset) + d;
  if (!kv_dtype_is_quantized(c.spec.cache_dtype)) return stored_value(cache.data(), c.spec.cache_dtype, at);
  const float s = (value ? c.value_scales : c.key_scales)[at / c.shape.head_size];
  return static_cast<double>(kv_dequantize(cache[at], 1.0f, c.spec.cache_dtype)) * s;
}

inline AttentionCase make_attention_case(const AttentionSpec& spec) {
  using namespace pagedllm;
  AttentionCase c;
  c.spec = spec;
  std::mt19937 rng(spec.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int B = spec.block_size, D = spec.head_size, Hkv = spec.num_kv_heads;
  c.num_seqs = static_cast<int64_t>(spec.seq_lens.size());
  int64_t needed = 0;
  for (size_t s = 0; s < spec.seq_lens.size(); ++s) {
    const int q = spec.q_lens.empty() ? 1 : spec.q_lens[s];
    c.num_tokens += q;
    c.max_seq_len = std::max<int64_t>(c.max_seq_len, spec.seq_lens[s]);
    c.max_query_len = std::max<int64_t>(c.max_query_len, q);
    const int64_t blocks = (spec.seq_lens[s] + B - 1) / B;
    needed += blocks;
    c.max_blocks_per_seq = std::max(c.max_blocks_per_seq, blocks);
  }
  c.max_blocks_per_seq += 2;  // padded entries
  // Block 0 is the poison block; the rest are dealt out shuffled, with spares never referenced.
  const int64_t num_blocks = needed + 1 + 3;
  c.shape = KvCacheShape{num_blocks, Hkv, B, D};
  std::vector<int32_t> ids(num_blocks - 1);
  std::iota(ids.begin(), ids.end(), 1);
  std::shuffle(ids.begin(), ids.end(), rng);
  c.block_tables.assign(c.num_seqs * c.max_blocks_per_seq, 0);
  size_t next = 0;
  for (int64_t s = 0; s < c.num_seqs; ++s)
    for (int64_t b = 0; b < (spec.seq_lens[s] + B - 1) / B; ++b) c.block_tables[s * c.max_blocks_per_seq + b] = ids[next++];

  // Caches: NaN everywhere, then random values in the used slots.
  const int64_t elems = c.shape.elements();
  const size_t esize = kv_dtype_size(spec.cache_dtype);
  const bool quant = kv_dtype_is_quantized(spec.cache_dtype);
  c.key_cache.assign(elems * esize, 0);
  c.value_cache.assign(elems * esize, 0);
  auto poison = [&](std::vector<unsigned char>& cache) {
    for (int64_t i = 0; i < elems; ++i) {
      switch (spec.cache_dtype) {
        case KvCacheDType::Float32: { float f = NAN; std::memcpy(&cache[4 * i], &f, 4); break; }
        case KvCacheDType::Float16: { uint16_t h = 0x7e00; std::memcpy(&cache[2 * i], &h, 2); break; }
        case KvCacheDType::BFloat16: { uint16_t h = 0x7fc0; std::memcpy(&cache[2 * i], &h, 2); break; }
        case KvCacheDType::Int8: cache[i] = 0x7f; break;
        case KvCacheDType::Fp8E4M3: cache[i] = 0x7f; break;  // NaN
      }
    }
  };
  poison(c.key_cache);
  poison(c.value_cache);
  if (quant) {
    c.key_scales.assign(elems / D, NAN);
    c.value_scales.assign(elems / D, NAN);
  }
  auto fill_slot = [&](std::vector<unsigned char>& cache, std::vector<float>& scales, int64_t at) {
    std::vector<float> x(D);
    float absmax = 0;
    for (int d = 0; d < D; ++d) absmax = std::max(absmax, std::fabs(x[d] = normal(rng)));
    if (quant) {
      const float sc = absmax / kv_quant_max(spec.cache_dtype);
      scales[at / D] = sc;
      for (int d = 0; d < D; ++d) cache[at + d] = kv_quantize(x[d], sc, spec.cache_dtype);
      return;
    }
    for (int d = 0; d < D; ++d) {
      switch (spec.cache_dtype) {
        case KvCacheDType::Float32: std::memcpy(&cache[4 * (at + d)], &x[d], 4); break;
        case KvCacheDType::Float16: { half_t h = from_float<half_t>(x[d]); std::memcpy(&cache[2 * (at + d)], &h, 2); break; }
        case KvCacheDType::BFloat16: { bfloat16_t h = from_float<bfloat16_t>(x[d]); std::memcpy(&cache[2 * (at + d)], &h, 2); break; }
        default: break;
      }
    }
  };
  for (int64_t s = 0; s < c.num_seqs; ++s)
    for (int64_t j = 0; j < spec.seq_lens[s]; ++j) {
      const int64_t block = c.block_tables[s * c.max_blocks_per_seq + j / B];
      for (int h = 0; h < Hkv; ++h) {
        const int64_t at = c.shape.index(block, h, j % B);
        fill_slot(c.key_cache, c.key_scales, at);
        fill_slot(c.value_cache, c.value_scales, at);
      }
    }

  c.seq_lens.assign(spec.seq_lens.begin(), spec.seq_lens.end());
  if (!spec.q_lens.empty()) {
    c.cu_seqlens_q.push_back(0);
    for (int q : spec.q_lens) c.cu_seqlens_q.push_back(c.cu_seqlens_q.back() + q);
  }
  const int64_t qn = c.num_tokens * spec.num_heads * D;
  c.query.assign(qn * dtype_size(spec.dtype), 0);
  // Larger than unit logits, so the softmax is far from uniform and its errors show.
  for (int64_t i = 0; i < qn; ++i) store_dtype(c.query.data(), spec.dtype, i, 1.5f * normal(rng));
  c.scale = 1.0f / std::sqrt(static_cast<float>(D));
  if (spec.alibi)
    for (int h = 0; h < spec.num_heads; ++h) c.alibi_slopes.push_back(std::ldexp(1.0f, -(h % 8) - 1));
  return c;
}

// out[num_tokens, num_heads, head_size] in double, from the definition.
inline std::vector<double> attention_reference(const AttentionCase& c) {
  const AttentionSpec& sp = c.spec;
  const int D = sp.head_size, B = sp.block_size, H = sp.num_heads;
  const int group = sp.num_heads / sp.num_kv_heads;
  // The cache and the queries as doubles, once (values are exact in double).
  const int64_t elems = c.shape.elements();
  std::vector<double> k(elems), v(elems), q(c.num_tokens * H * D);
  for (int64_t i = 0; i < elems; ++i) {
    const int64_t slot = i / D, block = slot / (sp.num_kv_heads * B), head = (slot / B) % sp.num_kv_heads;
    k[i] = cache_value(c, false, block, head, slot % B, i % D);
    v[i] = cache_value(c, true, block, head, slot % B, i % D);
  }
  for (int64_t i = 0; i < static_cast<int64_t>(q.size()); ++i) q[i] = load_dtype(c.query.data(), sp.dtype, i);
  std::vector<double> out(c.num_tokens * H * D, 0.0), logits;
  int64_t row = 0;
  for (int64_t s = 0; s < c.num_seqs; ++s) {
    const int64_t L = sp.seq_lens[s], q_len = sp.q_lens.empty() ? 1 : sp.q_lens[s];
    for (int64_t i = 0; i < q_len; ++i, ++row) {
      const int64_t p = L - q_len + i;
      const int64_t lo = sp.sliding_window > 0 ? std::max<int64_t>(0, p - sp.sliding_window + 1) : 0;
      for (int h = 0; h < H; ++h) {
        const int kvh = h / group;
        const double* qh = &q[(row * H + h) * D];
        logits.clear();
        for (int64_t j = lo; j <= p; ++j) {
          const double* kj = &k[c.shape.index(c.block_tables[s * c.max_blocks_per_seq + j / B], kvh, j % B)];
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qh[d] * kj[d];
          double l = static_cast<double>(c.scale) * dot;
          if (sp.softcap > 0) l = sp.softcap * std::tanh(l / sp.softcap);
          if (!c.alibi_slopes.empty()) l += static_cast<double>(c.alibi_slopes[h]) * static_cast<double>(j - p);
          logits.push_back(l);
        }
        const double m = *std::max_element(logits.begin(), logits.end());
        double sum = 0;
        for (double& l : logits) sum += (l = std::exp(l - m));
        double* o = &out[(row * H + h) * D];
        for (int64_t j = lo; j <= p; ++j) {
          const double* vj = &v[c.shape.index(c.block_tables[s * c.max_blocks_per_seq + j / B], kvh, j % B)];
          const double w = logits[j - lo] / sum;
          for (int d = 0; d < D; ++d) o[d] += w * vj[d];
        }
      }
    }
  }
  return out;
}

// Tolerance for out of `dtype` (|got − ref| ≤ atol + rtol·|ref|). Outputs are convex combinations
// of values of magnitude ~1; float16 / bfloat16 kernels may round probabilities to the dtype.
inline void attention_tolerance(pagedllm::DType dtype, double* atol, double* rtol) {
  switch (dtype) {
    case pagedllm::DType::Float16: *atol = 2e-3; *rtol = 4e-3; break;
    case pagedllm::DType::BFloat16: *atol = 1.5e-2; *rtol = 1.5e-2; break;
    default: *atol = 2e-5; *rtol = 1e-4; break;
  }
}

// Checks `out` (bytes of dtype) against the reference; names the first mismatches.
inline void check_attention(const AttentionCase& c, const std::vector<double>& ref, const unsigned char* out,
                            const char* what) {
  double atol, rtol;
  attention_tolerance(c.spec.dtype, &atol, &rtol);
  const int H = c.spec.num_heads, D = c.spec.head_size;
  std::string first;
  int64_t bad = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i) {
    const double got = load_dtype(out, c.spec.dtype, i);
    if (!(std::fabs(got - ref[i]) <= atol + rtol * std::fabs(ref[i]))) {
      if (bad < 4)
        first += str(" [token ", i / (H * D), " head ", (i / D) % H, " dim ", i % D, ": got ", got, " want ", ref[i], "]");
      ++bad;
    }
  }
  CHECK(bad == 0, what, ": ", bad, " of ", ref.size(), " values off (atol ", atol, ", rtol ", rtol, ") for ",
        describe(c.spec), ":", first);
}

}  // namespace test
