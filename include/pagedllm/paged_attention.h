// Paged attention over one layer of the KV cache of paged_kv.h: one op for
// decode, prefill and mixed (chunked-prefill + decode) batches.
//
// Semantics (every backend, every path):
//   Sequence s holds seq_lens[s] tokens in the cache — its new tokens included
//   (write_kv ran first) — and q_len(s) new query tokens, q_len(s) =
//   cu_seqlens_q[s + 1] − cu_seqlens_q[s] (1 for every sequence when
//   cu_seqlens_q is null: decode). New token i of s (0 ≤ i < q_len(s)) is query
//   row cu_seqlens_q[s] + i, at position p = seq_lens[s] − q_len(s) + i, and
//   attends (causally) to the cached keys j with lo(p) ≤ j ≤ p, where
//   lo(p) = max(0, p − sliding_window + 1) when sliding_window > 0 (the window
//   holds sliding_window tokens, the token itself included — vLLM and HF
//   Mistral), else 0.
//     logit_j = scale · (q · k_j)
//     if softcap > 0:        logit_j = softcap · tanh(logit_j / softcap)
//     if alibi_slopes given: logit_j += alibi_slopes[h] · (j − p)
//     out = Σ_j softmax(logit)_j · v_j        (exact softmax, float32 accumulation)
//   GQA / MQA: query head h reads KV head h / (num_heads / num_kv_heads).
//   Cache slots past a sequence's length, and block-table entries past
//   ceil(seq_lens[s] / block_size), are never read (they may hold NaN or
//   garbage). A sequence with q_len 0 produces no rows; seq_lens[s] must be
//   ≥ q_len(s).
//
// Tensors (all on the stream's device):
//   query        [num_tokens, num_heads, head_size] of `dtype`; token stride query_stride elements, heads contiguous
//   out          [num_tokens, num_heads, head_size] of `dtype`, contiguous
//   key_cache, value_cache, key_scales, value_scales: one layer (paged_kv.h)
//   block_tables [num_seqs, max_blocks_per_seq] int32
//   seq_lens     [num_seqs] int32
//   cu_seqlens_q [num_seqs + 1] int32 (cu_seqlens_q[0] = 0, non-decreasing, cu_seqlens_q[num_seqs] = num_tokens), or null
//   alibi_slopes [num_heads] float32, or null
//
// Supported: head sizes 64, 80, 96, 128, 256; block sizes 8, 16, 32; dtype
// float32 (both backends), float16 and bfloat16 (both backends; the CPU
// computes in float32); every KvCacheDType. Anything else fails with
// ERR_UNSUPPORTED naming the supported list; paged_attention_unsupported()
// answers in advance. Block ids outside the cache are caller bugs: the CPU op
// reports ERR_INVALID_ARGUMENT at the next synchronisation; the CUDA kernels
// skip such blocks rather than read outside the cache.
//
// CUDA specifics: the float16 / bfloat16 prefill path runs on tensor cores with
// operands in q's dtype (K/V tiles and the probabilities P are rounded to it;
// accumulation stays float32), so a float32 cache is read at q's precision
// there. Caches must be 16-byte aligned (the pool's 256-byte alignment is);
// num_seqs ≤ 65535 per call. Caller bugs the host cannot see (device-resident
// metadata) are clamped, never read out of bounds: q_len to max_query_len,
// seq_len to min(max_seq_len, max_blocks_per_seq · block_size); a row left with
// no visible key is written as zeros.
//
// Workspace: the CUDA split-K (flash-decoding) path needs per-partition
// partial results; the launcher takes them from default_memory_resource(device)
// on the stream (category workspace) and frees them stream-ordered, so no
// caller plumbing is needed and steady-state decode makes no driver call.
#pragma once

#include <cstdint>
#include <string>

#include "pagedllm/device.h"
#include "pagedllm/dtype.h"
#include "pagedllm/paged_kv.h"
#include "pagedllm/stream.h"

namespace pagedllm {

inline constexpr int kAttentionHeadSizes[] = {64, 80, 96, 128, 256};
inline constexpr int kAttentionBlockSizes[] = {8, 16, 32};

struct PagedAttentionArgs {
  const void* query;
  int64_t query_stride;  // elements between consecutive tokens (≥ num_heads * head_size)
  void* out;
  DType dtype;  // of query and out
  int64_t num_tokens;
  int64_t num_heads;

  const void* key_cache;
  const void* value_cache;
  const float* key_scales;    // quantized caches only
  const float* value_scales;  // quantized caches only
  KvCacheDType cache_dtype;
  KvCacheShape shape;  // num_blocks, num_kv_heads, block_size, head_size

  const int32_t* block_tables;
  int64_t max_blocks_per_seq;
  const int32_t* seq_lens;
  const int32_t* cu_seqlens_q;  // null: decode, one query token per sequence (num_tokens == num_seqs)
  int64_t num_seqs;
  // Host-side bounds for launch sizing: max over s of seq_lens[s] and of q_len(s).
  // Values above them are caller bugs (the CPU op reports them; CUDA clamps).
  int64_t max_seq_len;
  int64_t max_query_len;

  float scale;
  int32_t sliding_window;     // 0: off
  const float* alibi_slopes;  // null: off
  float softcap;              // 0: off
  // CUDA decode only: split-K partitions per sequence, for tuning experiments (clamped to what
  // the context allows); 0 or less: the launcher's own choice (choose_partitions).
  int32_t decode_partitions;
  // CUDA decode only: which kernel, for tests, benchmarks and as a fallback switch. 0: automatic
  // (the tensor-core kernel on sm_80+ for float16 / bfloat16 q with a cache of the same dtype,
  // no alibi, no softcap; else the SIMT kernel), 1: the SIMT kernel, 2: the tensor-core kernel
  // (ERR_UNSUPPORTED when it does not handle the call).
  int32_t decode_kernel;
};

// Empty when supported on `device`; otherwise the reason, naming the supported values.
std::string paged_attention_unsupported(const PagedAttentionArgs& args, Device device);

// Validates host-visible arguments (sizes, support) and dispatches on the stream's device.
void paged_attention(const PagedAttentionArgs& args, Stream& stream);

// The CPU twin (threads over sequences × KV heads, SIMD over head_size, online softmax).
void paged_attention_cpu(const PagedAttentionArgs& args, Stream& stream);
// The plain CPU reference (one token at a time, two-pass softmax): the readable definition the
// fast CPU and CUDA paths are tested against (besides the tests' own float64 reference).
void paged_attention_reference_cpu(const PagedAttentionArgs& args, Stream& stream);

// CUDA: decode (every q_len 1; split-K over partitions of the context, GQA groups share each KV load)
// and prefill / mixed batches (tensor cores on sm_80+ for float16/bfloat16).
void paged_attention_decode_cuda(const PagedAttentionArgs& args, Stream& stream);
void paged_attention_prefill_cuda(const PagedAttentionArgs& args, Stream& stream);

}  // namespace pagedllm
