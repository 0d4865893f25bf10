// Paged attention on the CPU: argument checks and dispatch for every backend,
// the plain reference (paged_attention_reference_cpu) and the fast twin
// (paged_attention_cpu: threads over sequences × KV heads × query tiles ×
// key partitions, SIMD over head_size through paged_attention_tile.h, online
// softmax). Semantics: include/pagedllm/paged_attention.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu_stream.h"
#include "paged_attention_tile.h"
#include "pagedllm/convert.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/paged_attention.h"
#include "thread_pool.h"

namespace pagedllm {

namespace {

template <size_t N>
bool listed(const int (&list)[N], int64_t v) {
  return std::find(std::begin(list), std::end(list), v) != std::end(list);
}

template <size_t N>
std::string join(const int (&list)[N]) {
  std::string s;
  for (size_t i = 0; i < N; ++i) s += (i ? ", " : "") + std::to_string(list[i]);
  return s;
}

bool valid_cache_dtype(KvCacheDType t) { return static_cast<int32_t>(t) >= 0 && static_cast<int32_t>(t) <= 4; }

// Host-side checks of everything the caller passes by value (metadata contents
// are checked where they are read: read_metadata on the CPU).
void check_args(const PagedAttentionArgs& a) {
  const KvCacheShape& s = a.shape;
  PAGEDLLM_CHECK(a.num_heads > 0 && s.num_kv_heads > 0 && a.num_heads % s.num_kv_heads == 0, InvalidArgument,
                 "paged_attention: num_heads (", a.num_heads, ") must be a positive multiple of num_kv_heads (",
                 s.num_kv_heads, ")");
  PAGEDLLM_CHECK(a.num_seqs >= 0 && a.num_tokens >= 0, InvalidArgument, "paged_attention: negative num_seqs or num_tokens");
  PAGEDLLM_CHECK(a.cu_seqlens_q || a.num_tokens == a.num_seqs, InvalidArgument, "paged_attention: decode (no cu_seqlens_q) needs num_tokens (",
                 a.num_tokens, ") == num_seqs (", a.num_seqs, ")");
  PAGEDLLM_CHECK(a.query_stride >= a.num_heads * s.head_size, InvalidArgument, "paged_attention: query stride ",
                 a.query_stride, " is less than num_heads * head_size (", a.num_heads * s.head_size, ")");
  PAGEDLLM_CHECK(s.num_blocks > 0, InvalidArgument, "paged_attention: the cache has no blocks");
  PAGEDLLM_CHECK(a.num_seqs == 0 || a.max_blocks_per_seq > 0, InvalidArgument, "paged_attention: max_blocks_per_seq must be positive");
  PAGEDLLM_CHECK(a.max_seq_len >= 0 && a.max_seq_len <= a.max_blocks_per_seq * s.block_size, InvalidArgument,
                 "paged_attention: max_seq_len ", a.max_seq_len, " exceeds the block table (", a.max_blocks_per_seq,
                 " blocks of ", s.block_size, ")");
  PAGEDLLM_CHECK(a.max_query_len >= 0, InvalidArgument, "paged_attention: max_query_len ", a.max_query_len, " is negative");
  PAGEDLLM_CHECK(!kv_dtype_is_quantized(a.cache_dtype) || (a.key_scales && a.value_scales), InvalidArgument,
                 "paged_attention: a ", kv_dtype_name(a.cache_dtype), " cache needs key and value scales");
  PAGEDLLM_CHECK(a.sliding_window >= 0, InvalidArgument, "paged_attention: sliding window ", a.sliding_window, " is negative");
  PAGEDLLM_CHECK(std::isfinite(a.softcap) && a.softcap >= 0, InvalidArgument, "paged_attention: softcap ", a.softcap,
                 " must be finite and ≥ 0");
  PAGEDLLM_CHECK(std::isfinite(a.scale), InvalidArgument, "paged_attention: scale ", a.scale, " is not finite");
}

struct SeqRows {
  int64_t row0, q_len, seq_len;
};

// Reads and checks seq_lens, cu_seqlens_q and the block-table entries that will be read.
std::vector<SeqRows> read_metadata(const PagedAttentionArgs& a) {
  std::vector<SeqRows> seqs(a.num_seqs);
  const int64_t B = a.shape.block_size;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    SeqRows& r = seqs[s];
    r.row0 = a.cu_seqlens_q ? a.cu_seqlens_q[s] : s;
    r.q_len = a.cu_seqlens_q ? a.cu_seqlens_q[s + 1] - a.cu_seqlens_q[s] : 1;
    r.seq_len = a.seq_lens[s];
    PAGEDLLM_CHECK(r.q_len >= 0 && r.row0 >= 0 && r.row0 + r.q_len <= a.num_tokens, InvalidArgument,
                   "paged_attention: cu_seqlens_q gives sequence ", s, " rows [", r.row0, ", ", r.row0 + r.q_len,
                   "), outside the ", a.num_tokens, " query tokens");
    PAGEDLLM_CHECK(r.seq_len >= r.q_len && r.seq_len <= a.max_seq_len, InvalidArgument, "paged_attention: sequence ", s,
                   " has seq_len ", r.seq_len, " (needs q_len ", r.q_len, " ≤ seq_len ≤ max_seq_len ", a.max_seq_len, ")");
    PAGEDLLM_CHECK(!a.cu_seqlens_q || r.q_len <= a.max_query_len, InvalidArgument, "paged_attention: sequence ", s, " has ", r.q_len,
                   " query tokens, more than max_query_len ", a.max_query_len);
    if (r.q_len == 0) continue;
    const int64_t first_pos = r.seq_len - r.q_len;
    const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, first_pos - a.sliding_window + 1) : 0;
    const int32_t* table = a.block_tables + s * a.max_blocks_per_seq;
    for (int64_t b = lo / B; b * B < r.seq_len; ++b)
      PAGEDLLM_CHECK(table[b] >= 0 && table[b] < a.shape.num_blocks, InvalidArgument, "paged_attention: block table entry ",
                     b, " of sequence ", s, " is block ", table[b], ", outside the cache (", a.shape.num_blocks, " blocks)");
  }
  if (a.cu_seqlens_q) {
    PAGEDLLM_CHECK(a.cu_seqlens_q[0] == 0 && a.cu_seqlens_q[a.num_seqs] == a.num_tokens, InvalidArgument,
                   "paged_attention: cu_seqlens_q must start at 0 and end at num_tokens (", a.num_tokens, "), got ",
                   a.cu_seqlens_q[0], " … ", a.cu_seqlens_q[a.num_seqs]);
  }
  return seqs;
}

