// cuda_info(): what devices() reports about CUDA. Safe without a driver: the
// static cudart loads libcuda lazily and answers with an error code.
#include <cuda_runtime_api.h>

#include <string>

#include "pagedllm/device.h"

#ifndef PAGEDLLM_CUDA_ARCHS
#define PAGEDLLM_CUDA_ARCHS ""
#endif

namespace pagedllm {

namespace {
std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }
}  // namespace

CudaInfo cuda_info() {
  CudaInfo info;
  info.compiled = true;
  info.archs = PAGEDLLM_CUDA_ARCHS;
  cudaRuntimeGetVersion(&info.runtime_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess || info.driver_version == 0) {
    cudaGetLastError();
    info.driver_version = 0;
    info.reason = "no NVIDIA driver found (libcuda.so.1 could not be loaded)";
    return info;
  }
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  cudaGetLastError();
  if (status == cudaErrorInsufficientDriver) {
    info.reason = "NVIDIA driver too old: it supports CUDA " + version_string(info.driver_version) +
                  ", this build needs CUDA " + version_string(info.runtime_version) + " or newer";
    return info;
  }
  if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0)) {
    info.reason = "no CUDA device found";
    return info;
  }
  if (status != cudaSuccess) {
    info.reason = std::string("CUDA cannot be used: ") + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
    return info;
  }
  int current = 0;
  cudaGetDevice(&current);
  for (int i = 0; i < count; ++i) {
    CudaDeviceInfo dev;
    dev.index = i;
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
      dev.name = prop.name;
      dev.major = prop.major;
      dev.minor = prop.minor;
      dev.total_memory = prop.totalGlobalMem;
      dev.multiprocessors = prop.multiProcessorCount;
    }
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      dev.free_memory = free_bytes;
      dev.total_memory = total_bytes;
    }
    cudaGetLastError();
    dev.supported = dev.major * 10 + dev.minor >= 75;
    info.available = info.available || dev.supported;
    info.devices.push_back(dev);
  }
  cudaSetDevice(current);
  if (!info.available) info.reason = "no CUDA device of compute capability 7.5 or newer (sm_75+) found";
  return info;
}

}  // namespace pagedllm
