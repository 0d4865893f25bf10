// The native decoder step (include/pagedllm/decoder.h) from JS. lib/model.ts validates the model
// and the batch; here every buffer range is checked against its buffer once more (weights when
// the decoder is built, the step's buffers on every call), and the ops check their arguments.
#include <memory>
#include <string>

#include "binding.h"
#include "pagedllm/decoder.h"
#include "pagedllm/error.h"

namespace pagedllm::addon {

namespace {

constexpr napi_type_tag kDecoderTag = {0x4e7a1c3b9d2f5a86ULL, 0x1b8d6e3f2a9c7e45ULL};

DecoderModel& unwrap_decoder(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsExternal() || !info[i].As<Napi::External<DecoderModel>>().CheckTypeTag(&kDecoderTag))
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "expected a native decoder handle");
  return *info[i].As<Napi::External<DecoderModel>>().Data();
}

DType arg_dtype(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return dtype_from_int(static_cast<int32_t>(arg_int(info, i, name)));
}

size_t bytes_of(int64_t elements, DType t) { return static_cast<size_t>(elements) * dtype_size(t); }

// createDecoder(stream, hidden, heads, kvHeads, headSize, intermediate, vocab, numLayers, dtype, embedDtype,
//               finalNormDtype, lmHeadDtype, rotaryDim, slidingWindow, eps, attentionScale,
//               embed, off, finalNorm, off, lmHead, off, invFreq, off) → decoder
Napi::Value CreateDecoder(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 0).stream;
  auto m = std::make_unique<DecoderModel>();
  m->hidden_size = arg_int(info, 1, "hidden");
  m->num_heads = arg_int(info, 2, "heads");
  m->num_kv_heads = arg_int(info, 3, "kvHeads");
  m->head_size = arg_int(info, 4, "headSize");
  m->intermediate_size = arg_int(info, 5, "intermediate");
  m->vocab_size = arg_int(info, 6, "vocab");
  const int64_t layers = arg_int(info, 7, "numLayers");
  m->dtype = arg_dtype(info, 8, "dtype");
  m->embed_dtype = arg_dtype(info, 9, "embedDtype");
  m->final_norm_dtype = arg_dtype(info, 10, "finalNormDtype");
  m->lm_head_dtype = arg_dtype(info, 11, "lmHeadDtype");
  m->rotary_dim = arg_int(info, 12, "rotaryDim");
  m->sliding_window = static_cast<int32_t>(arg_int(info, 13, "slidingWindow"));
  m->rms_norm_eps = static_cast<float>(arg_number(info, 14, "eps"));
  m->attention_scale = static_cast<float>(arg_number(info, 15, "attentionScale"));
  const int64_t H = m->hidden_size;
  m->embed = arg_region(info, 16, bytes_of(m->vocab_size * H, m->embed_dtype), stream);
  m->final_norm = arg_region(info, 18, bytes_of(H, m->final_norm_dtype), stream);
  m->lm_head = arg_region(info, 20, bytes_of(m->vocab_size * H, m->lm_head_dtype), stream);
  m->inv_freq = reinterpret_cast<const float*>(arg_region(info, 22, static_cast<size_t>(m->rotary_dim / 2) * 4, stream));
  m->layers.assign(static_cast<size_t>(layers), DecoderLayer{});
  Napi::External<DecoderModel> handle =
      Napi::External<DecoderModel>::New(info.Env(), m.release(), [](Napi::Env, DecoderModel* p) { delete p; });
  handle.TypeTag(&kDecoderTag);
  return handle;
}