float load_elem(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float16: return to_float(static_cast<const half_t*>(p)[i]);
    case DType::BFloat16: return to_float(static_cast<const bfloat16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

void store_elem(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::Float16: static_cast<half_t*>(p)[i] = from_float<half_t>(v); break;
    case DType::BFloat16: static_cast<bfloat16_t*>(p)[i] = from_float<bfloat16_t>(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

float cache_elem(const void* cache, const float* scales, KvCacheDType t, int64_t i, int64_t head_size) {
  switch (t) {
    case KvCacheDType::Float32: return static_cast<const float*>(cache)[i];
    case KvCacheDType::Float16: return to_float(static_cast<const half_t*>(cache)[i]);
    case KvCacheDType::BFloat16: return to_float(static_cast<const bfloat16_t*>(cache)[i]);
    default: return kv_dequantize(static_cast<const uint8_t*>(cache)[i], scales[i / head_size], t);
  }
}

using TileFn = void (*)(const attention_cpu::TileJob&);

TileFn choose_tile() {
  switch (cpu_simd()) {
    case CpuSimd::Avx512: return attention_cpu::attention_tile_avx512;
    case CpuSimd::Avx2: return attention_cpu::attention_tile_avx2;
    default: return attention_cpu::attention_tile_portable;
  }
}

// One work item of the fast path.
struct Item {
  int64_t seq, kv_head, kv_heads, row0, rows, pos0, key_begin, key_end;
  int64_t partial;  // index of its partial slot, or −1 when it is the only part and writes `out` directly
  int64_t vectors() const { return kv_heads * rows; }  // × group
};

// Writes normalised results of an item (or a merged group of them) to `out`.
void store_rows(const PagedAttentionArgs& a, const Item& it, int64_t group, const float* l, const float* acc) {
  const int64_t D = a.shape.head_size;
  for (int64_t v = 0; v < it.vectors() * group; ++v) {
    const int64_t k = v / (it.rows * group), r = (v / group) % it.rows, g = v % group;
    const int64_t row = it.row0 + r, h = (it.kv_head + k) * group + g;
    const float inv = 1.0f / l[v];
    for (int64_t d = 0; d < D; ++d) store_elem(a.out, a.dtype, (row * a.num_heads + h) * D + d, acc[v * D + d] * inv);
  }
}

// Work items: every (sequence, tile of up to `tile_rows` query rows, KV heads) — all KV heads
// at once for decode-like tiles (a block's heads are one contiguous run per K and V, which
// then streams), one KV head per item for prefill tiles; when the items are fewer than the
// pool can keep busy, long key ranges are split into partitions (split-K) whose partial
// results are merged afterwards.
void run_fast(const PagedAttentionArgs& a) {
  const std::vector<SeqRows> seqs = read_metadata(a);
  const KvCacheShape& sh = a.shape;
  const int64_t D = sh.head_size, B = sh.block_size, group = a.num_heads / sh.num_kv_heads;
  const int64_t tile_rows = std::max<int64_t>(1, 32 / group);
  constexpr int64_t kStreamVectors = 2;  // tiles with at most this many query vectors per KV head visit all heads
  ThreadPool& pool = ThreadPool::global();
  static const TileFn tile_fn = choose_tile();
  auto heads_per_item = [&](int64_t rows) { return rows * group <= kStreamVectors ? sh.num_kv_heads : int64_t(1); };

  int64_t base_items = 0;
  for (const SeqRows& r : seqs)
    for (int64_t t = 0; t < r.q_len; t += tile_rows) base_items += sh.num_kv_heads / heads_per_item(std::min(tile_rows, r.q_len - t));
  const int64_t wanted = pool.size() > 1 ? 4 * pool.size() : 1;
  const int64_t split = base_items >= wanted || base_items == 0 ? 1 : (wanted + base_items - 1) / base_items;
  constexpr int64_t kMinPartition = 256;  // keys; below this a partition's overhead dominates

  std::vector<Item> items;
  struct Group {
    int64_t first_item, parts;
  };
  std::vector<Group> merges;  // (seq, row tile, heads) groups that were split
  int64_t partials = 0, max_vectors = 1;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const SeqRows& r = seqs[s];
    for (int64_t t = 0; t < r.q_len; t += tile_rows) {
      const int64_t rows = std::min(tile_rows, r.q_len - t);
      const int64_t pos0 = r.seq_len - r.q_len + t;
      const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, pos0 - a.sliding_window + 1) : 0;
      const int64_t hi = pos0 + rows;  // exclusive
      int64_t parts = std::min(split, (hi - lo + kMinPartition - 1) / kMinPartition);
      const int64_t span = parts > 1 ? ((hi - lo + parts - 1) / parts + B - 1) / B * B : hi - lo;
      if (parts > 1) parts = (hi - lo + span - 1) / span;
      const int64_t hc = heads_per_item(rows);
      max_vectors = std::max(max_vectors, hc * rows * group);
      for (int64_t h = 0; h < sh.num_kv_heads; h += hc) {
        if (parts > 1) merges.push_back({static_cast<int64_t>(items.size()), parts});
        for (int64_t p = 0; p < parts; ++p) {
          const int64_t kb = lo + p * span, ke = parts > 1 ? std::min(hi, kb + span) : hi;
          items.push_back({s, h, hc, r.row0 + t, rows, pos0, kb, ke, parts > 1 ? partials++ : -1});
        }
      }
    }
  }
  const int64_t partial_floats = max_vectors * (D + 2);
  std::vector<float> partial(partials * partial_floats);

  pool.parallel_for(static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> buf;
    buf.resize(partial_floats + attention_cpu::tile_scratch_floats(max_vectors, tile_rows * group, B, D));
    for (int64_t i = begin; i < end; ++i) {
      const Item& it = items[i];
      float* base = it.partial >= 0 ? &partial[it.partial * partial_floats] : buf.data();
      attention_cpu::TileJob job{&a, it.seq, it.kv_head, it.kv_heads, it.row0, it.rows, it.pos0, it.key_begin, it.key_end,
                                 base, base + max_vectors, base + 2 * max_vectors, buf.data() + partial_floats};
      tile_fn(job);
      if (it.partial < 0) store_rows(a, it, group, job.l, job.acc);
    }
  });

  if (merges.empty()) return;
  pool.parallel_for(static_cast<int64_t>(merges.size()), 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> l, acc;
    l.resize(max_vectors);
    acc.resize(max_vectors * D);
    for (int64_t g = begin; g < end; ++g) {
      const Group& m = merges[g];
      const Item& first = items[m.first_item];
      const int64_t n = first.vectors() * group;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t v = 0; v < n; ++v) {
        float M = -std::numeric_limits<float>::infinity();
        for (int64_t p = 0; p < m.parts; ++p) M = std::max(M, partial[items[m.first_item + p].partial * partial_floats + v]);
        l[v] = 0;
        for (int64_t p = 0; p < m.parts; ++p) {
          const float* base = &partial[items[m.first_item + p].partial * partial_floats];
          if (base[v] == -std::numeric_limits<float>::infinity()) continue;
          const float w = std::exp(base[v] - M);
          l[v] += base[max_vectors + v] * w;
          const float* part = base + 2 * max_vectors + v * D;
          for (int64_t d = 0; d < D; ++d) acc[v * D + d] += part[d] * w;
        }
      }
      store_rows(a, first, group, l.data(), acc.data());
    }
  });
}

}  // namespace

