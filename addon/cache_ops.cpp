// KV-cache ops from JS (lib/kv-cache.ts validates with exact messages; every
// pointer range is checked again here against its buffer).
#include "binding.h"
#include "pagedllm/error.h"
#include "pagedllm/paged_kv.h"

namespace pagedllm::addon {

KvCacheShape arg_shape(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsObject())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "expected a KV cache shape object");
  Napi::Object o = info[i].As<Napi::Object>();
  auto field = [&](const char* name) {
    Napi::Value v = o.Get(name);
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d > 0 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int64_t>(d)))
      throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", std::string("shape.") + name + " must be a positive integer");
    return static_cast<int64_t>(d);
  };
  return KvCacheShape{field("numBlocks"), field("numKvHeads"), field("blockSize"), field("headSize")};
}

KvCacheDType arg_kv_dtype(const Napi::CallbackInfo& info, size_t i) {
  const int64_t v = arg_int(info, i, "cacheDtype");
  if (v > 4) throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "unknown KV cache dtype " + std::to_string(v));
  return static_cast<KvCacheDType>(v);
}

// A buffer argument at (i, i + 1) = (handle, byteOffset) covering `bytes`, or null when `optional` and absent.
char* arg_region(const Napi::CallbackInfo& info, size_t i, size_t bytes, const Stream& stream, bool optional) {
  if (optional && (info[i].IsNull() || info[i].IsUndefined())) return nullptr;
  const size_t offset = arg_int(info, i + 1, "byteOffset");
  NativeBuffer& b = NativeBuffer::From(info, i, offset, bytes);
  if (b.stream->device() != stream.device())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "buffer on " + b.stream->device().str() + " used by a stream on " + stream.device().str());
  return b.data() + offset;
}

namespace {

// writeKv(key, keyOff, value, valueOff, inputDtype, slots, slotsOff, numTokens,
//         kCache, kOff, vCache, vOff, kScales|null, ksOff, vScales|null, vsOff, cacheDtype, shape, stream)
Napi::Value WriteKv(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 18).stream;
  const DType in = dtype_from_int(static_cast<int32_t>(arg_int(info, 4, "inputDtype")));
  const int64_t tokens = arg_int(info, 7, "numTokens");
  const KvCacheDType t = arg_kv_dtype(info, 16);
  const KvCacheShape s = arg_shape(info, 17);
  const size_t input_bytes = static_cast<size_t>(tokens * s.num_kv_heads * s.head_size) * dtype_size(in);
  const size_t cache_bytes = static_cast<size_t>(s.elements()) * kv_dtype_size(t);
  const size_t scale_bytes = static_cast<size_t>(s.num_blocks * s.num_kv_heads * s.block_size) * 4;
  WriteKvArgs a{arg_region(info, 0, input_bytes, stream), arg_region(info, 2, input_bytes, stream), in,
                reinterpret_cast<const int32_t*>(arg_region(info, 5, tokens * 4, stream)), tokens,
                arg_region(info, 8, cache_bytes, stream), arg_region(info, 10, cache_bytes, stream),
                reinterpret_cast<float*>(arg_region(info, 12, scale_bytes, stream, true)),
                reinterpret_cast<float*>(arg_region(info, 14, scale_bytes, stream, true)), t, s};
  write_kv(a, stream);
  return info.Env().Undefined();
}

// copyBlocks(cache, off, scales|null, scalesOff, cacheDtype, shape, pairs: Int32Array [n, 2], stream)
Napi::Value CopyBlocks(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 7).stream;
  const KvCacheDType t = arg_kv_dtype(info, 4);
  const KvCacheShape s = arg_shape(info, 5);
  if (!info[6].IsTypedArray() || info[6].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      info[6].As<Napi::TypedArray>().ElementLength() % 2 != 0)
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "block pairs must be an Int32Array of (src, dst) pairs");
  Napi::Int32Array pairs = info[6].As<Napi::Int32Array>();
  const size_t cache_bytes = static_cast<size_t>(s.elements()) * kv_dtype_size(t);
  const size_t scale_bytes = static_cast<size_t>(s.num_blocks * s.num_kv_heads * s.block_size) * 4;
  CopyBlocksArgs a{arg_region(info, 0, cache_bytes, stream), reinterpret_cast<float*>(arg_region(info, 2, scale_bytes, stream, true)),
                   t, s, pairs.Data(), static_cast<int64_t>(pairs.ElementLength() / 2)};
  copy_blocks(a, stream);
  return info.Env().Undefined();
}

