// linear on the CPU: argument checks and dispatch for every backend, the
// choice of SIMD path, and the split of the work over the shared thread pool.
// The kernels are in linear_tile.h; semantics in include/pagedllm/model_ops.h.
//
// Work split:
// linear_many runs several linears of one input as one pool pass (the same
// tasks, drawn from every op's weight).
//
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
  if (simd == CpuSimd::Avx512) return {gemv_avx512, pack_x_avx512, gemm_block_avx512};
  if (simd == CpuSimd::Avx2) return {gemv_avx2, pack_x_avx2, gemm_block_avx2};
  return {gemv_portable, pack_x_portable, gemm_block_portable};
}

// A piece of work: rows [n0, n1) of linear `op`'s weight, for token rows [m0, m0 + mb) (gemm).
struct Task {
  int op;
  int64_t n0, n1, m0, mb;
};

// Every op shares x, M and K (check_many). M ≤ 8: x converted once; the ops' weight rows cut into
// chunks of whole 64-byte lines where possible, several per thread to even out, one pool pass.
void run_gemv(const std::vector<LinearArgs>& ops, const Kernels& kern) {
  const LinearArgs& a0 = ops.front();
  const int64_t M = a0.num_tokens, K = a0.in_features;
  thread_local std::vector<float> x_storage;  // this runs on the stream's worker: one per stream
  x_storage.resize(M * K);
  float* const x = x_storage.data();
  for (int64_t m = 0; m < M; ++m) load_row(a0.x, a0.x_dtype, m * a0.x_stride, K, x + m * K);
  ThreadPool& pool = ThreadPool::global();
  int64_t rows = 0;
  for (const LinearArgs& a : ops) rows += a.out_features;
  const int64_t chunks_wanted = pool.size() > 1 ? 8 * pool.size() : 1;
  const int64_t grain = std::max<int64_t>(8, (rows + chunks_wanted - 1) / chunks_wanted / 8 * 8);
  thread_local std::vector<Task> tasks;
  tasks.clear();
  for (size_t i = 0; i < ops.size(); ++i)
    for (int64_t n0 = 0; n0 < ops[i].out_features; n0 += grain)
      tasks.push_back({static_cast<int>(i), n0, std::min(ops[i].out_features, n0 + grain), 0, M});
  const Task* const task = tasks.data();
  // Consecutive tasks are consecutive rows (of one op, or the next op's first): parallel_ranges
  // gives each thread one stretch of them, read as one stream.
  pool.parallel_ranges(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    thread_local std::vector<float> c;
    const LinearArgs& a = ops[task[t].op];
    const int64_t n0 = task[t].n0, n1 = task[t].n1;
    c.resize(M * (n1 - n0));
    kern.gemv(linear_kernels::GemvJob{x, M, a.weight, a.weight_dtype, K, n0, n1, c.data(), n1 - n0});
    out_of(a).store_tile(c.data(), n1 - n0, 0, M, n0, n1 - n0);
  });
}