std::string paged_attention_unsupported(const PagedAttentionArgs& a, Device) {
  if (!listed(kAttentionHeadSizes, a.shape.head_size))
    return "unsupported head size " + std::to_string(a.shape.head_size) + " (supported: " + join(kAttentionHeadSizes) + ")";
  if (!listed(kAttentionBlockSizes, a.shape.block_size))
    return "unsupported block size " + std::to_string(a.shape.block_size) + " (supported: " + join(kAttentionBlockSizes) + ")";
  if (a.dtype != DType::Float32 && a.dtype != DType::Float16 && a.dtype != DType::BFloat16)
    return std::string("unsupported query dtype ") + dtype_name(a.dtype) + " (supported: float32, float16, bfloat16)";
  if (!valid_cache_dtype(a.cache_dtype))
    return "unsupported KV cache dtype " + std::to_string(static_cast<int32_t>(a.cache_dtype)) +
           " (supported: float32, float16, bfloat16, int8, fp8)";
  return "";
}

void paged_attention(const PagedAttentionArgs& a, Stream& stream) {
  const std::string why = paged_attention_unsupported(a, stream.device());
  if (!why.empty()) PAGEDLLM_FAIL(Unsupported, "paged_attention: ", why);
  check_args(a);
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) paged_attention_cpu(a, stream);
  else if (!a.cu_seqlens_q || a.max_query_len <= 1) paged_attention_decode_cuda(a, stream);
  else paged_attention_prefill_cuda(a, stream);
}

