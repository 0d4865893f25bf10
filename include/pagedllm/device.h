// Devices and what `devices()` reports about them (DESIGN.md §2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pagedllm {

enum class DeviceKind : int32_t { Cpu = 0, Cuda = 1 };

struct Device {
  DeviceKind kind = DeviceKind::Cpu;
  int index = 0;  // CUDA ordinal; always 0 for the CPU
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  bool is_cpu() const { return kind == DeviceKind::Cpu; }
  bool is_cuda() const { return kind == DeviceKind::Cuda; }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

struct CpuInfo {
  int logical_cores = 0;
  int physical_cores = 0;
  uint64_t total_memory = 0;      // bytes
  uint64_t available_memory = 0;  // bytes (MemAvailable on Linux)
  std::string arch;               // "x86_64", "aarch64", ...
  std::string model_name;
  std::vector<std::string> simd;  // features usable by this process (OS support checked): "avx2", "fma", ...
  std::string simd_path;          // the kernels the CPU ops run: "avx2" or "portable" (PAGEDLLM_SIMD forces one)
  std::string awq_activations;    // how the AWQ int4 gemv multiplies: "int8" or "float32" (awq.h AwqCpuActivations)
  int threads = 0;                // the CPU ops' thread pool size (PAGEDLLM_THREADS, else physical cores)
};

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int major = 0;  // compute capability
  int minor = 0;
  uint64_t total_memory = 0;
  uint64_t free_memory = 0;
  int multiprocessors = 0;
  bool supported = false;  // sm_75 or newer
};

struct CudaInfo {
  bool compiled = false;   // this binary was built with CUDA
  bool available = false;  // at least one supported device can be used
  std::string reason;      // why not, when !available
  int driver_version = 0;  // e.g. 13000 (0: no driver)
  int runtime_version = 0;
  std::string archs;       // architectures compiled in, e.g. "75;80;86;89;90"
  std::vector<CudaDeviceInfo> devices;
};

CpuInfo cpu_info();
// Safe on machines with no driver or no GPU: never throws for their absence.
CudaInfo cuda_info();

}  // namespace pagedllm
