// Memory resources from JS: create, report, trim; and the native timing loops
// of benchmarks/allocators.bench.ts (per-call figures without N-API overhead).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "binding.h"
#include "pagedllm/error.h"

namespace pagedllm::addon {

namespace {
constexpr napi_type_tag kResourceTag = {0x8c4f2e1a7b3d5c90ULL, 0x2a6e9d1c4b7f3e55ULL};
}

// ---- NativeMemoryResource ------------------------------------------------------------

Napi::Function NativeMemoryResource::Define(Napi::Env env) { return DefineClass(env, "NativeMemoryResource", {}); }

NativeMemoryResource::NativeMemoryResource(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeMemoryResource>(info) {
  if (info.Length() < 1 || !info[0].IsExternal())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", "memory resource handles are created by pagedllm only");
  resource = *info[0].As<Napi::External<MemoryResourcePtr>>().Data();
  info.This().As<Napi::Object>().TypeTag(&kResourceTag);
}

Napi::Object NativeMemoryResource::Wrap(Napi::Env env, MemoryResourcePtr resource) {
  auto external = Napi::External<MemoryResourcePtr>::New(env, &resource);
  return addon_data(env).resource_class.New({external});
}

NativeMemoryResource& NativeMemoryResource::From(const Napi::CallbackInfo& info, size_t i) {
  return unwrap_tagged<NativeMemoryResource>(info, i, kResourceTag, "memory resource");
}

// ---- reports --------------------------------------------------------------------------

namespace {
Napi::Object usage_to_js(Napi::Env env, const UsageCounters& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("current", static_cast<double>(c.current_bytes));
  o.Set("peak", static_cast<double>(c.peak_bytes));
  o.Set("total", static_cast<double>(c.total_bytes));
  o.Set("count", static_cast<double>(c.current_count));
  o.Set("peakCount", static_cast<double>(c.peak_count));
  o.Set("totalCount", static_cast<double>(c.total_count));
  return o;
}
}  // namespace

Napi::Object report_to_js(Napi::Env env, const MemoryReport& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("kind", r.kind);
  o.Set("device", r.device.str());
  if (r.has_usage) {
    Napi::Object categories = Napi::Object::New(env);
    for (int c = 0; c < kNumCategories; ++c)
      categories.Set(category_name(static_cast<Category>(c)), usage_to_js(env, r.by_category[c]));
    o.Set("categories", categories);
    o.Set("total", usage_to_js(env, r.total));
  } else {
    o.Set("categories", env.Null());
    o.Set("total", env.Null());
  }
  if (r.has_pool) {
    Napi::Object pool = Napi::Object::New(env);
    pool.Set("reserved", static_cast<double>(r.pool_reserved));
    pool.Set("peakReserved", static_cast<double>(r.pool_peak_reserved));
    pool.Set("inUse", static_cast<double>(r.pool_in_use));
    pool.Set("peakInUse", static_cast<double>(r.pool_peak_in_use));
    pool.Set("free", static_cast<double>(r.pool_free));
    pool.Set("largestFreeExtent", static_cast<double>(r.largest_free_extent));
    pool.Set("fragmentation", r.pool_free > 0 ? 1.0 - static_cast<double>(r.largest_free_extent) / r.pool_free : 0.0);
    o.Set("pool", pool);
  } else {
    o.Set("pool", env.Null());
  }
  Napi::Object counts = Napi::Object::New(env);
  counts.Set("allocations", static_cast<double>(r.allocations));
  counts.Set("frees", static_cast<double>(r.frees));
  counts.Set("upstreamAllocations", static_cast<double>(r.upstream_allocations));
  counts.Set("upstreamFrees", static_cast<double>(r.upstream_frees));
  counts.Set("retries", static_cast<double>(r.retries));
  counts.Set("ooms", static_cast<double>(r.ooms));
  o.Set("counts", counts);
  o.Set("limit", r.limit_bytes ? Napi::Value(Napi::Number::New(env, static_cast<double>(r.limit_bytes))) : env.Null());
  o.Set("releaseThreshold", static_cast<double>(r.release_threshold));
  Napi::Object device = Napi::Object::New(env);
  device.Set("free", static_cast<double>(r.device_free));
  device.Set("total", static_cast<double>(r.device_total));
  o.Set("deviceMemory", device);
  o.Set("pinnedFallback", r.pinned_fallback);
  return o;
}

namespace {

uint64_t option_bytes(Napi::Env env, Napi::Object options, const char* name) {
  Napi::Value v = options.Get(name);
  if (v.IsUndefined() || v.IsNull()) return 0;
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 18446744073709549568.0) || d != static_cast<double>(static_cast<uint64_t>(d)))
    throw make_error(env, "ERR_INVALID_ARGUMENT", std::string(name) + " must be a non-negative integer");
  return static_cast<uint64_t>(d);
}

// ---- functions -------------------------------------------------------------------------

Napi::Value DefaultMemoryResource(const Napi::CallbackInfo& info) {
  return NativeMemoryResource::Wrap(info.Env(), default_memory_resource(arg_device(info, 0)));
}

// createMemoryResource(kind, deviceKind, deviceIndex, { initialBytes, maxBytes, releaseThreshold, limitBytes, upstream })
// -> tracking([limit(]kind[)]): every resource the API hands out accounts by category.
Napi::Value CreateMemoryResource(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw make_error(env, "ERR_INVALID_ARGUMENT", "kind must be a string");
  const std::string kind = info[0].As<Napi::String>();
  const Device device = arg_device(info, 1);
  Napi::Object options = info.Length() > 3 && info[3].IsObject() ? info[3].As<Napi::Object>() : Napi::Object::New(env);
  MemoryResourcePtr base;
  if (kind == "host" || kind == "pinned-host") {
    if (!device.is_cpu()) throw make_error(env, "ERR_INVALID_ARGUMENT", kind + " memory belongs to the cpu device");
    base = kind == "host" ? make_host_resource() : make_pinned_host_resource();
  } else if (kind == "cuda" || kind == "cuda-async") {
    if (!device.is_cuda()) throw make_error(env, "ERR_INVALID_ARGUMENT", kind + " memory needs a cuda device");
    base = kind == "cuda" ? make_cuda_resource(device.index)
                          : make_cuda_async_resource(device.index, option_bytes(env, options, "releaseThreshold"));
  } else if (kind == "pool") {
    MemoryResourcePtr upstream;
    Napi::Value up = options.Get("upstream");
    if (up.IsObject() && up.As<Napi::Object>().CheckTypeTag(&kResourceTag)) {
      upstream = NativeMemoryResource::Unwrap(up.As<Napi::Object>())->resource;
      if (upstream->device() != device)
        throw make_error(env, "ERR_INVALID_ARGUMENT", "the pool's upstream is on " + upstream->device().str());
    } else if (up.IsUndefined() || up.IsNull()) {
      upstream = device.is_cpu() ? make_host_resource() : make_cuda_resource(device.index);
    } else {
      throw make_error(env, "ERR_INVALID_ARGUMENT", "upstream must be a memory resource");
    }
    base = make_pool_resource(upstream, option_bytes(env, options, "initialBytes"), option_bytes(env, options, "maxBytes"));
  } else {
    throw make_error(env, "ERR_INVALID_ARGUMENT",
                     "unknown memory resource kind '" + kind + "' (supported: cuda, cuda-async, pool, pinned-host, host)");
  }
  const uint64_t limit = option_bytes(env, options, "limitBytes");
  if (limit > 0) base = make_limit_adaptor(base, limit);
  return NativeMemoryResource::Wrap(env, make_tracking_adaptor(base));
}

// memoryReport(resource, deviceInfo = true): deviceInfo false skips asking the device for its free
// and total memory (a file read on the CPU), for callers that only want the counters.
Napi::Value MemoryReportJs(const Napi::CallbackInfo& info) {
  MemoryReport report;
  report.with_device_info = !(info.Length() > 1 && info[1].IsBoolean() && !info[1].As<Napi::Boolean>().Value());
  NativeMemoryResource::From(info, 0).resource->report(report);
  return report_to_js(info.Env(), report);
}

// memoryCurrent(resource) → [bytes in use per category] (the report's categories' `current`, or
// zeros without an accounting adaptor): what a per-step caller needs, without building the report.
Napi::Value MemoryCurrent(const Napi::CallbackInfo& info) {
  MemoryReport report;
  report.with_device_info = false;
  NativeMemoryResource::From(info, 0).resource->report(report);
  Napi::Array out = Napi::Array::New(info.Env(), kNumCategories);
  for (int i = 0; i < kNumCategories; ++i)
    out.Set(static_cast<uint32_t>(i), static_cast<double>(report.has_usage ? report.by_category[i].current_bytes : 0));
  return out;
}

Napi::Value MemoryTrim(const Napi::CallbackInfo& info) {
  NativeMemoryResource::From(info, 0).resource->trim();
  return info.Env().Undefined();
}

// ---- benchmark loops -------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

double elapsed_ns(Clock::time_point start) {
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count();
}

// timeAllocatorPairs(resource | null, stream, bytes, pairsPerSample, samples) -> Float64Array of ns per
// alloc+free pair, one per sample. `resource` null times malloc/free (the CPU baseline).
Napi::Value TimeAllocatorPairs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool use_malloc = info[0].IsNull();
  MemoryResourcePtr resource = use_malloc ? nullptr : NativeMemoryResource::From(info, 0).resource;
  Stream& stream = *NativeStream::From(info, 1).stream;
  const size_t bytes = arg_int(info, 2, "bytes");
  const size_t pairs = std::max<int64_t>(1, arg_int(info, 3, "pairsPerSample"));
  const size_t samples = std::max<int64_t>(1, arg_int(info, 4, "samples"));
  Napi::Float64Array out = Napi::Float64Array::New(env, samples);
  for (size_t s = 0; s < samples; ++s) {
    const auto start = Clock::now();
    if (use_malloc) {
      for (size_t i = 0; i < pairs; ++i) {
        void* p = std::malloc(bytes);
        asm volatile("" : : "r"(p) : "memory");  // keep the pair from being optimised away
        std::free(p);
      }
    } else {
      for (size_t i = 0; i < pairs; ++i) resource->deallocate(resource->allocate(bytes, stream), bytes, stream);
    }
    out[s] = elapsed_ns(start) / pairs;
  }
  return out;
}

