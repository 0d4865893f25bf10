// awq_linear and awq_dequantize on the CPU: the argument checks and dispatch
// for every backend, the split of the work over the shared thread pool, and
// the dequantizer. The kernels are in awq_tile.h; semantics in
// include/pagedllm/awq.h.
//
// Work split (each weight word is read by one thread):
// - M ≤ 8 (decode): jobs are ranges of whole rows (K split, several jobs per
//   thread to even out), so each thread streams contiguous memory; their
//   partial outputs are summed at the end. Activations are converted to
//   float32 once per call, with their sums per 32-row block.
// - M > 8: tasks are blocks of 128 columns (N split), each running every 6-row panel of
//   the activations (packed once per call) over its dequantized weight panels,
//   so each weight panel is unpacked once per call and reused M-fold from L1/L2.
#include <algorithm>
#include <cstring>
#include <vector>

#include "awq_tile.h"
#include "cpu_stream.h"
#include "float_rows.h"
#include "linear_tile.h"
#include "pagedllm/awq.h"
#include "pagedllm/convert.h"
#include "pagedllm/device.h"
#include "thread_pool.h"

namespace pagedllm {

namespace {

void check_awq_linear(const AwqLinearArgs& a) {
  check_awq_weight(a.weight, "awq_linear");
  for (auto [t, name] : {std::pair{a.x_dtype, "x"}, std::pair{a.out_dtype, "out"}})
    PAGEDLLM_CHECK(is_float(t), Unsupported, "awq_linear: ", name, " dtype ", dtype_name(t),
                   " (supported: float32, float16, bfloat16)");
  PAGEDLLM_CHECK(!a.bias || is_float(a.bias_dtype), Unsupported, "awq_linear: bias dtype ", dtype_name(a.bias_dtype),
                 " (supported: float32, float16, bfloat16)");
  PAGEDLLM_CHECK(a.num_tokens >= 0 && a.num_tokens <= INT32_MAX, InvalidArgument, "awq_linear: num_tokens ",
                 a.num_tokens, " is out of range");
  PAGEDLLM_CHECK(a.x_stride >= a.weight.in_features, InvalidArgument, "awq_linear: x stride ", a.x_stride,
                 " is less than in_features (", a.weight.in_features, ")");
  PAGEDLLM_CHECK(a.out_stride >= a.weight.out_features, InvalidArgument, "awq_linear: out stride ", a.out_stride,
                 " is less than out_features (", a.weight.out_features, ")");
  PAGEDLLM_CHECK(a.weight.qweight && a.weight.qzeros && a.weight.scales && a.out && (a.x || a.num_tokens == 0),
                 InvalidArgument, "awq_linear: null pointer");
}

void check_awq_dequantize(const AwqDequantizeArgs& a) {
  check_awq_weight(a.weight, "awq_dequantize");
  PAGEDLLM_CHECK(a.out_dtype == DType::Float16 || a.out_dtype == DType::Float32, Unsupported,
                 "awq_dequantize: out dtype ", dtype_name(a.out_dtype), " (supported: float16, float32)");
  PAGEDLLM_CHECK(a.weight.qweight && a.weight.qzeros && a.weight.scales && a.out, InvalidArgument,
                 "awq_dequantize: null pointer");
}

LinearOut out_of(const AwqLinearArgs& a) { return {a.out, a.out_dtype, a.out_stride, a.bias, a.bias_dtype}; }

void run_gemv(const AwqLinearArgs& a, CpuSimd simd) {
  using namespace awq_kernels;
  const AwqWeight& w = a.weight;
  const int64_t M = a.num_tokens, K = w.in_features, N = w.out_features;
  const int64_t kb = awq_gemv_block_rows(w.group_size), blocks = (K + kb - 1) / kb;
  // Reused across calls (this runs on the stream's worker): a fresh buffer of this size would be
  // mmap-ed and page-faulted in on every call, a sizeable part of a 0.5 ms decode GEMV.
  // (thread_local: the lambdas below run on other threads, so they use the pointers, never the names.)
  thread_local std::vector<float> x_storage, xsum_storage, partial_storage;
  x_storage.resize(M * K);
  xsum_storage.resize(M * blocks);
  float* const x = x_storage.data();
  float* const xsum = xsum_storage.data();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < blocks; ++b) {
      float sum = 0.0f;
      for (int64_t k = b * kb; k < std::min(K, (b + 1) * kb); ++k) sum += (x[m * K + k] = load(a.x, a.x_dtype, m * a.x_stride + k));
      xsum[m * blocks + b] = sum;
    }
  // Jobs are row ranges (whole blocks): each streams a contiguous stretch of the weight; their
  // partial outputs [jobs][M][N] are summed afterwards (a few hundred KiB at most).
  ThreadPool& pool = ThreadPool::global();
  const int64_t jobs_wanted = pool.size() > 1 ? 4 * pool.size() : 1;
  const int64_t grain = std::max<int64_t>(1, (blocks + jobs_wanted - 1) / jobs_wanted), jobs = (blocks + grain - 1) / grain;
  partial_storage.resize(jobs * M * N);  // every element is written by its job
  float* const partial = partial_storage.data();
  auto gemv = simd == CpuSimd::Avx2 ? gemv_avx2 : gemv_portable;
  pool.parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
    thread_local AlignedFloats scratch;
    AwqGemvJob job{x, xsum, M, &w, b0 * kb, std::min(K, b1 * kb), 0, N / 8, partial + (b0 / grain) * M * N, N,
                   scratch.get(awq_gemv_scratch_floats(M, N / 8))};
    gemv(job);
  });
  const int64_t cols_per_task = std::max<int64_t>(64, (N + 4 * pool.size() - 1) / (4 * pool.size()));
  pool.parallel_for(N, cols_per_task, [&](int64_t n0, int64_t n1) {
    thread_local std::vector<float> y;
    y.assign(M * (n1 - n0), 0.0f);
    for (int64_t j = 0; j < jobs; ++j)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < n1; ++n) y[m * (n1 - n0) + n - n0] += partial[(j * M + m) * N + n];
    out_of(a).store_tile(y.data(), n1 - n0, 0, M, n0, n1 - n0);
  });
}

