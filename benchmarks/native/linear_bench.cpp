// The native linear benchmark: decode GEMV (M = 1, 8) and a prefill GEMM (M = 128) over a
// Llama-7B-shaped float16 weight (N = K = 4096), for every CPU SIMD path or on CUDA; then the AWQ
// int4 linear (include/pagedllm/awq.h, group size 128) at M = 1, 8, 128 on K × N = 4096 × 4096 and
// 4096 × 11008, each beside the float16 linear of the same shape.
//
//   pagedllm_bench_linear [--device cpu|cuda] [--reps N] [--n N] [--k K] [--only dense|awq] [--awq-m 1,8,128] [--paths avx512,avx2,portable] [--calls N] [--hot]
//   (--n/--k: one shape for both parts instead of the defaults; --paths: the CPU SIMD paths to run,
//   by default every one this CPU has, widest first)
//
// AWQ rows ("awq-int4-g128": the layout a model gets on that path — on the CPU's avx2 path Slab8,
// whose gemv quantizes x to int8; "awq-int4-g128-autoawq": the checkpoint's layout, float32 x in
// the gemv, beside it) count as weight bytes the packed
// tensors read per call (qweight + qzeros + scales; 4.2 bits per weight at G = 128) and rotate
// through enough copies (≥ 128 MiB) that no call finds its weights in the CPU's L3 or the GPU's L2.
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

#include "pagedllm/awq.h"
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

struct AwqRow {
  std::string path, weight;  // weight: "awq-int4-g128" or "float16"
  int64_t m, k, n;
  double seconds, bytes;
};

// --calls: calls queued back to back per timing (CPU), as a decode step issues them; --hot: one copy
// of each weight (it stays in the caches where it fits: the kernels' compute ceiling, not a roofline).
int g_calls = 1;
bool g_hot = false;

// Median seconds of `reps` calls of run(r) (after 2 warm-ups), timed with CUDA events or the clock.
template <typename F>
double time_calls(const std::shared_ptr<Stream>& stream, int reps, F&& run) {
  std::vector<double> times;
  for (int r = 0; r < reps + 2; ++r) {
#if PAGEDLLM_HAVE_CUDA
    if (!stream->device().is_cpu()) {
      cudaStream_t s = as_cuda_stream(*stream).handle();
      cudaEvent_t e0, e1;
      cuda_ok(cudaEventCreate(&e0), "cudaEventCreate");
      cuda_ok(cudaEventCreate(&e1), "cudaEventCreate");
      cuda_ok(cudaEventRecord(e0, s), "cudaEventRecord");
      run(r);
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
    const auto t0 = std::chrono::steady_clock::now();
    for (int c = 0; c < g_calls; ++c) run(r * g_calls + c);
    stream->synchronize();
    if (r >= 2) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / g_calls);
  }
  return median(times);
}