void paged_attention_cpu(const PagedAttentionArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] { run_fast(a); });
}

// The readable definition: per query row and head, two passes over the visible keys.
void paged_attention_reference_cpu(const PagedAttentionArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    const std::vector<SeqRows> seqs = read_metadata(a);
    const KvCacheShape& sh = a.shape;
    const int64_t D = sh.head_size, B = sh.block_size, group = a.num_heads / sh.num_kv_heads;
    std::vector<float> logits, q(D), k(D), out(D);
    for (int64_t s = 0; s < a.num_seqs; ++s) {
      const SeqRows& r = seqs[s];
      const int32_t* table = a.block_tables + s * a.max_blocks_per_seq;
      for (int64_t i = 0; i < r.q_len; ++i) {
        const int64_t row = r.row0 + i, p = r.seq_len - r.q_len + i;
        const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, p - a.sliding_window + 1) : 0;
        for (int64_t h = 0; h < a.num_heads; ++h) {
          const int64_t kvh = h / group;
          for (int64_t d = 0; d < D; ++d) q[d] = load_elem(a.query, a.dtype, row * a.query_stride + h * D + d);
          logits.assign(p - lo + 1, 0.0f);
          for (int64_t j = lo; j <= p; ++j) {
            const int64_t at = sh.index(table[j / B], kvh, j % B);
            for (int64_t d = 0; d < D; ++d) k[d] = cache_elem(a.key_cache, a.key_scales, a.cache_dtype, at + d, D);
            float dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
            float x = a.scale * dot;
            if (a.softcap > 0) x = a.softcap * std::tanh(x / a.softcap);
            if (a.alibi_slopes) x += a.alibi_slopes[h] * static_cast<float>(j - p);
            logits[j - lo] = x;
          }
          const float m = *std::max_element(logits.begin(), logits.end());
          float sum = 0;
          for (float& x : logits) sum += (x = std::exp(x - m));
          std::fill(out.begin(), out.end(), 0.0f);
          for (int64_t j = lo; j <= p; ++j) {
            const int64_t at = sh.index(table[j / B], kvh, j % B);
            const float w = logits[j - lo] / sum;
            for (int64_t d = 0; d < D; ++d) out[d] += w * cache_elem(a.value_cache, a.value_scales, a.cache_dtype, at + d, D);
          }
          for (int64_t d = 0; d < D; ++d) store_elem(a.out, a.dtype, (row * a.num_heads + h) * D + d, out[d]);
        }
      }
    }
  });
}

}  // namespace pagedllm
