// Shared pieces of the binding: per-env state, JS errors from C++ errors,
// argument readers, and the wrapped native handles (type-tagged so a foreign
// object is never unwrapped as one of ours).
#pragma once

#include <napi.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "pagedllm/device.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/paged_kv.h"
#include "pagedllm/stream.h"

namespace pagedllm::addon {

// ---- promises resolved from native threads ------------------------------------

// A promise settled on the JS thread once queued work reaches it. `resolve`
// builds the value; a failure recorded on `stream` rejects instead. Native
// threads never write JS-owned memory (it vanishes with its env): results land
// in native memory that `resolve` copies out.
struct Completion {
  explicit Completion(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred deferred;
  std::shared_ptr<Stream> stream;
  std::function<Napi::Value(Napi::Env)> resolve;
};

void settle_completion(Napi::Env env, Napi::Function, void*, Completion* completion);
using CompletionQueue = Napi::TypedThreadSafeFunction<void, Completion, settle_completion>;

// The door from native threads into one env. Streams are process-wide and may
// finish work after the env that queued it is gone (a terminated worker
// thread): once `open` is false nothing is posted, so no thread touches a
// thread-safe function that Node has already freed.
struct CompletionSink {
  std::mutex mutex;
  bool open = true;
  CompletionQueue queue;
  void post(Completion* completion) {
    std::lock_guard<std::mutex> lock(mutex);
    if (open) queue.NonBlockingCall(completion);
    // else: leaked on purpose; its JS references may only be dropped on the JS thread.
  }
};

struct AddonData {
  Napi::FunctionReference error_factory;  // (code, message) => PagedLLMError, from lib/errors.ts
  Napi::FunctionReference buffer_class, stream_class, event_class, resource_class;
  std::shared_ptr<CompletionSink> sink;  // its queue is referenced only while completions are pending
  int pending = 0;
};

AddonData& addon_data(Napi::Env env);

// Returns the promise; `post` receives a thread-safe callable to run from a
// native thread when the work is done.
Napi::Promise begin_completion(Napi::Env env, Completion* completion, std::function<void(std::function<void()>)> post);

// ---- errors ----------------------------------------------------------------------

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message);
// Converts the exception being handled (pagedllm::Error, Napi::Error, bad_alloc, ...) to a JS error.
Napi::Error current_exception_to_js(Napi::Env env);
Napi::Error exception_to_js(Napi::Env env, std::exception_ptr error);

// Every exported function goes through Guard: no C++ exception escapes to
// node-addon-api (which would terminate the process on non-Napi exceptions).
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value Guard(const Napi::CallbackInfo& info) {
  try {
    return F(info);
  } catch (...) {
    throw current_exception_to_js(info.Env());
  }
}

// ---- arguments ---------------------------------------------------------------------

int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* name);
double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name);
Device arg_device(const Napi::CallbackInfo& info, size_t kind_index);
// KV-cache arguments (cache_ops.cpp): a shape object {numBlocks, numKvHeads, blockSize, headSize},
// a KvCacheDType code, and a buffer region at (i, i + 1) = (handle, byteOffset) covering `bytes`
// on the stream's device (null when `optional` and the handle is null or undefined).
KvCacheShape arg_shape(const Napi::CallbackInfo& info, size_t i);
KvCacheDType arg_kv_dtype(const Napi::CallbackInfo& info, size_t i);
char* arg_region(const Napi::CallbackInfo& info, size_t i, size_t bytes, const Stream& stream, bool optional = false);

// The wrapped object at info[i], if it carries `tag`; ERR_INVALID_ARGUMENT ("expected a native <what> handle") otherwise.
template <typename T>
T& unwrap_tagged(Napi::Env env, Napi::Value v, const napi_type_tag& tag, const char* what) {
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&tag))
    throw make_error(env, "ERR_INVALID_ARGUMENT", std::string("expected a native ") + what + " handle");
  return *T::Unwrap(v.As<Napi::Object>());
}
template <typename T>
T& unwrap_tagged(const Napi::CallbackInfo& info, size_t i, const napi_type_tag& tag, const char* what) {
  return unwrap_tagged<T>(info.Env(), info[i], tag, what);
}

// ---- handles --------------------------------------------------------------------------

class NativeStream : public Napi::ObjectWrap<NativeStream> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<Stream> stream);
  static NativeStream& From(const Napi::CallbackInfo& info, size_t i);
  explicit NativeStream(const Napi::CallbackInfo& info);
  std::shared_ptr<Stream> stream;
};

class NativeEvent : public Napi::ObjectWrap<NativeEvent> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<Event> event);
  static NativeEvent& From(const Napi::CallbackInfo& info, size_t i);
  explicit NativeEvent(const Napi::CallbackInfo& info);
  std::shared_ptr<Event> event;
};

// Device memory owned by JS. Freed (stream-ordered, on its allocation stream)
// by free() or, as a last resort, by the garbage collector.
class NativeBuffer : public Napi::ObjectWrap<NativeBuffer> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Allocate(Napi::Env env, std::shared_ptr<Stream> stream, size_t bytes, MemoryResourcePtr resource,
                               Category category);
  // Throws ERR_DISPOSED if freed, ERR_INVALID_ARGUMENT if [offset, offset+extent) is outside.
  static NativeBuffer& From(const Napi::CallbackInfo& info, size_t i, size_t offset, size_t extent);
  static NativeBuffer& From(Napi::Env env, Napi::Value v, size_t offset, size_t extent);
  explicit NativeBuffer(const Napi::CallbackInfo& info);
  void Finalize(Napi::Env env) override;
  void Free(Napi::Env env);

  char* data() const { return static_cast<char*>(ptr); }
  std::shared_ptr<Stream> stream;
  MemoryResourcePtr resource;
  Category category = Category::Other;
  void* ptr = nullptr;
  size_t bytes = 0;
  bool freed = false;
};

class NativeMemoryResource : public Napi::ObjectWrap<NativeMemoryResource> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, MemoryResourcePtr resource);
  static NativeMemoryResource& From(const Napi::CallbackInfo& info, size_t i);
  explicit NativeMemoryResource(const Napi::CallbackInfo& info);
  MemoryResourcePtr resource;
};

// A MemoryReport as a plain JS object (see lib/memory.ts for its shape).
Napi::Object report_to_js(Napi::Env env, const MemoryReport& report);

// ---- exports of each module ------------------------------------------------------------

void init_devices(Napi::Env env, Napi::Object exports);
void init_streams(Napi::Env env, Napi::Object exports);
void init_tensor_ops(Napi::Env env, Napi::Object exports);
void init_memory(Napi::Env env, Napi::Object exports);
void init_cache_ops(Napi::Env env, Napi::Object exports);
void init_attention(Napi::Env env, Napi::Object exports);
void init_model_ops(Napi::Env env, Napi::Object exports);
void init_awq(Napi::Env env, Napi::Object exports);
void init_decoder(Napi::Env env, Napi::Object exports);

}  // namespace pagedllm::addon
