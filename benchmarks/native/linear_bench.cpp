// The native linear benchmark: decode GEMV (M = 1, 8) and a prefill GEMM (M = 128) over a
// Llama-7B-shaped float16 weight (N = K = 4096), for every CPU SIMD path or on CUDA.
//
//   pagedllm_bench_linear [--device cpu|cuda] [--reps N]
//
// For each case: the median time, the weight bytes over it as GB/s (the roofline of decode, where
// the weights are the traffic) beside the memory bandwidth measured in the same run (CPU: a
// multi-threaded read of 1 GiB; CUDA: a device-to-device copy, read + write), and GFLOP/s. Four
// weight matrices (128 MiB) are used in turn so that no call finds its weights in a cache (CPU
// L3, GPU L2). Prints a table and then one JSON object.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "pagedllm/convert.h"
#include "pagedllm/device.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/tensor_ops.h"
#include "bench_util.h"

using namespace pagedllm;
using namespace pagedllm::bench;

namespace {

struct Row {
  std::string path;
  int64_t m;
  std::string x_dtype;
  double seconds, weight_gbs, gflops;
};

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cpu";
  int reps = 15;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--device cpu|cuda] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  const bool cuda = device == "cuda";
#if !PAGEDLLM_HAVE_CUDA
  if (cuda) {
    std::fprintf(stderr, "built without CUDA\n");
    return 2;
  }
#endif
  auto stream = default_stream(Device{cuda ? DeviceKind::Cuda : DeviceKind::Cpu, 0});
  double bandwidth = 0;
#if PAGEDLLM_HAVE_CUDA
  if (cuda) bandwidth = measure_bandwidth(stream, 7);
#endif
  if (!cuda) bandwidth = measure_bandwidth(stream, 7);

  const int64_t N = 4096, K = 4096, copies = 4;
  const size_t weight_bytes = static_cast<size_t>(N * K) * 2;
  std::vector<uint16_t> host(N * K);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : host) v = float_to_half_bits(0.05f * u(rng));
  Buffer weights(copies * weight_bytes, stream);
  for (int64_t c = 0; c < copies; ++c) upload(host.data(), static_cast<char*>(weights.ptr) + c * weight_bytes, weight_bytes, *stream);

  std::vector<std::pair<std::string, CpuSimd>> paths;
  if (cuda) paths.push_back({"cuda", CpuSimd::Portable});
  else {
    paths.push_back({cpu_simd_name(cpu_simd()), cpu_simd()});
    if (cpu_simd() != CpuSimd::Portable) paths.push_back({"portable", CpuSimd::Portable});
  }
  std::vector<Row> rows;
  for (const auto& [name, simd] : paths)
    for (int64_t M : {1, 8, 128})
      for (DType xt : {DType::Float32, DType::Float16}) {
        if (cuda && xt == DType::Float32 && M > 8) continue;  // float32 activations take the SIMT path: not the case of interest
        std::vector<unsigned char> xh(M * K * dtype_size(xt));
        for (int64_t i = 0; i < M * K; ++i) {
          const float v = u(rng);
          if (xt == DType::Float32) std::memcpy(&xh[4 * i], &v, 4);
          else {
            const uint16_t h = float_to_half_bits(v);
            std::memcpy(&xh[2 * i], &h, 2);
          }
        }
        Buffer x(xh.size(), stream), out(M * N * 4, stream);
        upload(xh.data(), x.ptr, xh.size(), *stream);
        LinearArgs a{x.ptr, K, xt, weights.ptr, DType::Float16, nullptr, DType::Float32, out.ptr, N, DType::Float32, M, N, K};
        stream->synchronize();
        std::vector<double> times;
        for (int r = 0; r < reps + 2; ++r) {
          a.weight = static_cast<char*>(weights.ptr) + (r % copies) * weight_bytes;
          const auto t0 = std::chrono::steady_clock::now();
#if PAGEDLLM_HAVE_CUDA
          if (cuda) {
            cudaStream_t s = as_cuda_stream(*stream).handle();
            cudaEvent_t e0, e1;
            cuda_ok(cudaEventCreate(&e0), "cudaEventCreate");
            cuda_ok(cudaEventCreate(&e1), "cudaEventCreate");
            cuda_ok(cudaEventRecord(e0, s), "cudaEventRecord");
            linear(a, *stream);
            cuda_ok(cudaEventRecord(e1, s), "cudaEventRecord");
            cuda_ok(cudaEventSynchronize(e1), "cudaEventSynchronize");
            float ms = 0;
            cuda_ok(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
            if (r >= 2) times.push_back(ms / 1e3);
            continue;
          }
#endif
          linear_cpu(a, *stream, simd);
          stream->synchronize();
          if (r >= 2) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        const double t = median(times);
        rows.push_back({name, M, dtype_name(xt), t, weight_bytes / t / 1e9, 2.0 * M * N * K / t / 1e9});
      }

  std::printf("%-9s %5s %-8s %10s %12s %8s %10s\n", "path", "M", "x", "median ms", "weight GB/s", "of bw", "GFLOP/s");
  for (const Row& r : rows)
    std::printf("%-9s %5lld %-8s %10.3f %12.1f %7.0f%% %10.1f\n", r.path.c_str(), static_cast<long long>(r.m),
                r.x_dtype.c_str(), r.seconds * 1e3, r.weight_gbs, 100 * r.weight_gbs * 1e9 / bandwidth, r.gflops);
  std::printf("{\"device\":\"%s\",\"threads\":%d,\"bandwidth_gbs\":%.2f,\"N\":%lld,\"K\":%lld,\"weight\":\"float16\",\"cases\":[",
              device.c_str(), cuda ? 0 : ThreadPool::global().size(), bandwidth / 1e9, static_cast<long long>(N),
              static_cast<long long>(K));
  for (size_t i = 0; i < rows.size(); ++i)
    std::printf("%s{\"path\":\"%s\",\"M\":%lld,\"x\":\"%s\",\"median_ms\":%.4f,\"weight_gbs\":%.2f,\"gflops\":%.2f}", i ? "," : "",
                rows[i].path.c_str(), static_cast<long long>(rows[i].m), rows[i].x_dtype.c_str(), rows[i].seconds * 1e3,
                rows[i].weight_gbs, rows[i].gflops);
  std::printf("]}\n");
  return 0;
}
