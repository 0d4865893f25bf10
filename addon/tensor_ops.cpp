// Buffers and the tensor ops of tensor_ops.h. TS validates with exact
// messages; here every pointer range is checked again against its buffer.
#include <algorithm>
#include <cstring>

#include "binding.h"
#include "pagedllm/error.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm::addon {

namespace {
constexpr napi_type_tag kBufferTag = {0x3f9a2c7e1b5d4e83ULL, 0x5e7c1a9b3d2f4a64ULL};
// V8 takes external-memory adjustments best in moderate steps.
constexpr int64_t kMaxAdjustStep = int64_t(512) << 20;

void adjust_external_memory(Napi::Env env, int64_t change) {
  while (change != 0) {
    const int64_t step = std::clamp(change, -kMaxAdjustStep, kMaxAdjustStep);
    Napi::MemoryManagement::AdjustExternalMemory(env, step);
    change -= step;
  }
}
}  // namespace

// ---- NativeBuffer ------------------------------------------------------------------

Napi::Function NativeBuffer::Define(Napi::Env env) { return DefineClass(env, "NativeBuffer", {}); }

NativeBuffer::NativeBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeBuffer>(info) {
  if (info.Length() < 1 || !info[0].IsExternal())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "buffer handles are created by pagedllm only");
  info.This().As<Napi::Object>().TypeTag(&kBufferTag);
}

Napi::Object NativeBuffer::Allocate(Napi::Env env, std::shared_ptr<Stream> stream, size_t bytes, MemoryResourcePtr resource,
                                   Category category) {
  if (resource->device() != stream->device())
    throw make_error(env, "ERR_INVALID_ARGUMENT",
                     "memory resource on " + resource->device().str() + " used with a stream on " + stream->device().str());
  void* ptr = resource->allocate(bytes, *stream, category);
  Napi::Object object;
  try {
    object = addon_data(env).buffer_class.New({Napi::External<void>::New(env, nullptr)});
  } catch (...) {
    resource->deallocate(ptr, bytes, *stream, category);
    throw;
  }
  NativeBuffer* buffer = Unwrap(object);
  buffer->stream = std::move(stream);
  buffer->resource = std::move(resource);
  buffer->category = category;
  buffer->ptr = ptr;
  buffer->bytes = bytes;
  adjust_external_memory(env, static_cast<int64_t>(bytes));
  return object;
}

void NativeBuffer::Free(Napi::Env env) {
  if (freed) return;
  freed = true;
  if (resource) resource->deallocate(ptr, bytes, *stream, category);
  adjust_external_memory(env, -static_cast<int64_t>(bytes));
  ptr = nullptr;
}

void NativeBuffer::Finalize(Napi::Env env) {
  try {
    Free(env);
  } catch (...) {
    // A failing free during GC has nobody to report to; the memory is lost.
  }
}

NativeBuffer& NativeBuffer::From(const Napi::CallbackInfo& info, size_t i, size_t offset, size_t extent) {
  return From(info.Env(), info[i], offset, extent);
}

NativeBuffer& NativeBuffer::From(Napi::Env env, Napi::Value v, size_t offset, size_t extent) {
  NativeBuffer& buffer = unwrap_tagged<NativeBuffer>(env, v, kBufferTag, "buffer");
  if (buffer.freed) throw make_error(env, "ERR_DISPOSED", "the tensor's memory has been released");
  if (offset > buffer.bytes || extent > buffer.bytes - offset)
    throw make_error(env, "ERR_INVALID_ARGUMENT",
                     "range [" + std::to_string(offset) + ", " + std::to_string(offset + extent) +
                         ") is outside a buffer of " + std::to_string(buffer.bytes) + " bytes");
  return buffer;
}

// ---- functions ------------------------------------------------------------------------

