// What devices() reports about the host CPU: cores, memory and the SIMD
// features this process may use (CPUID bits *and* OS support via XGETBV, so a
// feature the kernel does not save/restore is not reported).
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "pagedllm/awq.h"
#include "pagedllm/device.h"
#include "pagedllm/model_ops.h"
#include "thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace pagedllm {
namespace {

#if defined(__x86_64__) || defined(__i386__)
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

std::vector<std::string> x86_features() {
  std::vector<std::string> out;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return out;
  const bool osxsave = c & (1u << 27);
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;            // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  if (d & (1u << 26)) out.push_back("sse2");
  if (c & (1u << 19)) out.push_back("sse4.1");
  if (os_avx && (c & (1u << 28))) out.push_back("avx");
  if (os_avx && (c & (1u << 12))) out.push_back("fma");
  if (os_avx && (c & (1u << 29))) out.push_back("f16c");
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned b7 = b;
    if (os_avx && (b7 & (1u << 5))) out.push_back("avx2");
    if (os_avx512 && (b7 & (1u << 16))) out.push_back("avx512f");
    if (os_avx512 && (b7 & (1u << 30))) out.push_back("avx512bw");
    if (os_avx512 && (b7 & (1u << 31))) out.push_back("avx512vl");
    if (os_avx512 && (c & (1u << 11))) out.push_back("avx512vnni");
    __cpuid_count(7, 1, a, b, c, d);
    if (os_avx512 && (a & (1u << 5))) out.push_back("avx512bf16");
    if (os_avx && (a & (1u << 4))) out.push_back("avxvnni");
  }
  return out;
}
#endif

uint64_t meminfo_kb(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      uint64_t kb = 0;
      fields >> kb;
      return kb;
    }
  }
  return 0;
}

// CPUID does not change while the process runs.
const std::vector<std::string>& simd_features() {
#if defined(__x86_64__) || defined(__i386__)
  static const std::vector<std::string> features = x86_features();
#elif defined(__aarch64__)
  static const std::vector<std::string> features = {"neon"};
#else
  static const std::vector<std::string> features;
#endif
  return features;
}

}  // namespace

bool cpu_simd_supported(CpuSimd simd) {
  if (simd == CpuSimd::Portable) return true;
  const std::vector<std::string>& f = simd_features();
  auto has = [&](const char* name) { return std::find(f.begin(), f.end(), name) != f.end(); };
  const bool avx2 = has("avx2") && has("fma") && has("f16c");
  if (simd == CpuSimd::Avx2) return avx2;
  return avx2 && has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512vnni");
}

std::vector<CpuSimd> cpu_simd_paths() {
  std::vector<CpuSimd> paths;
  for (CpuSimd simd : {CpuSimd::Portable, CpuSimd::Avx2, CpuSimd::Avx512})
    if (cpu_simd_supported(simd)) paths.push_back(simd);
  return paths;
}

CpuSimd cpu_simd() {
  static const CpuSimd chosen = [] {
    CpuSimd cap = CpuSimd::Avx512;
    if (const char* env = std::getenv("PAGEDLLM_SIMD")) {
      const std::string want(env);
      if (want == "portable") cap = CpuSimd::Portable;
      else if (want == "avx2") cap = CpuSimd::Avx2;
    }
    CpuSimd best = CpuSimd::Portable;
    for (CpuSimd simd : cpu_simd_paths())
      if (static_cast<int>(simd) <= static_cast<int>(cap)) best = simd;
    return best;
  }();
  return chosen;
}

const char* cpu_simd_name(CpuSimd simd) {
  return simd == CpuSimd::Avx512 ? "avx512" : simd == CpuSimd::Avx2 ? "avx2" : "portable";
}

void cpu_memory_info(uint64_t* free_bytes, uint64_t* total_bytes) {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_size = sysconf(_SC_PAGE_SIZE);
  *total_bytes = pages > 0 && page_size > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) : 0;
  *free_bytes = meminfo_kb("MemAvailable") * 1024;
}

CpuInfo cpu_info() {
  CpuInfo info;
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  info.logical_cores = online > 0 ? static_cast<int>(online) : static_cast<int>(std::thread::hardware_concurrency());

  // Physical cores: distinct (physical id, core id) pairs; falls back to logical.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::set<std::pair<int, int>> cores;
  std::string line;
  int physical_id = 0;
  while (std::getline(cpuinfo, line)) {
    auto value = [&line] { return line.substr(line.find(':') + 1); };
    if (line.rfind("physical id", 0) == 0) physical_id = std::stoi(value());
    else if (line.rfind("core id", 0) == 0) cores.insert({physical_id, std::stoi(value())});
    else if (info.model_name.empty() && line.rfind("model name", 0) == 0) {
      info.model_name = value();
      info.model_name.erase(0, info.model_name.find_first_not_of(' '));
    }
  }
  info.physical_cores = cores.empty() ? info.logical_cores : static_cast<int>(cores.size());

  cpu_memory_info(&info.available_memory, &info.total_memory);

#if defined(__x86_64__)
  info.arch = "x86_64";
  info.simd = simd_features();
#elif defined(__aarch64__)
  info.arch = "aarch64";
  info.simd = simd_features();
#else
  info.arch = "unknown";
#endif
  info.simd_path = cpu_simd_name(cpu_simd());
  info.awq_activations = awq_cpu_activations_name(awq_cpu_activations(cpu_simd()));
  info.threads = thread_count_for(info.physical_cores);
  return info;
}

}  // namespace pagedllm