// swapBlocks(regions: [src, srcOff, dst, dstOff, blockBytes][], srcBlocks, dstBlocks, pairs: Int32Array [n, 2]).
// Every source buffer must be on one stream, every destination buffer on one stream.
Napi::Value SwapBlocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto integer = [&](Napi::Value v, const char* name) {
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<int64_t>(d)))
      throw make_error(env, "ERR_INVALID_ARGUMENT", std::string(name) + " must be a non-negative integer");
    return static_cast<int64_t>(d);
  };
  if (!info[0].IsArray()) throw make_error(env, "ERR_INVALID_ARGUMENT", "regions must be an array");
  const int64_t src_blocks = integer(info[1], "srcBlocks"), dst_blocks = integer(info[2], "dstBlocks");
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      info[3].As<Napi::TypedArray>().ElementLength() % 2 != 0)
    throw make_error(env, "ERR_INVALID_ARGUMENT", "block pairs must be an Int32Array of (src, dst) pairs");
  Napi::Int32Array pairs = info[3].As<Napi::Int32Array>();
  Napi::Array list = info[0].As<Napi::Array>();
  std::vector<SwapRegion> regions;
  std::shared_ptr<Stream> src_stream, dst_stream;
  for (uint32_t r = 0; r < list.Length(); ++r) {
    Napi::Value item = list.Get(r);
    if (!item.IsArray() || item.As<Napi::Array>().Length() != 5)
      throw make_error(env, "ERR_INVALID_ARGUMENT", "a region is [src, srcByteOffset, dst, dstByteOffset, blockBytes]");
    Napi::Array g = item.As<Napi::Array>();
    const int64_t block_bytes = integer(g.Get(4u), "blockBytes");
    if (block_bytes == 0) throw make_error(env, "ERR_INVALID_ARGUMENT", "blockBytes must be positive");
    if ((src_blocks > 0 && block_bytes > INT64_MAX / src_blocks) || (dst_blocks > 0 && block_bytes > INT64_MAX / dst_blocks))
      throw make_error(env, "ERR_INVALID_ARGUMENT", "size overflows");
    const size_t src_offset = integer(g.Get(1u), "srcByteOffset"), dst_offset = integer(g.Get(3u), "dstByteOffset");
    NativeBuffer& src = NativeBuffer::From(env, g.Get(0u), src_offset, static_cast<size_t>(src_blocks * block_bytes));
    NativeBuffer& dst = NativeBuffer::From(env, g.Get(2u), dst_offset, static_cast<size_t>(dst_blocks * block_bytes));
    if (!src_stream) src_stream = src.stream, dst_stream = dst.stream;
    if (src.stream != src_stream || dst.stream != dst_stream)
      throw make_error(env, "ERR_INVALID_ARGUMENT", "every source buffer must be on one stream, every destination buffer on one stream");
    regions.push_back({src.data() + src_offset, dst.data() + dst_offset, block_bytes});
  }
  if (regions.empty()) return env.Undefined();
  swap_blocks(SwapBlocksArgs{regions.data(), static_cast<int64_t>(regions.size()), pairs.Data(),
                             static_cast<int64_t>(pairs.ElementLength() / 2), src_blocks, dst_blocks},
              *src_stream, *dst_stream);
  return env.Undefined();
}

}  // namespace

void init_cache_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("writeKv", Napi::Function::New<Guard<WriteKv>>(env, "writeKv"));
  exports.Set("copyBlocks", Napi::Function::New<Guard<CopyBlocks>>(env, "copyBlocks"));
  exports.Set("swapBlocks", Napi::Function::New<Guard<SwapBlocks>>(env, "swapBlocks"));
}

}  // namespace pagedllm::addon