void run_gemm(const AwqLinearArgs& a, CpuSimd simd) {
  using namespace awq_kernels;
  const AwqWeight& w = a.weight;
  const int64_t M = a.num_tokens, K = w.in_features, N = w.out_features;
  // x in 6-row panels, [panel][k][row], zero past M: every weight block's tile reads them in order.
  const int64_t panels = (M + kAwqGemmMR - 1) / kAwqGemmMR;
  thread_local AlignedFloats xp_storage;  // reused across calls (see run_gemv)
  float* xp = xp_storage.get(panels * K * kAwqGemmMR);
  ThreadPool& pool = ThreadPool::global();
  auto pack_x = simd == CpuSimd::Avx2 ? linear_kernels::pack_x_avx2 : linear_kernels::pack_x_portable;
  pool.parallel_for(panels, 1, [&](int64_t q0, int64_t q1) {
    pack_x(linear_kernels::PackXJob{a.x, a.x_stride, a.x_dtype, M, K, q0, q1, xp});
  });
  auto gemm = simd == CpuSimd::Avx2 ? gemm_block_avx2 : gemm_block_portable;
  const int64_t blocks = (N + kAwqGemmNB - 1) / kAwqGemmNB;
  pool.parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    thread_local AlignedFloats c, scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kAwqGemmNB, nb = std::min(kAwqGemmNB, N - n0);
      AwqGemmJob job{xp, M, &w, n0, nb, c.get(panels * kAwqGemmMR * kAwqGemmNB), kAwqGemmNB,
                     scratch.get(kAwqGemmNB * kAwqGemmKC)};
      gemm(job);
      out_of(a).store_tile(job.c, kAwqGemmNB, 0, M, n0, nb);
    }
  });
}

void run_awq_linear(const AwqLinearArgs& a, CpuSimd simd) {
  if (a.num_tokens == 0) return;
  if (a.num_tokens <= awq_kernels::kAwqGemvMaxRows) run_gemv(a, simd);
  else run_gemm(a, simd);
}

// Rows [k0, k1) of W, word by word: the 8 codes of a word in column order, each (q − z)·s rounded
// once to float16 — the same value as awq_reference_weight, computed without it.
void dequantize_rows(const AwqDequantizeArgs& a, int64_t k0, int64_t k1) {
  const AwqWeight& w = a.weight;
  const int64_t N = w.out_features, words = N / 8;
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t g = k / w.group_size;
    for (int64_t c = 0; c < words; ++c) {
      const uint32_t q = static_cast<uint32_t>(w.qweight[k * words + c]), z = static_cast<uint32_t>(w.qzeros[g * words + c]);
      for (int j = 0; j < 8; ++j) {
        const int shift = awq::column_shift(j);
        const float s = half_bits_to_float(w.scales[g * N + 8 * c + j]);
        const uint16_t h = float_to_half_bits(static_cast<float>(static_cast<int>((q >> shift) & 15u) - static_cast<int>((z >> shift) & 15u)) * s);
        if (a.out_dtype == DType::Float16) static_cast<uint16_t*>(a.out)[k * N + 8 * c + j] = h;
        else static_cast<float*>(a.out)[k * N + 8 * c + j] = half_bits_to_float(h);
      }
    }
  }
}

}  // namespace

// ---- entry points --------------------------------------------------------------------------------

void awq_linear_cpu(const AwqLinearArgs& a, Stream& stream, CpuSimd simd) {
  PAGEDLLM_CHECK(cpu_simd_supported(simd), Unsupported, "awq_linear: this CPU lacks AVX2, FMA or F16C");
  as_cpu_stream(stream).enqueue([a, simd] { run_awq_linear(a, simd); });
}

void awq_linear_cpu(const AwqLinearArgs& a, Stream& stream) { awq_linear_cpu(a, stream, cpu_simd()); }

void awq_linear(const AwqLinearArgs& a, Stream& stream) {
  check_awq_linear(a);
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) awq_linear_cpu(a, stream);
  else awq_linear_cuda(a, stream);
}

void awq_dequantize_cpu(const AwqDequantizeArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    ThreadPool::global().parallel_for(a.weight.in_features, 16, [&](int64_t k0, int64_t k1) { dequantize_rows(a, k0, k1); });
  });
}

void awq_dequantize(const AwqDequantizeArgs& a, Stream& stream) {
  check_awq_dequantize(a);
  if (stream.device().is_cpu()) awq_dequantize_cpu(a, stream);
  else awq_dequantize_cuda(a, stream);
}

#if !PAGEDLLM_HAVE_CUDA
// Builds without CUDA (cpu/no_cuda.cpp holds the other ops' versions of these).
void awq_linear_cuda(const AwqLinearArgs&, Stream&) { PAGEDLLM_FAIL(Unsupported, "pagedllm was built without CUDA"); }
void awq_linear_cuda(const AwqLinearArgs&, Stream&, AwqCudaKernel) {
  PAGEDLLM_FAIL(Unsupported, "pagedllm was built without CUDA");
}
void awq_dequantize_cuda(const AwqDequantizeArgs&, Stream&) { PAGEDLLM_FAIL(Unsupported, "pagedllm was built without CUDA"); }
const char* awq_cuda_kernel_name(AwqCudaKernel) { return "none (built without CUDA)"; }
#endif

}  // namespace pagedllm