// One projection at info[i..]: kind (0 float, 1 AWQ, 2 AWQ with qweight in the slab8 layout),
// weightDtype, groupSize, biasDtype, then the regions weight|null, qweight|null, qzeros|null,
// scales|null, bias|null (14 arguments).
DecoderProjection arg_projection(const Napi::CallbackInfo& info, size_t i, int64_t N, int64_t K, const Stream& stream) {
  DecoderProjection p;
  const int64_t kind = arg_int(info, i, "kind");
  p.is_awq = kind == 1 || kind == 2;
  p.weight_dtype = arg_dtype(info, i + 1, "weightDtype");
  const int64_t G = arg_int(info, i + 2, "groupSize");
  p.bias_dtype = arg_dtype(info, i + 3, "biasDtype");
  if (p.is_awq) {
    if (G <= 0 || K % G != 0 || N % 8 != 0) throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "decoder: bad AWQ projection shape");
    p.awq.in_features = K;
    p.awq.out_features = N;
    p.awq.group_size = G;
    p.awq.layout = kind == 2 ? AwqLayout::Slab8 : AwqLayout::AutoAwq;
    check_awq_weight(p.awq, "decoder");
    p.awq.qweight = reinterpret_cast<const int32_t*>(arg_region(info, i + 6, static_cast<size_t>(K * (N / 8)) * 4, stream));
    p.awq.qzeros = reinterpret_cast<const int32_t*>(arg_region(info, i + 8, static_cast<size_t>((K / G) * (N / 8)) * 4, stream));
    p.awq.scales = reinterpret_cast<const uint16_t*>(arg_region(info, i + 10, static_cast<size_t>((K / G) * N) * 2, stream));
  } else {
    p.weight = arg_region(info, i + 4, bytes_of(N * K, p.weight_dtype), stream);
  }
  p.bias = arg_region(info, i + 12, bytes_of(N, p.bias_dtype), stream, true);
  return p;
}

// decoderSetLayer(decoder, stream, layer, normDtype, inputNorm, off, postNorm, off, q…, k…, v…, o…, gate…, up…, down…)
Napi::Value DecoderSetLayer(const Napi::CallbackInfo& info) {
  DecoderModel& m = unwrap_decoder(info, 0);
  Stream& stream = *NativeStream::From(info, 1).stream;
  const int64_t l = arg_int(info, 2, "layer");
  if (l >= static_cast<int64_t>(m.layers.size())) throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "decoder: layer out of range");
  const int64_t H = m.hidden_size, Q = m.num_heads * m.head_size, KV = m.num_kv_heads * m.head_size, I = m.intermediate_size;
  DecoderLayer w{};
  w.norm_dtype = arg_dtype(info, 3, "normDtype");
  w.input_norm = arg_region(info, 4, bytes_of(H, w.norm_dtype), stream);
  w.post_norm = arg_region(info, 6, bytes_of(H, w.norm_dtype), stream);
  size_t i = 8;
  auto next = [&](int64_t N, int64_t K) {
    DecoderProjection p = arg_projection(info, i, N, K, stream);
    i += 14;
    return p;
  };
  w.q = next(Q, H);
  w.k = next(KV, H);
  w.v = next(KV, H);
  w.o = next(H, Q);
  w.gate = next(I, H);
  w.up = next(I, H);
  w.down = next(H, I);
  m.layers[static_cast<size_t>(l)] = w;
  return info.Env().Undefined();
}

// decoderWorkspaceBytes(decoder, numTokens, numLogitRows) → bytes
Napi::Value DecoderWorkspaceBytes(const Napi::CallbackInfo& info) {
  const DecoderModel& m = unwrap_decoder(info, 0);
  return Napi::Number::New(info.Env(), static_cast<double>(decoder_workspace_bytes(m, arg_int(info, 1, "numTokens"),
                                                                                    arg_int(info, 2, "numLogitRows"))));
}

