// write_kv_cpu and copy_blocks_cpu: the readable references (and CPU backend)
// of cuda/cache_ops.cu; swap_blocks between two CPU caches, and its dispatch.
// Layout and quantization: include/pagedllm/paged_kv.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/paged_kv.h"
#include "thread_pool.h"

namespace pagedllm {

namespace {

float load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return static_cast<const float*>(p)[i];
    case DType::Float16: return to_float(static_cast<const half_t*>(p)[i]);
    case DType::BFloat16: return to_float(static_cast<const bfloat16_t*>(p)[i]);
    default: PAGEDLLM_FAIL(Unsupported, "write_kv: input dtype ", dtype_name(t), " (supported: float32, float16, bfloat16)");
  }
}

// Stores one head's head_size values at element `at` of `cache` (and its scale).
void store_head(const float* x, int64_t head_size, void* cache, float* scales, int64_t at, KvCacheDType t) {
  switch (t) {
    case KvCacheDType::Float32: std::memcpy(static_cast<float*>(cache) + at, x, head_size * 4); return;
    case KvCacheDType::Float16:
      for (int64_t d = 0; d < head_size; ++d) static_cast<half_t*>(cache)[at + d] = from_float<half_t>(x[d]);
      return;
    case KvCacheDType::BFloat16:
      for (int64_t d = 0; d < head_size; ++d) static_cast<bfloat16_t*>(cache)[at + d] = from_float<bfloat16_t>(x[d]);
      return;
    case KvCacheDType::Int8:
    case KvCacheDType::Fp8E4M3: {
      float absmax = 0.0f;
      for (int64_t d = 0; d < head_size; ++d) absmax = std::max(absmax, std::fabs(x[d]));
      const float scale = absmax / kv_quant_max(t);
      scales[at / head_size] = scale;
      for (int64_t d = 0; d < head_size; ++d) static_cast<uint8_t*>(cache)[at + d] = kv_quantize(x[d], scale, t);
      return;
    }
  }
}

}  // namespace

void write_kv_cpu(const WriteKvArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    const KvCacheShape& s = a.shape;
    const int64_t slots = s.num_blocks * s.block_size;
    std::vector<float> k(s.head_size), v(s.head_size);
    for (int64_t t = 0; t < a.num_tokens; ++t) {
      const int64_t slot = a.slot_mapping[t];
      if (slot < 0) continue;
      PAGEDLLM_CHECK(slot < slots, InvalidArgument, "write_kv: slot ", slot, " of token ", t, " is outside the cache (",
                     slots, " slots)");
      const int64_t block = slot / s.block_size, offset = slot % s.block_size;
      for (int64_t h = 0; h < s.num_kv_heads; ++h) {
        const int64_t in = (t * s.num_kv_heads + h) * s.head_size;
        for (int64_t d = 0; d < s.head_size; ++d) {
          k[d] = load(a.key, a.input_dtype, in + d);
          v[d] = load(a.value, a.input_dtype, in + d);
        }
        const int64_t at = s.index(block, h, offset);
        store_head(k.data(), s.head_size, a.key_cache, a.key_scales, at, a.cache_dtype);
        store_head(v.data(), s.head_size, a.value_cache, a.value_scales, at, a.cache_dtype);
      }
    }
  });
}

void copy_blocks_cpu(const CopyBlocksArgs& a, Stream& stream) {
  // The pairs live in caller memory that may change after this returns: take them now.
  std::vector<int32_t> pairs(a.block_pairs, a.block_pairs + 2 * a.num_pairs);
  as_cpu_stream(stream).enqueue([a, pairs = std::move(pairs)] {
    const int64_t block_bytes = a.shape.block_elements() * kv_dtype_size(a.cache_dtype);
    const int64_t block_scales = a.shape.num_kv_heads * a.shape.block_size;
    for (size_t i = 0; i < pairs.size(); i += 2) {
      const int64_t src = pairs[i], dst = pairs[i + 1];
      std::memcpy(static_cast<char*>(a.cache) + dst * block_bytes, static_cast<char*>(a.cache) + src * block_bytes, block_bytes);
      if (a.scales) std::memcpy(a.scales + dst * block_scales, a.scales + src * block_scales, block_scales * 4);
    }
  });
}

// ---- dispatch ---------------------------------------------------------------------------

namespace {
void check_pairs(const int32_t* pairs, int64_t n, int64_t num_blocks) {
  for (int64_t i = 0; i < 2 * n; ++i)
    PAGEDLLM_CHECK(pairs[i] >= 0 && pairs[i] < num_blocks, InvalidArgument, "copy_blocks: block ", pairs[i],
                   " is outside the cache (", num_blocks, " blocks)");
}
}  // namespace

void write_kv(const WriteKvArgs& a, Stream& stream) {
  PAGEDLLM_CHECK(!kv_dtype_is_quantized(a.cache_dtype) || (a.key_scales && a.value_scales), InvalidArgument,
                 "write_kv: a ", kv_dtype_name(a.cache_dtype), " cache needs scales");
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) write_kv_cpu(a, stream);
  else write_kv_cuda(a, stream);
}

