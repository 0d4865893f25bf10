// devices(): the CPU and CUDA reports of device.h as plain JS objects.
#include "binding.h"

#ifndef PAGEDLLM_VERSION
#define PAGEDLLM_VERSION "0.0.0"
#endif

namespace pagedllm::addon {

namespace {

Napi::Value CpuInfoJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CpuInfo cpu = cpu_info();
  Napi::Object out = Napi::Object::New(env);
  out.Set("logicalCores", cpu.logical_cores);
  out.Set("physicalCores", cpu.physical_cores);
  out.Set("totalMemory", static_cast<double>(cpu.total_memory));
  out.Set("availableMemory", static_cast<double>(cpu.available_memory));
  out.Set("arch", cpu.arch);
  out.Set("modelName", cpu.model_name);
  Napi::Array simd = Napi::Array::New(env, cpu.simd.size());
  for (size_t i = 0; i < cpu.simd.size(); ++i) simd.Set(static_cast<uint32_t>(i), cpu.simd[i]);
  out.Set("simd", simd);
  out.Set("simdPath", cpu.simd_path);
  out.Set("awqActivations", cpu.awq_activations);
  out.Set("threads", cpu.threads);
  return out;
}

Napi::Value CudaInfoJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CudaInfo cuda = cuda_info();
  Napi::Object out = Napi::Object::New(env);
  out.Set("compiled", cuda.compiled);
  out.Set("available", cuda.available);
  out.Set("reason", cuda.reason);
  out.Set("driverVersion", cuda.driver_version);
  out.Set("runtimeVersion", cuda.runtime_version);
  out.Set("archs", cuda.archs);
  Napi::Array devices = Napi::Array::New(env, cuda.devices.size());
  for (size_t i = 0; i < cuda.devices.size(); ++i) {
    const CudaDeviceInfo& d = cuda.devices[i];
    Napi::Object dev = Napi::Object::New(env);
    dev.Set("index", d.index);
    dev.Set("name", d.name);
    dev.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
    dev.Set("totalMemory", static_cast<double>(d.total_memory));
    dev.Set("freeMemory", static_cast<double>(d.free_memory));
    dev.Set("multiprocessors", d.multiprocessors);
    dev.Set("supported", d.supported);
    devices.Set(static_cast<uint32_t>(i), dev);
  }
  out.Set("devices", devices);
  return out;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("version", PAGEDLLM_VERSION);
#ifdef PAGEDLLM_HAVE_CUDA
  out.Set("cuda", true);
#else
  out.Set("cuda", false);
#endif
#ifdef PAGEDLLM_BUILD_SYSTEM
  out.Set("buildSystem", PAGEDLLM_BUILD_SYSTEM);
#else
  out.Set("buildSystem", "unknown");
#endif
  return out;
}

}  // namespace

void init_devices(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuInfo", Napi::Function::New<Guard<CpuInfoJs>>(env, "cpuInfo"));
  exports.Set("cudaInfo", Napi::Function::New<Guard<CudaInfoJs>>(env, "cudaInfo"));
  exports.Set("buildInfo", Napi::Function::New<Guard<BuildInfo>>(env, "buildInfo"));
}

}  // namespace pagedllm::addon