// decoderForward(decoder, stream, numTokens, numSeqs, maxBlocksPerSeq, maxSeqLen, maxQueryLen, numLogitRows,
//                cacheDtype, shape, ids, off, positions, off, slots, off, blockTables, off, seqLens, off,
//                cuSeqLensQ|null, off, logitRows|null (null: all numTokens rows), off, workspace, off, logits, off,
//                then per layer: key, off, value, off, keyScales|null, off, valueScales|null, off)
// The step of decoderForward's arguments from info[b] on (b = 0 there; 1 for decoderGraphForward,
// whose runner comes first). workspace: whether the step carries its own (the runner has its own).
DecoderStep read_step(const Napi::CallbackInfo& info, size_t b, const DecoderModel& m, Stream& stream, bool workspace) {
  DecoderStep s{};
  s.num_tokens = arg_int(info, b + 2, "numTokens");
  s.num_seqs = arg_int(info, b + 3, "numSeqs");
  s.max_blocks_per_seq = arg_int(info, b + 4, "maxBlocksPerSeq");
  s.max_seq_len = arg_int(info, b + 5, "maxSeqLen");
  s.max_query_len = arg_int(info, b + 6, "maxQueryLen");
  const int64_t rows = arg_int(info, b + 7, "numLogitRows");
  s.cache_dtype = arg_kv_dtype(info, b + 8);
  s.cache_shape = arg_shape(info, b + 9);
  const int64_t T = s.num_tokens;
  auto ints = [&](size_t i, int64_t n, bool optional = false) {
    return reinterpret_cast<const int32_t*>(arg_region(info, b + i, static_cast<size_t>(n) * 4, stream, optional));
  };
  s.token_ids = ints(10, T);
  s.positions = ints(12, T);
  s.slot_mapping = ints(14, T);
  s.block_tables = ints(16, s.num_seqs * s.max_blocks_per_seq);
  s.seq_lens = ints(18, s.num_seqs);
  s.cu_seqlens_q = ints(20, s.num_seqs + 1, true);
  s.logit_rows = ints(22, rows, true);
  s.num_logit_rows = rows;
  s.workspace = workspace ? arg_region(info, b + 24, decoder_workspace_bytes(m, T, s.num_logit_rows), stream) : nullptr;
  s.logits = reinterpret_cast<float*>(arg_region(info, b + 26, static_cast<size_t>(s.num_logit_rows * m.vocab_size) * 4, stream));
  const size_t cache_bytes = static_cast<size_t>(s.cache_shape.elements()) * kv_dtype_size(s.cache_dtype);
  const size_t scale_bytes = static_cast<size_t>(s.cache_shape.num_blocks * s.cache_shape.num_kv_heads * s.cache_shape.block_size) * 4;
  if (info.Length() != b + 28 + 8 * m.layers.size())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "decoder: expected the cache of " + std::to_string(m.layers.size()) + " layers");
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const size_t i = b + 28 + 8 * l;
    s.cache.push_back(DecoderCacheLayer{arg_region(info, i, cache_bytes, stream), arg_region(info, i + 2, cache_bytes, stream),
                                        reinterpret_cast<float*>(arg_region(info, i + 4, scale_bytes, stream, true)),
                                        reinterpret_cast<float*>(arg_region(info, i + 6, scale_bytes, stream, true))});
  }
  return s;
}

Napi::Value DecoderForward(const Napi::CallbackInfo& info) {
  const DecoderModel& m = unwrap_decoder(info, 0);
  Stream& stream = *NativeStream::From(info, 1).stream;
  decoder_forward(m, read_step(info, 0, m, stream, true), stream);
  return info.Env().Undefined();
}

constexpr napi_type_tag kGraphsTag = {0x2c6f1e9a7b3d5c18ULL, 0x94e2b7a1d6c3f805ULL};

// The runner behind a JS handle; null once disposed.
struct GraphsHandle {
  std::unique_ptr<DecoderGraphRunner> runner;
};

GraphsHandle& unwrap_graphs(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsExternal() || !info[i].As<Napi::External<GraphsHandle>>().CheckTypeTag(&kGraphsTag))
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "expected a native decoder-graphs handle");
  return *info[i].As<Napi::External<GraphsHandle>>().Data();
}

