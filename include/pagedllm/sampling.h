// Token sampling on the logits' device (DESIGN.md §5): only the sampled ids (and, when asked,
// their logprobs) cross to the host. vLLM's parameters and order, the semantics of the host
// sampler lib/sampling.ts sampleToken (which is the reference the tests hold this op to):
//   1. x = the logits row in float64;
//   2. penalties: repetition r on every token of the prompt or the output (x > 0 ? x / r : x · r),
//      then presence p and frequency f on every token of the output (x −= f · count + p);
//   3. temperature 0: the argmax of x (ties: the lowest id), logprob = log-softmax(x) there;
//   4. otherwise x /= T, e = exp(x − max x) (the largest is 1), all = Σ e;
//   5. top-k (k > 0) and top-p (p < 1) keep a prefix of the tokens in descending e (ties: the
//      lower id first; e compared at float32 precision for the order): the first min(k, V), then
//      of those the shortest prefix whose share of their Σ e reaches p;
//   6. min-p drops the kept tokens with e < min_p;
//   7. the draw u ∈ [0, 1) (given: the host's seeded generator makes it, so the same seed gives
//      the same tokens on every backend) picks, walking the kept tokens in id order, the first
//      whose running sum of e exceeds u · Σ_kept e; logprob = log(e / all).
// A token whose logit is NaN is never drawn; a row of NaN gives id −1 (logprob NaN), which callers
// report.
// CPU: float64 math, the host sampler's decisions (its exp is the C library's, which may differ
// from V8's in the last bit, and its vocabulary-wide sums are added by chunks of 8192 tokens, so a
// draw within ~1e-16 of a boundary could go the other way; the chunks are fixed, so the result does
// not depend on the number of threads). Samples run in parallel, or, when fewer than the threads,
// one sample's vocabulary-wide loops do.
// CUDA: one block per sample, float32 math (penalties, softmax, and a search over float32 bit
// patterns for the top-k / top-p cut); it agrees with the CPU except where float32 rounding moves a
// cut or a draw boundary. Several samples may read one logits row (n > 1 choices of one prompt).
#pragma once

#include <cstdint>

#include "pagedllm/stream.h"

namespace pagedllm {

// One sample's parameters: 12 four-byte fields, so that JS can pack a batch into one int32 array
// (floats by bit pattern) and copy it to the device in one transfer.
struct SampleParams {
  float temperature;         // ≥ 0; 0: greedy
  float top_p;               // (0, 1]
  float min_p;               // [0, 1]
  float repetition_penalty;  // > 0; 1: off
  float presence_penalty;    // finite; 0: off
  float frequency_penalty;   // finite; 0: off
  int32_t top_k;             // ≤ 0: off
  int32_t logits_row;        // which row of the logits this sample draws from
  int32_t history_begin;     // this sample's tokens in history: [history_begin, history_end)
  int32_t history_end;
  uint32_t draw;             // u = draw / 2^32
  int32_t reserved;          // 0
};
static_assert(sizeof(SampleParams) == 48, "12 packed four-byte fields");

struct SampleArgs {
  const float* logits;  // [num_rows, logits_stride] float32, vocab_size valid columns
  int64_t num_rows;
  int64_t logits_stride;
  int64_t vocab_size;
  const SampleParams* params;  // [num_samples], device memory
  int64_t num_samples;
  // The penalties' history, device memory: pairs (token id, count in the output) of distinct
  // tokens, count 0 for a prompt-only token; num_history pairs in all (null when 0).
  const int32_t* history;
  int64_t num_history;
  int32_t* token_ids;  // [num_samples] int32
  float* logprobs;     // [num_samples] float32, or null: not computed
};

// Checks the by-value arguments and the parameters (on the CPU; on CUDA the kernel clamps
// instead, the TS wrapper having checked them on the host): ERR_INVALID_ARGUMENT naming the
// sample and field. vocab_size up to 2^20 (the host sampler's limit).
void sample_tokens(const SampleArgs& args, Stream& stream);
void sample_tokens_cpu(const SampleArgs& args, Stream& stream);
void sample_tokens_cuda(const SampleArgs& args, Stream& stream);

}  // namespace pagedllm