namespace {

DType arg_dtype(const Napi::CallbackInfo& info, size_t i) {
  return dtype_from_int(static_cast<int32_t>(arg_int(info, i, "dtype")));
}

size_t checked_mul(Napi::Env env, size_t a, size_t b) {
  if (b != 0 && a > SIZE_MAX / b) throw make_error(env, "ERR_INVALID_ARGUMENT", "size overflows");
  return a * b;
}

void require_same_device(Napi::Env env, const NativeBuffer& buffer, const Stream& stream) {
  if (buffer.stream->device() != stream.device())
    throw make_error(env, "ERR_INVALID_ARGUMENT",
                     "buffer on " + buffer.stream->device().str() + " used by a stream on " + stream.device().str());
}

// allocate(stream, bytes, resource?, category?) -> buffer (default: the device's default resource, "other")
Napi::Value Allocate(const Napi::CallbackInfo& info) {
  std::shared_ptr<Stream> stream = NativeStream::From(info, 0).stream;
  const size_t bytes = static_cast<size_t>(arg_int(info, 1, "bytes"));
  MemoryResourcePtr resource = info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()
                                   ? NativeMemoryResource::From(info, 2).resource
                                   : default_memory_resource(stream->device());
  const Category category = info.Length() > 3 && !info[3].IsUndefined()
                                ? category_from_int(static_cast<int32_t>(arg_int(info, 3, "category")))
                                : Category::Other;
  return NativeBuffer::Allocate(info.Env(), stream, bytes, std::move(resource), category);
}

// free(buffer): idempotent.
Napi::Value Free(const Napi::CallbackInfo& info) {
  unwrap_tagged<NativeBuffer>(info, 0, kBufferTag, "buffer").Free(info.Env());
  return info.Env().Undefined();
}

// fill(buffer, byteOffset, dtype, n, value, stream)
Napi::Value Fill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const size_t offset = arg_int(info, 1, "byteOffset");
  const DType dtype = arg_dtype(info, 2);
  const size_t n = arg_int(info, 3, "n");
  const double value = arg_number(info, 4, "value");
  NativeBuffer& dst = NativeBuffer::From(info, 0, offset, checked_mul(env, n, dtype_size(dtype)));
  Stream& stream = *NativeStream::From(info, 5).stream;
  require_same_device(env, dst, stream);
  fill(dst.data() + offset, dtype, n, value, stream);
  return env.Undefined();
}

// cast(src, srcByteOffset, srcDtype, dst, dstByteOffset, dstDtype, n, stream)
Napi::Value Cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType src_dtype = arg_dtype(info, 2), dst_dtype = arg_dtype(info, 5);
  const size_t n = arg_int(info, 6, "n");
  NativeBuffer& src = NativeBuffer::From(info, 0, arg_int(info, 1, "srcByteOffset"), checked_mul(env, n, dtype_size(src_dtype)));
  NativeBuffer& dst = NativeBuffer::From(info, 3, arg_int(info, 4, "dstByteOffset"), checked_mul(env, n, dtype_size(dst_dtype)));
  Stream& stream = *NativeStream::From(info, 7).stream;
  require_same_device(env, src, stream);
  require_same_device(env, dst, stream);
  cast(src.data() + arg_int(info, 1, "srcByteOffset"), src_dtype, dst.data() + arg_int(info, 4, "dstByteOffset"),
       dst_dtype, n, stream);
  return env.Undefined();
}

// copyStrided(src, srcByteOffset, elemSize, shape[], strides[], dst, dstByteOffset, stream)
Napi::Value CopyStrided(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const size_t src_offset = arg_int(info, 1, "srcByteOffset");
  const size_t elem_size = arg_int(info, 2, "elemSize");
  if (!info[3].IsArray() || !info[4].IsArray())
    throw make_error(env, "ERR_INVALID_ARGUMENT", "shape and strides must be arrays");
  Napi::Array shape = info[3].As<Napi::Array>(), strides = info[4].As<Napi::Array>();
  if (shape.Length() != strides.Length() || shape.Length() > static_cast<uint32_t>(kMaxDims))
    throw make_error(env, "ERR_INVALID_ARGUMENT", "shape and strides must have the same length, at most 8");
  StridedLayout layout;
  layout.ndim = static_cast<int>(shape.Length());
  size_t total = 1, span = 1;  // span: elements from the first to one past the last read
  auto dimension = [&](Napi::Value v) -> int64_t {
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<int64_t>(d)))
      throw make_error(env, "ERR_INVALID_ARGUMENT", "shape and strides must be non-negative integers");
    return static_cast<int64_t>(d);
  };
  for (uint32_t d = 0; d < shape.Length(); ++d) {
    layout.shape[d] = dimension(shape.Get(d));
    layout.strides[d] = dimension(strides.Get(d));
    total = checked_mul(env, total, static_cast<size_t>(layout.shape[d]));
  }
  if (total == 0) return env.Undefined();
  for (int d = 0; d < layout.ndim; ++d) {
    const size_t reach = checked_mul(env, static_cast<size_t>(layout.shape[d] - 1), static_cast<size_t>(layout.strides[d]));
    if (span > SIZE_MAX - reach) throw make_error(env, "ERR_INVALID_ARGUMENT", "size overflows");
    span += reach;
  }
  NativeBuffer& src = NativeBuffer::From(info, 0, src_offset, checked_mul(env, span, elem_size));
  const size_t dst_offset = arg_int(info, 6, "dstByteOffset");
  NativeBuffer& dst = NativeBuffer::From(info, 5, dst_offset, checked_mul(env, total, elem_size));
  Stream& stream = *NativeStream::From(info, 7).stream;
  require_same_device(env, src, stream);
  require_same_device(env, dst, stream);
  copy_strided(src.data() + src_offset, layout, elem_size, dst.data() + dst_offset, stream);
  return env.Undefined();
}