// replayAllocatorTrace(resource | null, stream, trace: Float64Array, steadyFrom) -> stats.
// trace[i] >= 0 allocates that many bytes into the next slot; trace[i] < 0 frees slot (-trace[i] - 1).
// Upstream allocations are counted from op `steadyFrom` on (the steady state).
Napi::Value ReplayAllocatorTrace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool use_malloc = info[0].IsNull();
  MemoryResourcePtr resource = use_malloc ? nullptr : NativeMemoryResource::From(info, 0).resource;
  Stream& stream = *NativeStream::From(info, 1).stream;
  if (info.Length() < 3 || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    throw make_error(env, "ERR_INVALID_ARGUMENT", "trace must be a Float64Array");
  Napi::Float64Array trace = info[2].As<Napi::Float64Array>();
  const size_t steady_from = arg_int(info, 3, "steadyFrom");
  std::vector<std::pair<void*, size_t>> slots;
  slots.reserve(trace.ElementLength());
  uint64_t in_use = 0, peak_in_use = 0, upstream_at_steady = 0;
  MemoryReport report;
  const auto start = Clock::now();
  for (size_t i = 0; i < trace.ElementLength(); ++i) {
    if (i == steady_from && resource) {
      resource->report(report);
      upstream_at_steady = report.upstream_allocations;
    }
    const double op = trace[i];
    if (op >= 0) {
      const size_t bytes = static_cast<size_t>(op);
      void* p = use_malloc ? std::malloc(bytes) : resource->allocate(bytes, stream);
      slots.push_back({p, bytes});
      in_use += align_up(bytes);
      peak_in_use = std::max(peak_in_use, in_use);
    } else {
      const size_t slot = static_cast<size_t>(-op - 1);
      if (slot >= slots.size() || slots[slot].first == nullptr)
        throw make_error(env, "ERR_INVALID_ARGUMENT", "trace frees slot " + std::to_string(slot) + " which is not live");
      if (use_malloc) std::free(slots[slot].first);
      else resource->deallocate(slots[slot].first, slots[slot].second, stream);
      in_use -= align_up(slots[slot].second);
      slots[slot].first = nullptr;
    }
  }
  const double ns = elapsed_ns(start);
  for (auto& [p, bytes] : slots) {  // whatever the trace left live
    if (p == nullptr) continue;
    if (use_malloc) std::free(p);
    else resource->deallocate(p, bytes, stream);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("nsPerOp", ns / std::max<size_t>(1, trace.ElementLength()));
  out.Set("peakInUse", static_cast<double>(peak_in_use));
  if (resource) {
    resource->report(report);
    out.Set("reserved", static_cast<double>(report.pool_reserved));
    out.Set("peakReserved", static_cast<double>(report.pool_peak_reserved));
    out.Set("hasPool", report.has_pool);
    out.Set("steadyUpstreamAllocations", static_cast<double>(report.upstream_allocations - upstream_at_steady));
  }
  return out;
}

}  // namespace

void init_memory(Napi::Env env, Napi::Object exports) {
  addon_data(env).resource_class = Napi::Persistent(NativeMemoryResource::Define(env));
  exports.Set("defaultMemoryResource", Napi::Function::New<Guard<DefaultMemoryResource>>(env, "defaultMemoryResource"));
  exports.Set("createMemoryResource", Napi::Function::New<Guard<CreateMemoryResource>>(env, "createMemoryResource"));
  exports.Set("memoryReport", Napi::Function::New<Guard<MemoryReportJs>>(env, "memoryReport"));
  exports.Set("memoryCurrent", Napi::Function::New<Guard<MemoryCurrent>>(env, "memoryCurrent"));
  exports.Set("memoryTrim", Napi::Function::New<Guard<MemoryTrim>>(env, "memoryTrim"));
  exports.Set("timeAllocatorPairs", Napi::Function::New<Guard<TimeAllocatorPairs>>(env, "timeAllocatorPairs"));
  exports.Set("replayAllocatorTrace", Napi::Function::New<Guard<ReplayAllocatorTrace>>(env, "replayAllocatorTrace"));
}

}  // namespace pagedllm::addon
