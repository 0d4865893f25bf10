// write_kv_cpu and copy_blocks_cpu: the readable references (and CPU backend)
// of cuda/cache_ops.cu. Layout and quantization: include/pagedllm/paged_kv.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/paged_kv.h"

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

}  // namespace pagedllm