// copy(src, srcByteOffset, dst, dstByteOffset, bytes): across devices and streams,
// ordered after prior work on both buffers' streams.
Napi::Value Copy(const Napi::CallbackInfo& info) {
  const size_t bytes = arg_int(info, 4, "bytes");
  const size_t src_offset = arg_int(info, 1, "srcByteOffset"), dst_offset = arg_int(info, 3, "dstByteOffset");
  NativeBuffer& src = NativeBuffer::From(info, 0, src_offset, bytes);
  NativeBuffer& dst = NativeBuffer::From(info, 2, dst_offset, bytes);
  copy_bytes(src.data() + src_offset, *src.stream, dst.data() + dst_offset, *dst.stream, bytes);
  return info.Env().Undefined();
}

// upload(typedArray, dst, dstByteOffset): the typed array's bytes are taken now.
Napi::Value Upload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray())
    throw make_error(env, "ERR_INVALID_ARGUMENT", "upload expects a typed array");
  Napi::TypedArray array = info[0].As<Napi::TypedArray>();
  const size_t bytes = array.ByteLength();
  const size_t offset = arg_int(info, 2, "dstByteOffset");
  NativeBuffer& dst = NativeBuffer::From(info, 1, offset, bytes);
  const char* host = static_cast<const char*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  upload(host, dst.data() + offset, bytes, *dst.stream);
  return env.Undefined();
}

// download(src, srcByteOffset, bytes) -> Promise<ArrayBuffer>, in the order of src's stream.
// The stream writes native memory; the JS thread copies it into a new ArrayBuffer.
Napi::Value Download(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const size_t offset = arg_int(info, 1, "srcByteOffset");
  const size_t bytes = arg_int(info, 2, "bytes");
  NativeBuffer& src = NativeBuffer::From(info, 0, offset, bytes);
  std::shared_ptr<char[]> host(new char[bytes > 0 ? bytes : 1]);
  auto* completion = new Completion(env);
  completion->stream = src.stream;
  completion->resolve = [host, bytes](Napi::Env env) -> Napi::Value {
    Napi::ArrayBuffer out = Napi::ArrayBuffer::New(env, bytes);
    if (bytes) std::memcpy(out.Data(), host.get(), bytes);
    return out;
  };
  std::shared_ptr<Stream> stream = src.stream;
  const char* from = src.data() + offset;
  return begin_completion(env, completion, [stream, from, host, bytes](std::function<void()> notify) {
    // `host` is captured by the queued work too: it outlives a completion that is never settled.
    download(from, host.get(), bytes, *stream, [host, notify = std::move(notify)] { notify(); });
  });
}

}  // namespace

void init_tensor_ops(Napi::Env env, Napi::Object exports) {
  addon_data(env).buffer_class = Napi::Persistent(NativeBuffer::Define(env));
  exports.Set("allocate", Napi::Function::New<Guard<Allocate>>(env, "allocate"));
  exports.Set("free", Napi::Function::New<Guard<Free>>(env, "free"));
  exports.Set("fill", Napi::Function::New<Guard<Fill>>(env, "fill"));
  exports.Set("cast", Napi::Function::New<Guard<Cast>>(env, "cast"));
  exports.Set("copyStrided", Napi::Function::New<Guard<CopyStrided>>(env, "copyStrided"));
  exports.Set("copy", Napi::Function::New<Guard<Copy>>(env, "copy"));
  exports.Set("upload", Napi::Function::New<Guard<Upload>>(env, "upload"));
  exports.Set("download", Napi::Function::New<Guard<Download>>(env, "download"));
}

}  // namespace pagedllm::addon