// createDecoderGraphs(decoder, stream, maxBatch, maxBlocksPerSeq, capture) → graphs
Napi::Value CreateDecoderGraphs(const Napi::CallbackInfo& info) {
  const DecoderModel& m = unwrap_decoder(info, 0);
  Stream& stream = *NativeStream::From(info, 1).stream;
  auto handle = std::make_unique<GraphsHandle>();
  handle->runner = create_decoder_graph_runner(m, stream, arg_int(info, 2, "maxBatch"), arg_int(info, 3, "maxBlocksPerSeq"),
                                               info.Length() > 4 && info[4].ToBoolean().Value());
  Napi::External<GraphsHandle> out =
      Napi::External<GraphsHandle>::New(info.Env(), handle.release(), [](Napi::Env, GraphsHandle* p) { delete p; });
  out.TypeTag(&kGraphsTag);
  return out;
}

// decoderGraphForward(graphs, decoder, stream, then decoderForward's arguments from numTokens on;
// the workspace region is not read: pass null, 0)
Napi::Value DecoderGraphForward(const Napi::CallbackInfo& info) {
  GraphsHandle& g = unwrap_graphs(info, 0);
  if (!g.runner) throw make_error(info.Env(), "ERR_DISPOSED", "decoder graphs: disposed");
  const DecoderModel& m = unwrap_decoder(info, 1);
  Stream& stream = *NativeStream::From(info, 2).stream;
  g.runner->forward(read_step(info, 1, m, stream, false));
  return info.Env().Undefined();
}

// decoderGraphStats(graphs) → { captures, replays, eagerSteps, failures, graphs, bufferBytes, arenaBytes }
Napi::Value DecoderGraphStatsOf(const Napi::CallbackInfo& info) {
  GraphsHandle& g = unwrap_graphs(info, 0);
  Napi::Object out = Napi::Object::New(info.Env());
  const DecoderGraphStats s = g.runner ? g.runner->stats() : DecoderGraphStats{};
  out.Set("captures", static_cast<double>(s.captures));
  out.Set("replays", static_cast<double>(s.replays));
  out.Set("eagerSteps", static_cast<double>(s.eager_steps));
  out.Set("failures", static_cast<double>(s.failures));
  out.Set("graphs", static_cast<double>(s.graphs));
  out.Set("bufferBytes", static_cast<double>(s.buffer_bytes));
  out.Set("arenaBytes", static_cast<double>(s.arena_bytes));
  return out;
}

// decoderGraphsDispose(graphs): graphs destroyed, buffers back to the pool (stream-ordered). Idempotent.
Napi::Value DecoderGraphsDispose(const Napi::CallbackInfo& info) {
  unwrap_graphs(info, 0).runner.reset();
  return info.Env().Undefined();
}

}  // namespace

void init_decoder(Napi::Env env, Napi::Object exports) {
  exports.Set("createDecoder", Napi::Function::New<Guard<CreateDecoder>>(env, "createDecoder"));
  exports.Set("decoderSetLayer", Napi::Function::New<Guard<DecoderSetLayer>>(env, "decoderSetLayer"));
  exports.Set("decoderWorkspaceBytes", Napi::Function::New<Guard<DecoderWorkspaceBytes>>(env, "decoderWorkspaceBytes"));
  exports.Set("decoderForward", Napi::Function::New<Guard<DecoderForward>>(env, "decoderForward"));
  exports.Set("createDecoderGraphs", Napi::Function::New<Guard<CreateDecoderGraphs>>(env, "createDecoderGraphs"));
  exports.Set("decoderGraphForward", Napi::Function::New<Guard<DecoderGraphForward>>(env, "decoderGraphForward"));
  exports.Set("decoderGraphStats", Napi::Function::New<Guard<DecoderGraphStatsOf>>(env, "decoderGraphStats"));
  exports.Set("decoderGraphsDispose", Napi::Function::New<Guard<DecoderGraphsDispose>>(env, "decoderGraphsDispose"));
}

}  // namespace pagedllm::addon
