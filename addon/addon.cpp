// Module entry: per-env state, error conversion, argument readers. No CUDA
// call happens at load time, so require() works on machines without a GPU.
#include <new>

#include "binding.h"
#include "pagedllm/error.h"
#include "pagedllm/memory_resource.h"

namespace pagedllm::addon {

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

// ---- errors ----------------------------------------------------------------------

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  AddonData& data = addon_data(env);
  if (!data.error_factory.IsEmpty()) {
    Napi::Value error = data.error_factory.Call({Napi::String::New(env, code), Napi::String::New(env, message)});
    if (error.IsObject()) return Napi::Error(env, error);
  }
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

Napi::Error exception_to_js(Napi::Env env, std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const Napi::Error& e) {
    return e;
  } catch (const OutOfMemoryError& e) {
    Napi::Error error = make_error(env, error_code_name(e.code()), e.what());
    error.Set("requested", Napi::Number::New(env, static_cast<double>(e.requested)));
    error.Set("category", Napi::String::New(env, category_name(e.category)));
    error.Set("ledger", report_to_js(env, e.ledger));
    return error;
  } catch (const Error& e) {
    return make_error(env, error_code_name(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return make_error(env, "ERR_OUT_OF_MEMORY", "out of host memory");
  } catch (const std::exception& e) {
    return make_error(env, "ERR_INTERNAL", std::string("internal error: ") + e.what());
  } catch (...) {
    return make_error(env, "ERR_INTERNAL", "internal error: unknown exception");
  }
}

Napi::Error current_exception_to_js(Napi::Env env) { return exception_to_js(env, std::current_exception()); }

// ---- completions -------------------------------------------------------------------

void settle_completion(Napi::Env env, Napi::Function, void*, Completion* completion) {
  std::unique_ptr<Completion> owned(completion);
  if (env == nullptr) return;  // env is shutting down
  AddonData& data = addon_data(env);
  if (--data.pending == 0) data.sink->queue.Unref(env);
  std::exception_ptr error = completion->stream ? completion->stream->take_error() : nullptr;
  if (error) {
    completion->deferred.Reject(exception_to_js(env, error).Value());
    return;
  }
  try {
    completion->deferred.Resolve(completion->resolve ? completion->resolve(env) : env.Undefined());
  } catch (...) {
    completion->deferred.Reject(current_exception_to_js(env).Value());
  }
}

Napi::Promise begin_completion(Napi::Env env, Completion* completion, std::function<void(std::function<void()>)> post) {
  AddonData& data = addon_data(env);
  Napi::Promise promise = completion->deferred.Promise();
  std::shared_ptr<CompletionSink> sink = data.sink;
  // Take the reference first: if post() throws, undo it and leave nothing queued.
  if (data.pending++ == 0) sink->queue.Ref(env);
  try {
    post([sink, completion] { sink->post(completion); });
  } catch (...) {
    if (--data.pending == 0) sink->queue.Unref(env);
    delete completion;
    throw;
  }
  return promise;
}

// ---- arguments -----------------------------------------------------------------------

double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const double v = arg_number(info, i, name);
  if (!(v >= 0 && v <= 9007199254740991.0) || v != static_cast<double>(static_cast<int64_t>(v)))
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", std::string(name) + " must be a non-negative safe integer");
  return static_cast<int64_t>(v);
}

Device arg_device(const Napi::CallbackInfo& info, size_t kind_index) {
  const int64_t kind = arg_int(info, kind_index, "device kind");
  const int64_t index = arg_int(info, kind_index + 1, "device index");
  if (kind > 1 || index > 1023) throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "bad device");
  if (kind == 0 && index != 0) throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "the CPU device has index 0");
  return Device{static_cast<DeviceKind>(kind), static_cast<int>(index)};
}

// ---- module ----------------------------------------------------------------------------

Napi::Object Init(Napi::Env env, Napi::Object exports);

namespace {

Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "setErrorFactory expects a function");
  addon_data(info.Env()).error_factory = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData;
  env.SetInstanceData<AddonData>(data);  // deleted (and its references released) when the env ends
  data->sink = std::make_shared<CompletionSink>();
  data->sink->queue = CompletionQueue::New(env, "pagedllm completions", 0, 1);
  data->sink->queue.Unref(env);
  env.AddCleanupHook([sink = data->sink] {
    std::lock_guard<std::mutex> lock(sink->mutex);
    sink->open = false;
    sink->queue.Abort();
  });
  exports.Set("setErrorFactory", Napi::Function::New<Guard<SetErrorFactory>>(env, "setErrorFactory"));
  init_devices(env, exports);
  init_streams(env, exports);
  init_tensor_ops(env, exports);
  init_memory(env, exports);
  init_cache_ops(env, exports);
  init_attention(env, exports);
  init_model_ops(env, exports);
  init_awq(env, exports);
  init_decoder(env, exports);
  return exports;
}

}  // namespace pagedllm::addon

namespace {
Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return pagedllm::addon::Init(env, exports); }
}  // namespace

NODE_API_MODULE(pagedllm, InitModule)
