// decoder_forward (include/pagedllm/decoder.h): lib/model.ts's forward, op for op, from C++.
// Device-neutral: every op dispatches on the stream's device.
#include "pagedllm/decoder.h"

#include "cpu_stream.h"

#include <initializer_list>
#include <vector>

#include "pagedllm/error.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/paged_attention.h"

namespace pagedllm {

namespace {

constexpr size_t kAlign = 256;

size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The workspace's pieces, in order (every piece 256-byte aligned).
struct Pieces {
  int64_t residual, x, q, k, v, attn, o, h, gate_up, act, delta, final_, picked;  // element counts
  template <typename F>
  void each(F&& f) const {
    for (int64_t n : {residual, x, q, k, v, attn, o, h, gate_up, act, delta, final_, picked}) f(n);
  }
};

Pieces pieces(const DecoderModel& m, int64_t T, int64_t R) {
  const int64_t H = m.hidden_size, Q = m.num_heads * m.head_size, KV = m.num_kv_heads * m.head_size, I = m.intermediate_size;
  return {T * H, T * H, T * Q, T * KV, T * KV, T * Q, T * H, T * H, T * 2 * I, T * I, T * H, T * H, R * H};
}

// One projection of x: out = x · Wᵀ (+ bias).
struct Projection {
  const DecoderProjection& w;
  void* out;
  int64_t out_stride, N;
};

// Projections of the same x ([T, K], row stride K, dtype A; outputs of dtype A): the dense ones as
// one linear_many, the AWQ ones as one awq_linear_many (one pass of the CPU thread pool each; AWQ
// weights of different group sizes one by one).
void project(std::initializer_list<Projection> ps, const void* x, DType A, int64_t T, int64_t K, Stream& stream) {
  std::vector<LinearArgs> dense;
  std::vector<AwqLinearArgs> awq;
  for (const Projection& p : ps) {
    if (p.w.is_awq) {
      awq.push_back(AwqLinearArgs{x, K, A, p.w.awq, p.w.bias, p.w.bias_dtype, p.out, p.out_stride, A, T});
    } else {
      dense.push_back(LinearArgs{x, K, A, p.w.weight, p.w.weight_dtype, p.w.bias, p.w.bias_dtype, p.out, p.out_stride, A, T, p.N, K});
    }
  }
  if (!dense.empty()) linear_many(dense.data(), dense.size(), stream);
  bool same_groups = true;
  for (const AwqLinearArgs& a : awq) same_groups = same_groups && a.weight.group_size == awq.front().weight.group_size;
  if (same_groups && !awq.empty()) {
    awq_linear_many(awq.data(), awq.size(), stream);
  } else {
    for (const AwqLinearArgs& a : awq) awq_linear(a, stream);
  }
}

}  // namespace

size_t decoder_workspace_bytes(const DecoderModel& m, int64_t T, int64_t R) {
  size_t bytes = 0;
  pieces(m, T, R).each([&](int64_t n) { bytes += aligned(static_cast<size_t>(n) * dtype_size(m.dtype)); });
  return bytes;
}

// The step's ops, issued on `stream` in lib/model.ts's order.
static void issue(const DecoderModel& m, const DecoderStep& s, Stream& stream) {
  const int64_t T = s.num_tokens, H = m.hidden_size, D = m.head_size;
  const int64_t Q = m.num_heads * D, KV = m.num_kv_heads * D, I = m.intermediate_size;
  const int64_t R = s.num_logit_rows;
  const DType A = m.dtype;
  char* cursor = static_cast<char*>(s.workspace);
  auto take = [&](int64_t n) {
    void* p = cursor;
    cursor += aligned(static_cast<size_t>(n) * dtype_size(A));
    return p;
  };
  const Pieces n = pieces(m, T, R);
  void* residual = take(n.residual);
  void* x = take(n.x);
  void* q = take(n.q);
  void* k = take(n.k);
  void* v = take(n.v);
  void* attn = take(n.attn);
  void* o = take(n.o);
  void* h = take(n.h);
  void* gate_up = take(n.gate_up);
  void* act = take(n.act);
  void* delta = take(n.delta);
  void* final_ = take(n.final_);
  void* picked = take(n.picked);

  // out = norm(in) (no residual) or residual += in, out = norm(residual).
  auto norm = [&](const void* in, bool with_residual, const void* weight, DType weight_dtype, void* out) {
    rms_norm(RmsNormArgs{in, H, A, with_residual ? residual : nullptr, H, A, weight, weight_dtype, out, H, A, T, H, m.rms_norm_eps},
             stream);
  };

  embedding(EmbeddingArgs{s.token_ids, T, m.embed, m.embed_dtype, m.vocab_size, H, residual, A}, stream);
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const DecoderLayer& w = m.layers[l];
    const DecoderCacheLayer& c = s.cache[l];
    norm(l == 0 ? residual : delta, l > 0, w.input_norm, w.norm_dtype, x);
    project({{w.q, q, Q, Q}, {w.k, k, KV, KV}, {w.v, v, KV, KV}}, x, A, T, H, stream);
    rope(RopeArgs{q, Q, k, KV, A, s.positions, m.inv_freq, T, m.num_heads, m.num_kv_heads, D, m.rotary_dim}, stream);
    write_kv(WriteKvArgs{k, v, A, s.slot_mapping, T, c.key, c.value, c.key_scales, c.value_scales, s.cache_dtype, s.cache_shape},
             stream);
    PagedAttentionArgs pa{};
    pa.query = q;
    pa.query_stride = Q;
    pa.out = attn;
    pa.dtype = A;
    pa.num_tokens = T;
    pa.num_heads = m.num_heads;
    pa.key_cache = c.key;
    pa.value_cache = c.value;
    pa.key_scales = c.key_scales;
    pa.value_scales = c.value_scales;
    pa.cache_dtype = s.cache_dtype;
    pa.shape = s.cache_shape;
    pa.block_tables = s.block_tables;
    pa.max_blocks_per_seq = s.max_blocks_per_seq;
    pa.seq_lens = s.seq_lens;
    pa.cu_seqlens_q = s.cu_seqlens_q;
    pa.num_seqs = s.num_seqs;
    pa.max_seq_len = s.max_seq_len;
    pa.max_query_len = s.max_query_len;
    pa.scale = m.attention_scale;
    pa.sliding_window = m.sliding_window;
    pa.alibi_slopes = nullptr;
    pa.softcap = 0;
    paged_attention(pa, stream);
    project({{w.o, o, H, H}}, attn, A, T, Q, stream);
    norm(o, true, w.post_norm, w.norm_dtype, h);
    project({{w.gate, gate_up, 2 * I, I}, {w.up, static_cast<char*>(gate_up) + I * dtype_size(A), 2 * I, I}}, h, A, T, H, stream);
    silu_mul(SiluMulArgs{gate_up, 2 * I, act, A, T, I}, stream);
    project({{w.down, delta, H, H}}, act, A, T, I, stream);
  }
  if (R == 0) return;
  if (m.layers.empty()) {
    norm(residual, false, m.final_norm, m.final_norm_dtype, final_);
  } else {
    norm(delta, true, m.final_norm, m.final_norm_dtype, final_);
  }
  const void* rows = final_;
  if (s.logit_rows) {
    embedding(EmbeddingArgs{s.logit_rows, R, final_, A, T, H, picked, A}, stream);
    rows = picked;
  }
  linear(LinearArgs{rows, H, A, m.lm_head, m.lm_head_dtype, nullptr, DType::Float32, s.logits, m.vocab_size, DType::Float32, R,
                    m.vocab_size, H},
         stream);
}

void decoder_forward(const DecoderModel& m, const DecoderStep& s, Stream& stream) {
  const int64_t T = s.num_tokens, R = s.num_logit_rows;
  PAGEDLLM_CHECK(T > 0, InvalidArgument, "decoder: the step has no tokens");
  PAGEDLLM_CHECK(s.cache.size() == m.layers.size(), InvalidArgument, "decoder: the cache has ", s.cache.size(),
                 " layers, the model ", m.layers.size());
  PAGEDLLM_CHECK(s.logit_rows ? R >= 0 : R == T, InvalidArgument, "decoder: ", R, " logit rows ",
                 s.logit_rows ? "(negative)" : "without row indices (all rows: num_tokens, ", T, ")");
  if (!stream.device().is_cpu()) return issue(m, s, stream);
  // CPU: the whole step is one task of the stream; the ops it issues run inline on the stream's
  // worker (CpuStream::enqueue from the worker), so the caller's thread — Node's main thread — does
  // not queue ~15 closures per layer (0.76 ms per decode step of the issue-8 model, on the 2 cores
  // the kernels need). The model and step are copied: the task may run after this returns.
  as_cpu_stream(stream).enqueue([m, s, &stream] { issue(m, s, stream); });
}

}  // namespace pagedllm
