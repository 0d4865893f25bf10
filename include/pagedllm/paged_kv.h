// The physical KV-cache layout, defined once (DESIGN.md §4).
//
// One block table per sequence, valid in every layer: block b is the same slot
// range in each layer's K and V caches. A token's slot is
// `block * block_size + offset`; slot −1 means "do not store".
//
// Per layer, K and V each:
//   cache  [num_blocks, num_kv_heads, block_size, head_size]   ("HND")
//   scales [num_blocks, num_kv_heads, block_size]  float32     (int8 / fp8 caches only)
// Why HND: attention reads one KV head of one block at a time; here that is
// one contiguous run of block_size * head_size elements (4 KiB for fp16,
// block 16, head 128), which coalesces on the GPU and streams on the CPU. It
// also makes a block's whole (all heads) contents one contiguous run, so
// copy-on-write and swap copy num_kv_heads * block_size * head_size elements
// per layer per block in one piece. (To be confirmed by the attention
// benchmark when it exists; vLLM's "flash" NHD layout is the alternative.)
//
// Quantized caches (int8, fp8 e4m3) keep one float32 scale per (token, head):
// scale = max|x| / QMAX over the head's head_size values (QMAX 127 for int8,
// 448 for fp8), q = round_to_nearest_even(x / scale) (int8: clamped to ±127;
// fp8: fp8.h's conversion); a zero vector stores scale 0 and zeros. The
// attention kernel dequantizes (x ≈ q * scale).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "pagedllm/dtype.h"
#include "pagedllm/fp8.h"
#include "pagedllm/error.h"
#include "pagedllm/stream.h"

namespace pagedllm {

enum class KvCacheDType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2, Int8 = 3, Fp8E4M3 = 4 };

inline size_t kv_dtype_size(KvCacheDType t) {
  switch (t) {
    case KvCacheDType::Float32: return 4;
    case KvCacheDType::Float16:
    case KvCacheDType::BFloat16: return 2;
    case KvCacheDType::Int8:
    case KvCacheDType::Fp8E4M3: return 1;
  }
  return 0;
}
inline bool kv_dtype_is_quantized(KvCacheDType t) { return t == KvCacheDType::Int8 || t == KvCacheDType::Fp8E4M3; }
inline const char* kv_dtype_name(KvCacheDType t) {
  switch (t) {
    case KvCacheDType::Float32: return "float32";
    case KvCacheDType::Float16: return "float16";
    case KvCacheDType::BFloat16: return "bfloat16";
    case KvCacheDType::Int8: return "int8";
    case KvCacheDType::Fp8E4M3: return "fp8";
  }
  return "unknown";
}

// ---- per-(token, head) quantization, shared by the CPU and CUDA writers -------------

PAGEDLLM_HD float kv_quant_max(KvCacheDType t) { return t == KvCacheDType::Int8 ? 127.0f : kFp8E4M3Max; }

// The stored byte of x for a head whose scale is `scale` (absmax / kv_quant_max).
PAGEDLLM_HD uint8_t kv_quantize(float x, float scale, KvCacheDType t) {
  if (scale == 0.0f) return 0;
  const float q = x / scale;
  if (t == KvCacheDType::Int8) {
    const float r = fminf(fmaxf(rintf(q), -127.0f), 127.0f);  // rint: nearest, ties to even
    return static_cast<uint8_t>(static_cast<int8_t>(r));
  }
  return float_to_fp8_e4m3(q);
}

PAGEDLLM_HD float kv_dequantize(uint8_t q, float scale, KvCacheDType t) {
  const float v = t == KvCacheDType::Int8 ? static_cast<float>(static_cast<int8_t>(q)) : fp8_e4m3_to_float(q);
  return v * scale;
}

struct KvCacheShape {
  int64_t num_blocks = 0;
  int64_t num_kv_heads = 0;
  int64_t block_size = 0;
  int64_t head_size = 0;
  PAGEDLLM_HD int64_t block_elements() const { return num_kv_heads * block_size * head_size; }
  PAGEDLLM_HD int64_t elements() const { return num_blocks * block_elements(); }
  // Element index of (block, head, offset, 0) in a cache; scale index is this / head_size.
  PAGEDLLM_HD int64_t index(int64_t block, int64_t head, int64_t offset) const {
    return ((block * num_kv_heads + head) * block_size + offset) * head_size;
  }
};

