// Paged attention from JS (lib/attention.ts validates shapes and metadata with
// exact messages; every pointer range is checked again here against its buffer).
#include "binding.h"
#include "pagedllm/error.h"
#include "pagedllm/paged_attention.h"

namespace pagedllm::addon {

namespace {

int64_t field_int(const Napi::Env& env, const Napi::Object& o, const char* name) {
  const Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int64_t>(d)))
    throw make_error(env, "ERR_INVALID_ARGUMENT", std::string("attention parameter ") + name + " must be a non-negative 32-bit integer");
  return static_cast<int64_t>(d);
}

float field_float(const Napi::Env& env, const Napi::Object& o, const char* name) {
  const Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw make_error(env, "ERR_INVALID_ARGUMENT", std::string("attention parameter ") + name + " must be a number");
  return static_cast<float>(v.As<Napi::Number>().DoubleValue());
}

// The by-value part of PagedAttentionArgs from a params object:
// {dtype, numTokens, numHeads, queryStride, cacheDtype, shape, maxBlocksPerSeq, numSeqs,
//  maxSeqLen, maxQueryLen, scale, slidingWindow, softcap}
PagedAttentionArgs params(const Napi::CallbackInfo& info, size_t i) {
  const Napi::Env env = info.Env();
  if (i >= info.Length() || !info[i].IsObject()) throw make_error(env, "ERR_INVALID_ARGUMENT", "expected an attention params object");
  const Napi::Object o = info[i].As<Napi::Object>();
  PagedAttentionArgs a{};
  a.dtype = dtype_from_int(static_cast<int32_t>(field_int(env, o, "dtype")));
  a.num_tokens = field_int(env, o, "numTokens");
  a.num_heads = field_int(env, o, "numHeads");
  a.query_stride = field_int(env, o, "queryStride");
  const int64_t kv = field_int(env, o, "cacheDtype");
  if (kv > 4) throw make_error(env, "ERR_INVALID_ARGUMENT", "unknown KV cache dtype " + std::to_string(kv));
  a.cache_dtype = static_cast<KvCacheDType>(kv);
  const Napi::Value shape = o.Get("shape");
  if (!shape.IsObject()) throw make_error(env, "ERR_INVALID_ARGUMENT", "attention parameter shape must be an object");
  const Napi::Object so = shape.As<Napi::Object>();
  a.shape = KvCacheShape{field_int(env, so, "numBlocks"), field_int(env, so, "numKvHeads"), field_int(env, so, "blockSize"),
                         field_int(env, so, "headSize")};
  a.max_blocks_per_seq = field_int(env, o, "maxBlocksPerSeq");
  a.num_seqs = field_int(env, o, "numSeqs");
  a.max_seq_len = field_int(env, o, "maxSeqLen");
  a.max_query_len = field_int(env, o, "maxQueryLen");
  a.scale = field_float(env, o, "scale");
  a.sliding_window = static_cast<int32_t>(field_int(env, o, "slidingWindow"));
  a.softcap = field_float(env, o, "softcap");
  return a;
}

// pagedAttentionSupports(params, deviceKind, deviceIndex) → "" or the reason
Napi::Value Supports(const Napi::CallbackInfo& info) {
  const PagedAttentionArgs a = params(info, 0);
  return Napi::String::New(info.Env(), paged_attention_unsupported(a, arg_device(info, 1)));
}

// pagedAttention(query, qOff, out, outOff, kCache, kOff, vCache, vOff, kScales|null, ksOff, vScales|null, vsOff,
//                blockTables, btOff, seqLens, slOff, cuSeqLensQ|null, cuOff, alibi|null, alibiOff, params, stream)
Napi::Value PagedAttention(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 21).stream;
  PagedAttentionArgs a = params(info, 20);
  const std::string why = paged_attention_unsupported(a, stream.device());
  if (!why.empty()) throw make_error(info.Env(), "ERR_UNSUPPORTED", "paged attention: " + why);
  const size_t es = dtype_size(a.dtype);
  const int64_t row = a.num_heads * a.shape.head_size;
  const size_t query_bytes = a.num_tokens ? static_cast<size_t>((a.num_tokens - 1) * a.query_stride + row) * es : 0;
  const size_t out_bytes = static_cast<size_t>(a.num_tokens * row) * es;
  const size_t cache_bytes = static_cast<size_t>(a.shape.elements()) * kv_dtype_size(a.cache_dtype);
  const size_t scale_bytes = static_cast<size_t>(a.shape.num_blocks * a.shape.num_kv_heads * a.shape.block_size) * 4;
  a.query = arg_region(info, 0, query_bytes, stream);
  a.out = arg_region(info, 2, out_bytes, stream);
  a.key_cache = arg_region(info, 4, cache_bytes, stream);
  a.value_cache = arg_region(info, 6, cache_bytes, stream);
  a.key_scales = reinterpret_cast<const float*>(arg_region(info, 8, scale_bytes, stream, true));
  a.value_scales = reinterpret_cast<const float*>(arg_region(info, 10, scale_bytes, stream, true));
  a.block_tables = reinterpret_cast<const int32_t*>(arg_region(info, 12, static_cast<size_t>(a.num_seqs * a.max_blocks_per_seq) * 4, stream));
  a.seq_lens = reinterpret_cast<const int32_t*>(arg_region(info, 14, static_cast<size_t>(a.num_seqs) * 4, stream));
  a.cu_seqlens_q = reinterpret_cast<const int32_t*>(arg_region(info, 16, static_cast<size_t>(a.num_seqs + 1) * 4, stream, true));
  a.alibi_slopes = reinterpret_cast<const float*>(arg_region(info, 18, static_cast<size_t>(a.num_heads) * 4, stream, true));
  paged_attention(a, stream);
  return info.Env().Undefined();
}

}  // namespace

void init_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("pagedAttention", Napi::Function::New<Guard<PagedAttention>>(env, "pagedAttention"));
  exports.Set("pagedAttentionSupports", Napi::Function::New<Guard<Supports>>(env, "pagedAttentionSupports"));
}

}  // namespace pagedllm::addon