void copy_blocks(const CopyBlocksArgs& a, Stream& stream) {
  check_pairs(a.block_pairs, a.num_pairs, a.shape.num_blocks);
  if (a.num_pairs == 0) return;
  if (stream.device().is_cpu()) copy_blocks_cpu(a, stream);
  else copy_blocks_cuda(a, stream);
}

std::vector<BlockRun> swap_block_runs(const SwapBlocksArgs& a) {
  PAGEDLLM_CHECK(a.num_pairs >= 0 && a.num_regions >= 0, InvalidArgument, "swap_blocks: negative count");
  PAGEDLLM_CHECK(a.num_pairs == 0 || a.block_pairs, InvalidArgument, "swap_blocks: null block pairs");
  PAGEDLLM_CHECK(a.num_regions == 0 || a.regions, InvalidArgument, "swap_blocks: null regions");
  for (int64_t r = 0; r < a.num_regions; ++r) {
    const SwapRegion& g = a.regions[r];
    PAGEDLLM_CHECK(g.src && g.dst && g.block_bytes > 0, InvalidArgument, "swap_blocks: region ", r,
                   " needs a source, a destination and a positive block size");
    // Same address space on one device, or unified addresses across host and GPUs: disjoint either way.
    const auto* s0 = static_cast<const char*>(g.src);
    const auto* d0 = static_cast<const char*>(g.dst);
    PAGEDLLM_CHECK(s0 + a.src_blocks * g.block_bytes <= d0 || d0 + a.dst_blocks * g.block_bytes <= s0, InvalidArgument,
                   "swap_blocks: region ", r, "'s source and destination overlap (use copy_blocks within one cache)");
  }
  std::vector<int32_t> dsts(a.num_pairs);
  for (int64_t i = 0; i < a.num_pairs; ++i) {
    const int32_t src = a.block_pairs[2 * i], dst = a.block_pairs[2 * i + 1];
    PAGEDLLM_CHECK(src >= 0 && src < a.src_blocks, InvalidArgument, "swap_blocks: source block ", src,
                   " is outside the source cache (", a.src_blocks, " blocks)");
    PAGEDLLM_CHECK(dst >= 0 && dst < a.dst_blocks, InvalidArgument, "swap_blocks: destination block ", dst,
                   " is outside the destination cache (", a.dst_blocks, " blocks)");
    dsts[i] = dst;
  }
  std::sort(dsts.begin(), dsts.end());
  const auto twice = std::adjacent_find(dsts.begin(), dsts.end());
  PAGEDLLM_CHECK(twice == dsts.end(), InvalidArgument, "swap_blocks: destination block ", twice == dsts.end() ? 0 : *twice,
                 " appears in more than one pair");
  std::vector<BlockRun> runs;
  for (int64_t i = 0; i < a.num_pairs; ++i) {
    const int64_t src = a.block_pairs[2 * i], dst = a.block_pairs[2 * i + 1];
    if (!runs.empty() && runs.back().src + runs.back().count == src && runs.back().dst + runs.back().count == dst)
      ++runs.back().count;
    else
      runs.push_back({src, dst, 1});
  }
  return runs;
}

void swap_blocks(const SwapBlocksArgs& a, Stream& src_stream, Stream& dst_stream) {
  std::vector<BlockRun> runs = swap_block_runs(a);
  if (runs.empty() || a.num_regions == 0) return;
  if (!src_stream.device().is_cpu() || !dst_stream.device().is_cpu())
    return swap_blocks_cuda(a.regions, a.num_regions, runs, src_stream, dst_stream);
  if (&src_stream != &dst_stream) dst_stream.wait(src_stream.record());
  as_cpu_stream(dst_stream).enqueue([regions = std::vector<SwapRegion>(a.regions, a.regions + a.num_regions),
                                     runs = std::move(runs)] {
    // One job per (run, region): whole-block memcpys, a few KiB to MiBs each; the pool only when
    // there is enough to copy to repay waking it.
    const int64_t jobs = static_cast<int64_t>(runs.size() * regions.size());
    auto copy = [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const BlockRun& run = runs[j / regions.size()];
        const SwapRegion& g = regions[j % regions.size()];
        std::memcpy(static_cast<char*>(g.dst) + run.dst * g.block_bytes,
                    static_cast<const char*>(g.src) + run.src * g.block_bytes, run.count * g.block_bytes);
      }
    };
    int64_t blocks = 0, block_bytes = 0;
    for (const BlockRun& run : runs) blocks += run.count;
    for (const SwapRegion& g : regions) block_bytes += g.block_bytes;
    if (blocks * block_bytes < (int64_t{8} << 20)) copy(0, jobs);
    else ThreadPool::global().parallel_for(jobs, 1, copy);
  });
  // The source's blocks are reused (or freed) in its own stream's order: keep that after the copies.
  if (&src_stream != &dst_stream) src_stream.wait(dst_stream.record());
}

}  // namespace pagedllm
