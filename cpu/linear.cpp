// linear on the CPU: argument checks and dispatch for every backend, the
// choice of SIMD path, and the split of the work over the shared thread pool.
// The kernels are in linear_tile.h; semantics in include/pagedllm/model_ops.h.
//
// Work split:
// - M ≤ 8 (decode): threads over chunks of weight rows; each chunk's rows are
//   read once for all M tokens (linear_tile.h gemv). The activations are
//   converted to float32 once per call (M · K floats, a few KiB).
//   Napkin math: a 4096 × 4096 float16 weight is 32 MiB, so at ~20 GB/s one
//   decode step of that layer cannot take less than ~1.7 ms on this path;
//   the kernel's job is to get close to that.
// - M > 8: tasks are (≤ kGemmMB tokens) × (≤ kGemmNB weight rows) blocks, each
//   packing its weight block per K step (linear_tile.h gemm_block), so the
//   weights are read ceil(M / kGemmMB) times, each time reused kGemmMB-fold
//   from cache; the token block shrinks when there are too few tasks to keep
//   the pool busy.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_stream.h"
#include "linear_tile.h"
#include "pagedllm/convert.h"
#include "pagedllm/device.h"
#include "pagedllm/model_ops.h"
#include "thread_pool.h"

namespace pagedllm {

namespace {

bool is_float(DType t) { return t == DType::Float32 || t == DType::Float16 || t == DType::BFloat16; }

void check_linear(const LinearArgs& a) {
  for (auto [t, name] : {std::pair{a.x_dtype, "x"}, std::pair{a.weight_dtype, "weight"}, std::pair{a.out_dtype, "out"}})
    PAGEDLLM_CHECK(is_float(t), Unsupported, "linear: ", name, " dtype ", dtype_name(t),
                   " (supported: float32, float16, bfloat16)");
  PAGEDLLM_CHECK(!a.bias || is_float(a.bias_dtype), Unsupported, "linear: bias dtype ", dtype_name(a.bias_dtype),
                 " (supported: float32, float16, bfloat16)");
  PAGEDLLM_CHECK(a.num_tokens >= 0, InvalidArgument, "linear: num_tokens ", a.num_tokens, " is negative");
  PAGEDLLM_CHECK(a.in_features > 0 && a.out_features > 0, InvalidArgument, "linear: in_features (", a.in_features,
                 ") and out_features (", a.out_features, ") must be positive");
  PAGEDLLM_CHECK(a.x_stride >= a.in_features, InvalidArgument, "linear: x stride ", a.x_stride,
                 " is less than in_features (", a.in_features, ")");
  PAGEDLLM_CHECK(a.out_stride >= a.out_features, InvalidArgument, "linear: out stride ", a.out_stride,
                 " is less than out_features (", a.out_features, ")");
  PAGEDLLM_CHECK(a.in_features <= INT32_MAX && a.out_features <= INT32_MAX && a.num_tokens <= INT32_MAX, InvalidArgument,
                 "linear: sizes must fit in 32 bits");
}

float load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float16: return to_float(static_cast<const half_t*>(p)[i]);
    case DType::BFloat16: return to_float(static_cast<const bfloat16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

void store(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::Float16: static_cast<half_t*>(p)[i] = from_float<half_t>(v); break;
    case DType::BFloat16: static_cast<bfloat16_t*>(p)[i] = from_float<bfloat16_t>(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

// out[m, n0 + j] = c[i · ldc + j] + bias[n0 + j] for token rows m0 + i.
void store_rows(const LinearArgs& a, const float* c, int64_t ldc, int64_t m0, int64_t mb, int64_t n0, int64_t nb) {
  for (int64_t i = 0; i < mb; ++i) {
    const float* ci = c + i * ldc;
    const int64_t row = (m0 + i) * a.out_stride + n0;
    if (a.out_dtype == DType::Float32 && !a.bias) {
      std::memcpy(static_cast<float*>(a.out) + row, ci, nb * sizeof(float));
      continue;
    }
    for (int64_t j = 0; j < nb; ++j) store(a.out, a.out_dtype, row + j, ci[j] + (a.bias ? load(a.bias, a.bias_dtype, n0 + j) : 0.0f));
  }
}

struct Kernels {
  void (*gemv)(const linear_kernels::GemvJob&);
  void (*gemm)(const linear_kernels::GemmJob&);
};

Kernels kernels(CpuSimd simd) {
  if (simd == CpuSimd::Avx2) return {linear_kernels::gemv_avx2, linear_kernels::gemm_block_avx2};
  return {linear_kernels::gemv_portable, linear_kernels::gemm_block_portable};
}

void run_gemv(const LinearArgs& a, const Kernels& kern) {
  const int64_t M = a.num_tokens, N = a.out_features, K = a.in_features;
  std::vector<float> x(M * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) x[m * K + k] = load(a.x, a.x_dtype, m * a.x_stride + k);
  ThreadPool& pool = ThreadPool::global();
  // Chunks of whole 64-byte lines of rows where possible; several per thread to even out.
  const int64_t chunks_wanted = pool.size() > 1 ? 8 * pool.size() : 1;
  const int64_t grain = std::max<int64_t>(8, (N + chunks_wanted - 1) / chunks_wanted / 8 * 8);
  pool.parallel_for(N, grain, [&](int64_t n0, int64_t n1) {
    thread_local std::vector<float> c;
    c.resize(M * (n1 - n0));
    linear_kernels::GemvJob job{x.data(), M, a.weight, a.weight_dtype, K, n0, n1, c.data(), n1 - n0};
    kern.gemv(job);
    store_rows(a, c.data(), n1 - n0, 0, M, n0, n1 - n0);
  });
}

void run_gemm(const LinearArgs& a, const Kernels& kern) {
  using namespace linear_kernels;
  const int64_t M = a.num_tokens, N = a.out_features;
  ThreadPool& pool = ThreadPool::global();
  const int64_t n_blocks = (N + kGemmNB - 1) / kGemmNB;
  // Token blocks: as few as possible (each reads the weights once), but enough tasks for the pool.
  int64_t mb = std::min<int64_t>(kGemmMB, (M + kGemmMR - 1) / kGemmMR * kGemmMR);
  const int64_t wanted = 4 * static_cast<int64_t>(pool.size());
  while (mb > 4 * kGemmMR && n_blocks * ((M + mb - 1) / mb) < wanted) mb -= kGemmMR;
  const int64_t m_blocks = (M + mb - 1) / mb;
  constexpr int64_t ldc = kGemmNB;
  pool.parallel_for(n_blocks * m_blocks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> buffer;
    // c tile, then scratch (32-byte aligned for the packed panels' aligned loads).
    const int64_t c_floats = kGemmMB * ldc;
    buffer.resize(c_floats + kGemmScratchFloats + 8);
    float* base = buffer.data();
    base += (8 - (reinterpret_cast<uintptr_t>(base) / sizeof(float)) % 8) % 8;
    for (int64_t t = begin; t < end; ++t) {
      // Token blocks vary fastest: consecutive tasks share a weight block (warm in L2/L3).
      const int64_t nbk = t / m_blocks, mbk = t % m_blocks;
      const int64_t m0 = mbk * mb, n0 = nbk * kGemmNB;
      const int64_t rows = std::min(mb, M - m0), cols = std::min(kGemmNB, N - n0);
      GemmJob job{a.x, a.x_stride, a.x_dtype, a.weight, a.weight_dtype, a.in_features, m0, rows, n0, cols,
                  base, ldc, base + c_floats};
      kern.gemm(job);
      store_rows(a, base, ldc, m0, rows, n0, cols);
    }
  });
}

void run_linear(const LinearArgs& a, CpuSimd simd) {
  if (a.num_tokens == 0) return;
  const Kernels kern = kernels(simd);
  if (a.num_tokens <= linear_kernels::kGemvMaxRows) run_gemv(a, kern);
  else run_gemm(a, kern);
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------

void linear_cpu(const LinearArgs& a, Stream& stream, CpuSimd simd) {
  PAGEDLLM_CHECK(cpu_simd_supported(simd), Unsupported, "linear: this CPU lacks AVX2, FMA or F16C");
  as_cpu_stream(stream).enqueue([a, simd] { run_linear(a, simd); });
}

void linear_cpu(const LinearArgs& a, Stream& stream) { linear_cpu(a, stream, cpu_simd()); }

void linear(const LinearArgs& a, Stream& stream) {
  check_linear(a);
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) linear_cpu(a, stream);
  else linear_cuda(a, stream);
}

}  // namespace pagedllm
