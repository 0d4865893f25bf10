// Stream and event handles and their functions.
#include "binding.h"
#include "pagedllm/error.h"

namespace pagedllm::addon {

namespace {
// Type tags: random 128-bit values, one per handle class.
constexpr napi_type_tag kStreamTag = {0x6d2b6b0f6e2a4c11ULL, 0x9a1f5c4e8b7d3a21ULL};
constexpr napi_type_tag kEventTag = {0x1c8e4a7b5d3f2e60ULL, 0x7b2d9e1a4c6f8b32ULL};

void reject_js_construction(const Napi::CallbackInfo& info, const char* what) {
  if (info.Length() < 1 || !info[0].IsExternal())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", std::string(what) + " handles are created by pagedllm only");
}
}  // namespace

// ---- NativeStream ------------------------------------------------------------------

Napi::Function NativeStream::Define(Napi::Env env) { return DefineClass(env, "NativeStream", {}); }

NativeStream::NativeStream(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeStream>(info) {
  reject_js_construction(info, "stream");
  stream = *info[0].As<Napi::External<std::shared_ptr<Stream>>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kStreamTag);
}

Napi::Object NativeStream::Wrap(Napi::Env env, std::shared_ptr<Stream> stream) {
  auto external = Napi::External<std::shared_ptr<Stream>>::New(env, &stream);
  return addon_data(env).stream_class.New({external});  // the constructor copies the shared_ptr
}

NativeStream& NativeStream::From(const Napi::CallbackInfo& info, size_t i) {
  return unwrap_tagged<NativeStream>(info, i, kStreamTag, "stream");
}

// ---- NativeEvent -------------------------------------------------------------------

Napi::Function NativeEvent::Define(Napi::Env env) { return DefineClass(env, "NativeEvent", {}); }

NativeEvent::NativeEvent(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeEvent>(info) {
  reject_js_construction(info, "event");
  event = *info[0].As<Napi::External<std::shared_ptr<Event>>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kEventTag);
}

Napi::Object NativeEvent::Wrap(Napi::Env env, std::shared_ptr<Event> event) {
  auto external = Napi::External<std::shared_ptr<Event>>::New(env, &event);
  return addon_data(env).event_class.New({external});
}

NativeEvent& NativeEvent::From(const Napi::CallbackInfo& info, size_t i) {
  return unwrap_tagged<NativeEvent>(info, i, kEventTag, "event");
}

// ---- functions -----------------------------------------------------------------------

namespace {

Napi::Value DefaultStream(const Napi::CallbackInfo& info) {
  return NativeStream::Wrap(info.Env(), default_stream(arg_device(info, 0)));
}

Napi::Value CreateStream(const Napi::CallbackInfo& info) {
  return NativeStream::Wrap(info.Env(), create_stream(arg_device(info, 0)));
}

// Resolves once all work queued on the stream so far has run; rejects with the
// stream's first failure.
Napi::Value StreamSynchronize(const Napi::CallbackInfo& info) {
  std::shared_ptr<Stream> stream = NativeStream::From(info, 0).stream;
  auto* completion = new Completion(info.Env());
  completion->stream = stream;
  return begin_completion(info.Env(), completion,
                          [stream](std::function<void()> notify) { stream->enqueue_host(std::move(notify)); });
}

Napi::Value StreamRecord(const Napi::CallbackInfo& info) {
  return NativeEvent::Wrap(info.Env(), NativeStream::From(info, 0).stream->record());
}

Napi::Value StreamWait(const Napi::CallbackInfo& info) {
  NativeStream& stream = NativeStream::From(info, 0);
  stream.stream->wait(NativeEvent::From(info, 1).event);
  return info.Env().Undefined();
}

Napi::Value EventQuery(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), NativeEvent::From(info, 0).event->query());
}

// Waits on a libuv pool thread: event waits are rare (stream waits use the stream).
class EventSyncWorker : public Napi::AsyncWorker {
 public:
  EventSyncWorker(Napi::Env env, std::shared_ptr<Event> event)
      : Napi::AsyncWorker(env), event_(std::move(event)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      event_->synchronize();
    } catch (...) {
      error_ = std::current_exception();
    }
  }
  void OnOK() override {
    if (error_) deferred_.Reject(exception_to_js(Env(), error_).Value());
    else deferred_.Resolve(Env().Undefined());
  }

 private:
  std::shared_ptr<Event> event_;
  Napi::Promise::Deferred deferred_;
  std::exception_ptr error_;
};

Napi::Value EventSynchronize(const Napi::CallbackInfo& info) {
  auto* worker = new EventSyncWorker(info.Env(), NativeEvent::From(info, 0).event);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace

void init_streams(Napi::Env env, Napi::Object exports) {
  AddonData& data = addon_data(env);
  data.stream_class = Napi::Persistent(NativeStream::Define(env));
  data.event_class = Napi::Persistent(NativeEvent::Define(env));
  exports.Set("defaultStream", Napi::Function::New<Guard<DefaultStream>>(env, "defaultStream"));
  exports.Set("createStream", Napi::Function::New<Guard<CreateStream>>(env, "createStream"));
  exports.Set("streamSynchronize", Napi::Function::New<Guard<StreamSynchronize>>(env, "streamSynchronize"));
  exports.Set("streamRecord", Napi::Function::New<Guard<StreamRecord>>(env, "streamRecord"));
  exports.Set("streamWait", Napi::Function::New<Guard<StreamWait>>(env, "streamWait"));
  exports.Set("eventQuery", Napi::Function::New<Guard<EventQuery>>(env, "eventQuery"));
  exports.Set("eventSynchronize", Napi::Function::New<Guard<EventSynchronize>>(env, "eventSynchronize"));
}

}  // namespace pagedllm::addon