// AWQ int4 (G = 128) against float16 on K × N, M = 1, 8, 128, every CPU SIMD path (or CUDA).
void awq_cases(const std::shared_ptr<Stream>& stream, const std::vector<std::pair<std::string, CpuSimd>>& paths, int reps,
               const std::vector<int64_t>& ms, const std::vector<std::pair<int64_t, int64_t>>& shapes, std::vector<AwqRow>& rows) {
  const bool cuda = !stream->device().is_cpu();
  const int64_t G = 128;
  std::mt19937 rng(7);
  for (auto [K, N] : shapes) {
    const size_t qw = K * N / 2, qz = (K / G) * N / 2, sc = (K / G) * N * 2, f16 = K * N * 2;
    const size_t awq_bytes = qw + qz + sc;
    const int64_t copies = g_hot ? 1 : (size_t(128) << 20) / awq_bytes + 1, f16_copies = g_hot ? 1 : (size_t(128) << 20) / f16 + 1;
    // Random words and scales, one host copy uploaded `copies` times (packed back to back).
    std::vector<unsigned char> host(awq_bytes);
    for (size_t i = 0; i < qw + qz; ++i) host[i] = static_cast<unsigned char>(rng());
    std::uniform_real_distribution<float> u(0.002f, 0.02f);
    for (size_t i = 0; i < sc / 2; ++i) {
      const uint16_t h = float_to_half_bits(u(rng));
      std::memcpy(&host[qw + qz + 2 * i], &h, 2);
    }
    Buffer awq(copies * awq_bytes, stream), dense(f16_copies * f16, stream);
    for (int64_t c = 0; c < copies; ++c) upload(host.data(), static_cast<char*>(awq.ptr) + c * awq_bytes, awq_bytes, *stream);
    std::vector<uint16_t> dense_host(K * N);
    for (auto& v : dense_host) v = float_to_half_bits(0.01f * (u(rng) - 0.01f));
    for (int64_t c = 0; c < f16_copies; ++c) upload(dense_host.data(), static_cast<char*>(dense.ptr) + c * f16, f16, *stream);
    // Random words are a weight in either layout (every bit pattern is one).
    auto weight = [&](int64_t c, AwqLayout layout) {
      const char* base = static_cast<const char*>(awq.ptr) + c * awq_bytes;
      AwqWeight w{reinterpret_cast<const int32_t*>(base), reinterpret_cast<const int32_t*>(base + qw),
                  reinterpret_cast<const uint16_t*>(base + qw + qz), K, N, G};
      w.layout = layout;
      return w;
    };
    for (const auto& [name, simd] : paths)
      for (int64_t M : ms) {
        std::vector<uint16_t> xh(M * K);
        for (auto& v : xh) v = float_to_half_bits(u(rng) * 50 - 0.5f);
        Buffer x(xh.size() * 2, stream), out(M * N * 2, stream);
        upload(xh.data(), x.ptr, xh.size() * 2, *stream);
        stream->synchronize();
        const int r_awq = M > 8 && !cuda ? std::max(3, reps / 5) : reps;
        // The layout a model loaded on this path gets (CUDA: AutoAWQ; CPU avx2: Slab8, int8 x in the gemv) …
        const AwqLayout loaded = !cuda && awq_cpu_activations(simd) == AwqCpuActivations::Int8 ? AwqLayout::Slab8 : AwqLayout::AutoAwq;
        const double t_awq = time_calls(stream, r_awq, [&, simd = simd](int r) {
          const AwqLinearArgs a{x.ptr, K, DType::Float16, weight(r % copies, loaded), nullptr, DType::Float32, out.ptr, N, DType::Float16, M};
          if (cuda) awq_linear(a, *stream);
          else awq_linear_cpu(a, *stream, simd);
        });
        rows.push_back({name, "awq-int4-g128", M, K, N, t_awq, static_cast<double>(awq_bytes)});
        if (loaded != AwqLayout::AutoAwq) {
          // … and the checkpoint's own layout beside it (float32 x in the gemv: PAGEDLLM_AWQ_ACTIVATIONS=float32).
          const double t_auto = time_calls(stream, r_awq, [&, simd = simd](int r) {
            const AwqLinearArgs a{x.ptr, K, DType::Float16, weight(r % copies, AwqLayout::AutoAwq), nullptr, DType::Float32, out.ptr, N, DType::Float16, M};
            awq_linear_cpu(a, *stream, simd);
          });
          rows.push_back({name, "awq-int4-g128-autoawq", M, K, N, t_auto, static_cast<double>(awq_bytes)});
        }
        const double t_f16 = time_calls(stream, r_awq, [&, simd = simd](int r) {
          const LinearArgs a{x.ptr, K, DType::Float16, static_cast<char*>(dense.ptr) + (r % f16_copies) * f16, DType::Float16,
                             nullptr, DType::Float32, out.ptr, N, DType::Float16, M, N, K};
          if (cuda) linear(a, *stream);
          else linear_cpu(a, *stream, simd);
        });
        rows.push_back({name, "float16", M, K, N, t_f16, static_cast<double>(f16)});
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cpu";
  std::string only, path_names;
  std::vector<int64_t> awq_ms = {1, 8, 128};
  int reps = 15;
  int64_t N = 4096, K = 4096;
  bool shape_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--n" && i + 1 < argc) N = std::max(1L, std::atol(argv[++i])), shape_given = true;
    else if (a == "--k" && i + 1 < argc) K = std::max(1L, std::atol(argv[++i])), shape_given = true;
    else if (a == "--calls" && i + 1 < argc) g_calls = std::max(1, std::atoi(argv[++i]));
    else if (a == "--hot") g_hot = true;
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else if (a == "--paths" && i + 1 < argc) path_names = "," + std::string(argv[++i]) + ",";
    else if (a == "--awq-m" && i + 1 < argc) {
      awq_ms.clear();
      for (const char* p = argv[++i]; *p;) {
        char* end;
        awq_ms.push_back(std::max(1L, std::strtol(p, &end, 10)));
        p = *end == ',' ? end + 1 : end + std::strlen(end);
      }
    }
    else {
      std::fprintf(stderr, "usage: %s [--device cpu|cuda] [--reps N] [--n N] [--k K] [--only dense|awq] [--awq-m 1,8,128] [--paths avx512,avx2,portable] [--calls N] [--hot]\n", argv[0]);
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

  // Enough copies of the weight that each rep reads it from memory, not from the last level cache.
  const int64_t copies = g_hot ? 1 : std::max<int64_t>(4, (256ll << 20) / (N * K * 2) + 1);
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
    const std::vector<CpuSimd> all = cpu_simd_paths();
    for (auto it = all.rbegin(); it != all.rend(); ++it)
      if (path_names.empty() || path_names.find("," + std::string(cpu_simd_name(*it)) + ",") != std::string::npos)
        paths.push_back({cpu_simd_name(*it), *it});
  }
  std::vector<Row> rows;
  for (const auto& [name, simd] : only == "awq" ? decltype(paths){} : paths)
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

  std::vector<AwqRow> awq_rows;
  // AWQ shapes: K × N of --k/--n (K a multiple of 128), else Llama-7B's attention and MLP.
  std::vector<std::pair<int64_t, int64_t>> awq_shapes = {{4096, 4096}, {4096, 11008}};
  if (shape_given) awq_shapes = {{K, N}};
  if (only != "dense") awq_cases(stream, paths, reps, awq_ms, awq_shapes, awq_rows);

  std::printf("%-9s %5s %-8s %10s %12s %8s %10s\n", "path", "M", "x", "median ms", "weight GB/s", "of bw", "GFLOP/s");
  for (const Row& r : rows)
    std::printf("%-9s %5lld %-8s %10.3f %12.1f %7.0f%% %10.1f\n", r.path.c_str(), static_cast<long long>(r.m),
                r.x_dtype.c_str(), r.seconds * 1e3, r.weight_gbs, 100 * r.weight_gbs * 1e9 / bandwidth, r.gflops);
  if (!awq_rows.empty()) {
    std::printf("\n%-9s %-14s %5s %12s %10s %12s %8s\n", "path", "weight", "M", "K x N", "median ms", "weight GB/s", "of bw");
    for (const AwqRow& r : awq_rows)
      std::printf("%-9s %-14s %5lld %5lldx%-6lld %10.3f %12.1f %7.0f%%\n", r.path.c_str(), r.weight.c_str(),
                  static_cast<long long>(r.m), static_cast<long long>(r.k), static_cast<long long>(r.n), r.seconds * 1e3,
                  r.bytes / r.seconds / 1e9, 100 * r.bytes / r.seconds / bandwidth);
  }
  std::printf("{\"device\":\"%s\",\"threads\":%d,\"bandwidth_gbs\":%.2f,\"N\":%lld,\"K\":%lld,\"weight\":\"float16\",\"cases\":[",
              device.c_str(), cuda ? 0 : ThreadPool::global().size(), bandwidth / 1e9, static_cast<long long>(N),
              static_cast<long long>(K));
  for (size_t i = 0; i < rows.size(); ++i)
    std::printf("%s{\"path\":\"%s\",\"M\":%lld,\"x\":\"%s\",\"median_ms\":%.4f,\"weight_gbs\":%.2f,\"gflops\":%.2f}", i ? "," : "",
                rows[i].path.c_str(), static_cast<long long>(rows[i].m), rows[i].x_dtype.c_str(), rows[i].seconds * 1e3,
                rows[i].weight_gbs, rows[i].gflops);
  std::printf("],\"awq\":[");
  for (size_t i = 0; i < awq_rows.size(); ++i) {
    const AwqRow& r = awq_rows[i];
    std::printf("%s{\"path\":\"%s\",\"weight\":\"%s\",\"M\":%lld,\"K\":%lld,\"N\":%lld,\"median_ms\":%.4f,\"weight_bytes\":%.0f,"
                "\"weight_gbs\":%.2f,\"fraction_of_bandwidth\":%.4f}",
                i ? "," : "", r.path.c_str(), r.weight.c_str(), static_cast<long long>(r.m), static_cast<long long>(r.k),
                static_cast<long long>(r.n), r.seconds * 1e3, r.bytes, r.bytes / r.seconds / 1e9, r.bytes / r.seconds / bandwidth);
  }
  std::printf("]}\n");
  return 0;
}
