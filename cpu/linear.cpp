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
// - M > 8: x is packed once into float32 6-row panels (linear_tile.h pack_x);
//   tasks are (≤ kGemmMB tokens) × (≤ kGemmNB weight rows) blocks, each
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
#include "float_rows.h"
#include "linear_tile.h"
#include "pagedllm/convert.h"
#include "pagedllm/device.h"
#include "pagedllm/model_ops.h"
#include "thread_pool.h"

namespace pagedllm {

namespace {

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

LinearOut out_of(const LinearArgs& a) { return {a.out, a.out_dtype, a.out_stride, a.bias, a.bias_dtype}; }

struct Kernels {
  void (*gemv)(const linear_kernels::GemvJob&);
  void (*pack_x)(const linear_kernels::PackXJob&);
  void (*gemm)(const linear_kernels::GemmJob&);
};

Kernels kernels(CpuSimd simd) {
  using namespace linear_kernels;
  if (simd == CpuSimd::Avx2) return {gemv_avx2, pack_x_avx2, gemm_block_avx2};
  return {gemv_portable, pack_x_portable, gemm_block_portable};
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
    out_of(a).store_tile(c.data(), n1 - n0, 0, M, n0, n1 - n0);
  });
}

void run_gemm(const LinearArgs& a, const Kernels& kern) {
  using namespace linear_kernels;
  const int64_t M = a.num_tokens, N = a.out_features, K = a.in_features;
  ThreadPool& pool = ThreadPool::global();
  // x once, in 6-row panels (every task of a token block reads the same panels).
  const int64_t panels = (M + kGemmMR - 1) / kGemmMR;
  thread_local AlignedFloats xp_storage;  // this runs on the stream's worker: one per stream
  float* const xp = xp_storage.get(panels * K * kGemmMR);
  pool.parallel_for(panels, 1, [&](int64_t q0, int64_t q1) {
    kern.pack_x(PackXJob{a.x, a.x_stride, a.x_dtype, M, K, q0, q1, xp});
  });
  const int64_t n_blocks = (N + kGemmNB - 1) / kGemmNB;
  // Token blocks: as few as possible (each packs the weights once), but enough tasks for the pool.
  int64_t mb = std::min<int64_t>(kGemmMB, panels * kGemmMR);
  const int64_t wanted = 4 * static_cast<int64_t>(pool.size());
  while (mb > 4 * kGemmMR && n_blocks * ((M + mb - 1) / mb) < wanted) mb -= kGemmMR;
  const int64_t m_blocks = (M + mb - 1) / mb;
  constexpr int64_t ldc = kGemmNB;
  pool.parallel_for(n_blocks * m_blocks, 1, [&](int64_t begin, int64_t end) {
    thread_local AlignedFloats buffer;  // the c tile, then the weight pack
    float* const c = buffer.get(kGemmMB * ldc + kGemmScratchFloats);
    for (int64_t t = begin; t < end; ++t) {
      // Token blocks vary fastest: consecutive tasks share a weight block (warm in L2/L3).
      const int64_t nbk = t / m_blocks, mbk = t % m_blocks;
      const int64_t m0 = mbk * mb, n0 = nbk * kGemmNB;
      const int64_t rows = std::min(mb, M - m0), cols = std::min(kGemmNB, N - n0);
      kern.gemm(GemmJob{xp + m0 * K, rows, a.weight, a.weight_dtype, K, n0, cols, c, ldc, c + kGemmMB * ldc});
      out_of(a).store_tile(c, ldc, m0, rows, n0, cols);
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
