// A Llama-family decoder step composed natively: the sequence of ops lib/model.ts's forward runs
// (embedding, RMSNorm with fused residual, Q/K/V/O and MLP projections, RoPE, KV write, paged
// attention, SiLU·mul, final norm, logits), issued from C++ in one call instead of a JS call,
// allocation and free per op. Same kernels, same order, same inputs: its logits are bitwise those
// of the per-op path (the tests hold it to that), which stays the reference and serves the hooks
// (activation capture) the fused path does not.
//
// Why: on a 2-core CPU a decode step of a 1024-wide, 8-layer model issues ~110 ops; building them
// in JS took ~5–6 ms of one core per token, beside ~13 ms of kernels on both cores, and every
// millisecond the JS thread ran was taken from the kernels. Natively the issue costs ~0.1 ms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "pagedllm/awq.h"
#include "pagedllm/dtype.h"
#include "pagedllm/paged_kv.h"
#include "pagedllm/stream.h"

namespace pagedllm {

// A linear layer's weight: float [out_features, in_features] (weight set) or AWQ int4 (awq set).
struct DecoderProjection {
  const void* weight = nullptr;
  DType weight_dtype = DType::Float32;
  bool is_awq = false;
  AwqWeight awq{};
  const void* bias = nullptr;  // [out_features] or null
  DType bias_dtype = DType::Float32;
};

struct DecoderLayer {
  const void* input_norm;  // [hidden] of norm_dtype
  const void* post_norm;
  DType norm_dtype;
  DecoderProjection q, k, v, o, gate, up, down;
};

struct DecoderModel {
  int64_t hidden_size, num_heads, num_kv_heads, head_size, intermediate_size, vocab_size;
  float rms_norm_eps;
  DType dtype;  // activations
  const void* embed;  // [vocab, hidden] of embed_dtype
  DType embed_dtype;
  const void* final_norm;  // [hidden] of final_norm_dtype
  DType final_norm_dtype;
  const void* lm_head;  // [vocab, hidden] of lm_head_dtype
  DType lm_head_dtype;
  const float* inv_freq;  // [rotary_dim / 2] float32, on the model's device
  int64_t rotary_dim;
  float attention_scale;
  int32_t sliding_window;  // 0: off
  std::vector<DecoderLayer> layers;
};

struct DecoderCacheLayer {
  void* key;
  void* value;
  float* key_scales;  // quantized caches only
  float* value_scales;
};

struct DecoderStep {
  int64_t num_tokens;
  const int32_t* token_ids;  // [num_tokens]
  const int32_t* positions;  // [num_tokens]
  const int32_t* slot_mapping;  // [num_tokens]
  // Attention metadata, as PagedAttentionArgs.
  const int32_t* block_tables;
  int64_t max_blocks_per_seq;
  const int32_t* seq_lens;
  const int32_t* cu_seqlens_q;  // null: one token per sequence
  int64_t num_seqs, max_seq_len, max_query_len;
  // The cache: one entry per layer.
  KvCacheDType cache_dtype;
  KvCacheShape cache_shape;
  std::vector<DecoderCacheLayer> cache;
  // Rows whose logits are wanted: num_logit_rows indices, or null for all rows (num_logit_rows is
  // then num_tokens). num_logit_rows 0: no logits, the step only writes the cache (a prompt chunk
  // that samples nothing skips the final norm and lm_head).
  const int32_t* logit_rows;
  int64_t num_logit_rows;
  void* workspace;  // decoder_workspace_bytes(model, num_tokens, num_logit_rows) bytes
  float* logits;    // [num_logit_rows, vocab_size] float32
};

// Bytes of activations a step of `num_tokens` tokens (and `num_logit_rows` logit rows) carves up.
size_t decoder_workspace_bytes(const DecoderModel& model, int64_t num_tokens, int64_t num_logit_rows);

// Issues the step's ops on `stream` (the ops validate their arguments as always). On a CPU stream
// the step is one task that runs them on the stream's worker: an argument an op rejects then
// surfaces as the stream's failure (at the next synchronize or download), not as a throw here.
void decoder_forward(const DecoderModel& model, const DecoderStep& step, Stream& stream);

}  // namespace pagedllm

namespace pagedllm {

// Decode steps replayed from CUDA graphs (issue 9): one runner per (model, stream), created by the
// caller that owns the weights and freed before them. forward() takes a pure decode step (one token
// per sequence in order: cu_seqlens_q and logit_rows null, num_tokens == num_seqs ≤ max_batch,
// max_blocks_per_seq ≤ the runner's) and:
//  1. copies its inputs into the runner's fixed buffers, padded to a batch bucket B (a power of two,
//     or max_batch): pad rows get token 0, slot −1 (no KV write) and seq_len 0 (zeros out);
//  2. launches the graph captured for (B, L), L the context bucket (a power of two ≥ 256 and ≥ the
//     step's max_seq_len, capped by the block table): attention is launched for contexts up to L, so
//     one graph serves every step until a sequence outgrows it. A new key first runs eagerly (the
//     step's result) and is then captured;
//  3. copies the logits rows out to step.logits.
// The ops' temporary workspace (split-K partials, dequantized AWQ weights) comes, while capturing,
// from the runner's arena — one block of the pool sized by the eager run's peak, kept for the
// graphs' lifetime — instead of the pool, whose freed blocks a later owner could hold while a graph
// replays. Buffers and arena are pool memory (activations, workspace): counted like any other.
// A key whose capture fails runs eagerly from then on (reported in stats). Results are the eager
// step's on the padded batch: the same kernels with the same launch parameters.
struct DecoderGraphStats {
  int64_t captures = 0, replays = 0, eager_steps = 0, failures = 0, graphs = 0;
  size_t buffer_bytes = 0, arena_bytes = 0;
};

class DecoderGraphRunner {
 public:
  virtual ~DecoderGraphRunner() = default;
  virtual void forward(const DecoderStep& step) = 0;
  virtual DecoderGraphStats stats() const = 0;
};

// Throws Unsupported on a CPU stream or a build without CUDA. capture false: every step runs
// eagerly on the padded buffers (the same work, launched op by op: the baseline graphs are measured
// against, and the reference their tests compare with bit for bit).
std::unique_ptr<DecoderGraphRunner> create_decoder_graph_runner(const DecoderModel& model, Stream& stream,
                                                                int64_t max_batch, int64_t max_blocks_per_seq,
                                                                bool capture = true);

}  // namespace pagedllm