// M > 8: x packed once in 6-row panels; tasks are (≤ kGemmMB tokens) × (≤ kGemmNB weight rows)
// blocks of every op, one pool pass.
void run_gemm(const std::vector<LinearArgs>& ops, const Kernels& kern) {
  using namespace linear_kernels;
  const LinearArgs& a0 = ops.front();
  const int64_t M = a0.num_tokens, K = a0.in_features;
  ThreadPool& pool = ThreadPool::global();
  const int64_t panels = (M + kGemmMR - 1) / kGemmMR;
  thread_local AlignedFloats xp_storage;
  float* const xp = xp_storage.get(panels * K * kGemmMR);
  pool.parallel_for(panels, 1, [&](int64_t q0, int64_t q1) {
    kern.pack_x(PackXJob{a0.x, a0.x_stride, a0.x_dtype, M, K, q0, q1, xp});
  });
  int64_t n_blocks = 0;
  for (const LinearArgs& a : ops) n_blocks += (a.out_features + kGemmNB - 1) / kGemmNB;
  // Token blocks: as few as possible (each packs the weights once), but enough tasks for the pool.
  int64_t mb = std::min<int64_t>(kGemmMB, panels * kGemmMR);
  const int64_t wanted = 4 * static_cast<int64_t>(pool.size());
  while (mb > 4 * kGemmMR && n_blocks * ((M + mb - 1) / mb) < wanted) mb -= kGemmMR;
  thread_local std::vector<Task> tasks;
  tasks.clear();
  // Token blocks vary fastest: consecutive tasks share a weight block (warm in L2/L3).
  for (size_t i = 0; i < ops.size(); ++i)
    for (int64_t n0 = 0; n0 < ops[i].out_features; n0 += kGemmNB)
      for (int64_t m0 = 0; m0 < M; m0 += mb)
        tasks.push_back({static_cast<int>(i), n0, std::min(ops[i].out_features, n0 + kGemmNB), m0, std::min(mb, M - m0)});
  const Task* const task = tasks.data();
  constexpr int64_t ldc = kGemmNB;
  pool.parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    thread_local AlignedFloats buffer;  // the c tile, then the weight pack
    float* const c = buffer.get(kGemmMB * ldc + kGemmScratchFloats);
    for (int64_t t = begin; t < end; ++t) {
      const Task& k = task[t];
      const LinearArgs& a = ops[k.op];
      kern.gemm(GemmJob{xp + k.m0 * K, k.mb, a.weight, a.weight_dtype, K, k.n0, k.n1 - k.n0, c, ldc, c + kGemmMB * ldc});
      out_of(a).store_tile(c, ldc, k.m0, k.mb, k.n0, k.n1 - k.n0);
    }
  });
}

void run_linears(const std::vector<LinearArgs>& ops, CpuSimd simd) {
  if (ops.empty() || ops.front().num_tokens == 0) return;
  const Kernels kern = kernels(simd);
  if (ops.front().num_tokens <= linear_kernels::kGemvMaxRows) run_gemv(ops, kern);
  else run_gemm(ops, kern);
}

// linear_many's ops must share the input.
void check_many(const LinearArgs* args, size_t count) {
  PAGEDLLM_CHECK(args || count == 0, InvalidArgument, "linear_many: null args");
  for (size_t i = 0; i < count; ++i) {
    check_linear(args[i]);
    const LinearArgs& a = args[i];
    PAGEDLLM_CHECK(a.x == args[0].x && a.x_stride == args[0].x_stride && a.x_dtype == args[0].x_dtype &&
                       a.num_tokens == args[0].num_tokens && a.in_features == args[0].in_features,
                   InvalidArgument, "linear_many: linear ", i,
                   " has another input than linear 0 (x, x_stride, x_dtype, num_tokens and in_features must match)");
  }
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------

void linear_many_cpu(const LinearArgs* args, size_t count, Stream& stream, CpuSimd simd) {
  PAGEDLLM_CHECK(cpu_simd_supported(simd), Unsupported, "linear: this CPU lacks the ", cpu_simd_name(simd), " path's instructions");
  as_cpu_stream(stream).enqueue([ops = std::vector<LinearArgs>(args, args + count), simd] { run_linears(ops, simd); });
}

void linear_cpu(const LinearArgs& a, Stream& stream, CpuSimd simd) { linear_many_cpu(&a, 1, stream, simd); }

void linear_cpu(const LinearArgs& a, Stream& stream) { linear_cpu(a, stream, cpu_simd()); }

void linear(const LinearArgs& a, Stream& stream) { linear_many(&a, 1, stream); }

void linear_many(const LinearArgs* args, size_t count, Stream& stream) {
  check_many(args, count);
  if (count == 0 || args[0].num_tokens == 0) return;
  if (stream.device().is_cpu()) {
    linear_many_cpu(args, count, stream, cpu_simd());
    return;
  }
  for (size_t i = 0; i < count; ++i) linear_cuda(args[i], stream);
}

}  // namespace pagedllm