// Scatters new K and V into one layer's caches by slot mapping.
//  key, value:   [num_tokens, num_kv_heads, head_size]  (float32, float16 or bfloat16; `input_dtype`)
//  slot_mapping: [num_tokens] int32, slot = block * block_size + offset, −1 skips the token
//  key_cache, value_cache: [num_blocks, num_kv_heads, block_size, head_size] of `cache_dtype`
//  key_scales, value_scales: [num_blocks, num_kv_heads, block_size] float32 (quantized caches; else null)
// A slot outside the cache is a caller bug: the CPU op reports it (ERR_INVALID_ARGUMENT at the next
// synchronisation); TS validates slot mappings before they reach the kernels.
struct WriteKvArgs {
  const void* key;
  const void* value;
  DType input_dtype;
  const int32_t* slot_mapping;
  int64_t num_tokens;
  void* key_cache;
  void* value_cache;
  float* key_scales;
  float* value_scales;
  KvCacheDType cache_dtype;
  KvCacheShape shape;
};
void write_kv(const WriteKvArgs& args, Stream& stream);
void write_kv_cpu(const WriteKvArgs& args, Stream& stream);
void write_kv_cuda(const WriteKvArgs& args, Stream& stream);

// Copies whole blocks within one layer's cache (copy-on-write): for each pair,
// block dst = block src, all heads. Scales (if any) are copied alongside.
//  block_pairs: [num_pairs, 2] int32 (src, dst), host memory
struct CopyBlocksArgs {
  void* cache;
  float* scales;  // null unless quantized
  KvCacheDType cache_dtype;
  KvCacheShape shape;
  const int32_t* block_pairs;
  int64_t num_pairs;
};
void copy_blocks(const CopyBlocksArgs& args, Stream& stream);
void copy_blocks_cpu(const CopyBlocksArgs& args, Stream& stream);
void copy_blocks_cuda(const CopyBlocksArgs& args, Stream& stream);

// Swap: copies whole blocks from one cache to another of the same shape and dtype, every layer's
// K, V and scales in one call: for each pair (src, dst) and each region, block dst of the region's
// destination = block src of its source. The caches may live on different devices: a GPU cache and
// a host cache in pinned memory (swap out, swap in), two host caches, two GPU caches.
//  regions:     [num_regions] one tensor of one layer in both caches (K, V, K scales, V scales):
//               base pointers and the bytes of one block. Sources are read on src_stream's device,
//               destinations written on dst_stream's.
//  block_pairs: [num_pairs, 2] int32 (src, dst), host memory, taken at the call. Sources lie in
//               [0, src_blocks), destinations in [0, dst_blocks) and are distinct.
// Ordered after all work already enqueued on both streams; work enqueued on either later runs
// after the copies. Consecutive pairs (s, d), (s + 1, d + 1), … are one copy per region.
// Where the copies run:
//  - CPU ↔ CPU: on dst_stream's worker, spread over the thread pool.
//  - GPU ↔ host: cudaMemcpyAsync on the GPU side's stream, straight to or from the host memory
//    when it is pinned (the swap space the Engine allocates is); pageable host memory goes through
//    the staging buffers of copy_bytes (correct, slower). The GPU side's own stream, not a side
//    copy stream: a swap-out must follow the writes of the blocks it moves and a swap-in must
//    precede the attention that reads them, which with stream ordering is all queued work on that
//    stream either way; a side stream would only add two event hops.
//  - GPU ↔ GPU: on dst_stream (peer copies between devices).
struct SwapRegion {
  const void* src;
  void* dst;
  int64_t block_bytes;
};
struct SwapBlocksArgs {
  const SwapRegion* regions;
  int64_t num_regions;
  const int32_t* block_pairs;
  int64_t num_pairs;
  int64_t src_blocks;
  int64_t dst_blocks;
};
void swap_blocks(const SwapBlocksArgs& args, Stream& src_stream, Stream& dst_stream);

// A run of consecutive pairs: blocks [src, src + count) to [dst, dst + count).
struct BlockRun {
  int64_t src, dst, count;
};
// The pairs of `args`, validated (ERR_INVALID_ARGUMENT naming the fault), as runs, in order.
std::vector<BlockRun> swap_block_runs(const SwapBlocksArgs& args);
// The CUDA half of swap_blocks (cuda/transfer.cpp): either stream is a GPU stream.
void swap_blocks_cuda(const SwapRegion* regions, int64_t num_regions, const std::vector<BlockRun>& runs,
                      Stream& src_stream, Stream& dst_stream);


}  // namespace pagedllm
