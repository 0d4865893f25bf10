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
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
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

// One path's kernels (the int8 ones are null on the portable path, which never sees Slab8 weights;
// the activations are quantized by the AVX2 routine on both wider paths).
struct Kernels {
  void (*gemv)(const awq_kernels::AwqGemvJob&);
  void (*gemm)(const awq_kernels::AwqGemmJob&);
  void (*pack_x)(const linear_kernels::PackXJob&);
  void (*gemv_i8)(const awq_kernels::AwqGemvI8Job&);
  void (*gemm_i8)(const awq_kernels::AwqGemmI8Job&);
};

Kernels kernels(CpuSimd simd) {
  using namespace awq_kernels;
  if (simd == CpuSimd::Avx512) return {gemv_avx512, gemm_block_avx512, linear_kernels::pack_x_avx512, gemv_i8_avx512, gemm_i8_avx512};
  if (simd == CpuSimd::Avx2) return {gemv_avx2, gemm_block_avx2, linear_kernels::pack_x_avx2, gemv_i8_avx2, gemm_i8_avx2};
  return {gemv_portable, gemm_block_portable, linear_kernels::pack_x_portable, nullptr, nullptr};
}

// M ≤ 8, for one or more ops of one input (awq_linear_many: same x, M, K and group size): the
// partial products of row ranges, then their sums. Jobs are ranges of whole `block_rows`-row blocks
// of an op's weight: each streams a contiguous stretch of it into partial[job] ([M][N]; a few
// hundred KiB at most). Every op's jobs are one pool pass; the thread that finishes an op's last
// job sums that op's partials (in job order) and stores its output, so no second pass (and no
// second fork/join) is needed.
// job(a, k0, k1, y, scratch) computes rows [k0, k1) of op a into y ([M][N]).
template <typename Job>
void run_row_jobs(const std::vector<AwqLinearArgs>& ops, int64_t block_rows, Job&& job) {
  const AwqLinearArgs& a0 = ops.front();
  const int64_t M = a0.num_tokens, K = a0.weight.in_features, blocks = (K + block_rows - 1) / block_rows;
  ThreadPool& pool = ThreadPool::global();
  const int64_t jobs_wanted = pool.size() > 1 ? 4 * pool.size() : 1;
  const int64_t grain = std::max<int64_t>(1, (blocks + jobs_wanted - 1) / jobs_wanted), jobs = (blocks + grain - 1) / grain;
  // Op i's partial sums start at partial + offset[i]; job t is op t / jobs, blocks of job t % jobs.
  // (Reused across calls, thread_local: a fresh buffer would be mmap-ed and page-faulted in on every
  // call, a sizeable part of a 0.5 ms decode GEMV; the lambdas below run on other threads, so they
  // use the pointers, never the names.)
  thread_local std::vector<int64_t> offset_storage;
  thread_local std::vector<float> partial_storage;
  thread_local size_t counters = 0;
  thread_local std::unique_ptr<std::atomic<int64_t>[]> remaining_storage;
  offset_storage.assign(ops.size() + 1, 0);
  for (size_t i = 0; i < ops.size(); ++i) offset_storage[i + 1] = offset_storage[i] + jobs * M * ops[i].weight.out_features;
  partial_storage.resize(offset_storage.back());  // every element is written by its job
  if (counters < ops.size()) {
    remaining_storage.reset(new std::atomic<int64_t>[ops.size()]);
    counters = ops.size();
  }
  for (size_t i = 0; i < ops.size(); ++i) remaining_storage[i].store(jobs, std::memory_order_relaxed);
  float* const partial = partial_storage.data();
  const int64_t* const offset = offset_storage.data();
  std::atomic<int64_t>* const remaining = remaining_storage.get();
  pool.parallel_ranges(static_cast<int64_t>(ops.size()) * jobs, [&](int64_t t) {
    thread_local AlignedFloats scratch;
    thread_local std::vector<float> y;
    const size_t i = static_cast<size_t>(t / jobs);
    const AwqLinearArgs& a = ops[i];
    const int64_t N = a.weight.out_features, b0 = (t % jobs) * grain, b1 = std::min(blocks, b0 + grain);
    const float* const p = partial + offset[i];
    job(a, b0 * block_rows, std::min(K, b1 * block_rows), partial + offset[i] + (t % jobs) * M * N, scratch);
    // The last of op i's jobs (acq_rel: every other job's partial is visible here) sums them.
    if (remaining[i].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    y.assign(p, p + M * N);
    for (int64_t j = 1; j < jobs; ++j)
      for (int64_t e = 0; e < M * N; ++e) y[e] += p[j * M * N + e];
    out_of(a).store_tile(y.data(), N, 0, M, 0, N);
  });
}

// The float32 gemv: x converted to float32 once per call, with its sums per block of rows.
void run_gemv(const std::vector<AwqLinearArgs>& ops, const Kernels& kern) {
  using namespace awq_kernels;
  const AwqLinearArgs& a0 = ops.front();
  const int64_t M = a0.num_tokens, K = a0.weight.in_features;
  const int64_t kb = awq_gemv_block_rows(a0.weight.group_size), blocks = (K + kb - 1) / kb;
  thread_local std::vector<float> x_storage, xsum_storage;  // reused across calls (run_row_jobs)
  x_storage.resize(M * K);
  xsum_storage.resize(M * blocks);
  float* const x = x_storage.data();
  float* const xsum = xsum_storage.data();
  for (int64_t m = 0; m < M; ++m) {
    load_row(a0.x, a0.x_dtype, m * a0.x_stride, K, x + m * K);
    for (int64_t b = 0; b < blocks; ++b) {
      float sum = 0.0f;
      for (int64_t k = b * kb; k < std::min(K, (b + 1) * kb); ++k) sum += x[m * K + k];
      xsum[m * blocks + b] = sum;
    }
  }
  run_row_jobs(ops, kb, [&](const AwqLinearArgs& a, int64_t k0, int64_t k1, float* y, AlignedFloats& scratch) {
    const int64_t N = a.weight.out_features;
    kern.gemv(AwqGemvJob{x, xsum, M, &a.weight, k0, k1, 0, N / 8, y, N, scratch.get(awq_gemv_scratch_floats(M, N / 8))});
  });
}

// The int8 gemv over Slab8 weights (AVX2, AVX-512): x quantized once per call (awq_quantize_activations).
void run_gemv_i8(const std::vector<AwqLinearArgs>& ops, const Kernels& kern) {
  using namespace awq_kernels;
  const AwqLinearArgs& a0 = ops.front();
  const int64_t M = a0.num_tokens, K = a0.weight.in_features;  // a multiple of 32 (Slab8)
  const int64_t xblocks = K / awq::kActivationBlock;
  thread_local std::vector<float> x_storage, scale_storage, sum_storage;  // reused across calls (run_row_jobs)
  thread_local std::vector<int8_t> code_storage;
  x_storage.resize(K);
  code_storage.resize(M * K);
  scale_storage.resize(M * xblocks);
  sum_storage.resize(M * xblocks);
  for (int64_t m = 0; m < M; ++m) {
    load_row(a0.x, a0.x_dtype, m * a0.x_stride, K, x_storage.data());
    quantize_activations_avx2(x_storage.data(), K, code_storage.data() + m * K, scale_storage.data() + m * xblocks,
                              sum_storage.data() + m * xblocks);
  }
  const int8_t* const codes = code_storage.data();
  const float* const scales = scale_storage.data();
  const float* const sums = sum_storage.data();
  run_row_jobs(ops, kAwqI8BlockRows, [&](const AwqLinearArgs& a, int64_t k0, int64_t k1, float* y, AlignedFloats& scratch) {
    const int64_t N = a.weight.out_features;
    kern.gemv_i8(AwqGemvI8Job{codes, K, scales, sums, xblocks, M, &a.weight, k0, k1, y, N,
                              scratch.get(awq_gemv_i8_scratch_floats(M, N))});
  });
}

void run_gemm(const AwqLinearArgs& a, const Kernels& kern) {
  using namespace awq_kernels;
  const AwqWeight& w = a.weight;
  const int64_t M = a.num_tokens, K = w.in_features, N = w.out_features;
  // x in 6-row panels, [panel][k][row], zero past M: every weight block's tile reads them in order.
  const int64_t panels = (M + kAwqGemmMR - 1) / kAwqGemmMR;
  thread_local AlignedFloats xp_storage;  // reused across calls (see run_gemv)
  float* xp = xp_storage.get(panels * K * kAwqGemmMR);
  ThreadPool& pool = ThreadPool::global();
  pool.parallel_for(panels, 1, [&](int64_t q0, int64_t q1) {
    kern.pack_x(linear_kernels::PackXJob{a.x, a.x_stride, a.x_dtype, M, K, q0, q1, xp});
  });
  const int64_t blocks = (N + kAwqGemmNB - 1) / kAwqGemmNB;
  pool.parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    thread_local AlignedFloats c, scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kAwqGemmNB, nb = std::min(kAwqGemmNB, N - n0);
      AwqGemmJob job{xp, M, &w, n0, nb, c.get(panels * kAwqGemmMR * kAwqGemmNB), kAwqGemmNB,
                     scratch.get(kAwqGemmNB * kAwqGemmKC)};
      kern.gemm(job);
      out_of(a).store_tile(job.c, kAwqGemmNB, 0, M, n0, nb);
    }
  });
}

// The int8 GEMM over a Slab8 weight (AVX2, AVX-512): x quantized and packed in 6-row panels once per call
// (threads over panels), then tasks of a few column octets, each over every panel.
void run_gemm_i8(const AwqLinearArgs& a, const Kernels& kern) {
  using namespace awq_kernels;
  constexpr int64_t MR = kAwqI8PanelRows, B = awq::kActivationBlock;
  const AwqWeight& w = a.weight;
  const int64_t M = a.num_tokens, K = w.in_features, N = w.out_features, G = w.group_size;
  const int64_t panels = (M + MR - 1) / MR, blocks = K / B, groups = K / G;
  thread_local std::vector<int8_t> xq_storage;  // reused across calls (see run_row_jobs)
  thread_local std::vector<float> xd_storage, xs_storage;
  xq_storage.resize(panels * blocks * MR * B);
  xd_storage.resize(panels * blocks * MR);
  xs_storage.resize(panels * groups * MR);
  int8_t* const xq = xq_storage.data();
  float* const xd = xd_storage.data();
  float* const xs = xs_storage.data();
  ThreadPool& pool = ThreadPool::global();
  pool.parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
    thread_local std::vector<float> row, scale, sum;
    thread_local std::vector<int8_t> codes;
    row.resize(K);
    codes.resize(K);
    scale.resize(blocks);
    sum.resize(blocks);
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t r = 0; r < MR; ++r) {
        const int64_t m = p * MR + r;
        if (m < M) {
          load_row(a.x, a.x_dtype, m * a.x_stride, K, row.data());
          quantize_activations_avx2(row.data(), K, codes.data(), scale.data(), sum.data());
        } else {  // padding rows: zero codes and scales
          std::fill(codes.begin(), codes.end(), int8_t{0});
          std::fill(scale.begin(), scale.end(), 0.0f);
          std::fill(sum.begin(), sum.end(), 0.0f);
        }
        for (int64_t b = 0; b < blocks; ++b) {
          std::memcpy(xq + ((p * blocks + b) * MR + r) * B, codes.data() + b * B, B);
          xd[(p * blocks + b) * MR + r] = scale[b];
        }
        for (int64_t g = 0; g < groups; ++g) {
          float sx = 0.0f;  // in block order, as the gemv sums them
          for (int64_t b = g * (G / B); b < (g + 1) * (G / B); ++b) sx += sum[b];
          xs[(p * groups + g) * MR + r] = sx;
        }
      }
  });
  constexpr int64_t kOctets = 4;  // columns per task: 32
  const int64_t tasks = (N / 8 + kOctets - 1) / kOctets;
  pool.parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    thread_local AlignedFloats c, wpack;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kOctets * 8, nb = std::min(kOctets * 8, N - n0);
      AwqGemmI8Job job{xq, xd, xs, panels, &w, n0, nb, c.get(panels * MR * kOctets * 8), kOctets * 8,
                       reinterpret_cast<int32_t*>(wpack.get(awq_gemm_i8_pack_words(K)))};
      kern.gemm_i8(job);
      out_of(a).store_tile(job.c, job.ldc, 0, M, n0, nb);
    }
  });
}

void run_awq_linears(const std::vector<AwqLinearArgs>& ops, CpuSimd simd) {
  if (ops.empty() || ops.front().num_tokens == 0) return;
  const Kernels kern = kernels(simd);
  if (ops.front().num_tokens <= awq_kernels::kAwqGemvMaxRows) {  // each layout's ops as one pass
    const AwqLayout layout = ops.front().weight.layout;
    if (std::all_of(ops.begin(), ops.end(), [&](const AwqLinearArgs& a) { return a.weight.layout == layout; }))
      return layout == AwqLayout::Slab8 ? run_gemv_i8(ops, kern) : run_gemv(ops, kern);  // the usual case: no split
    std::vector<AwqLinearArgs> slab, autoawq;
    for (const AwqLinearArgs& a : ops) (a.weight.layout == AwqLayout::Slab8 ? slab : autoawq).push_back(a);
    if (!slab.empty()) run_gemv_i8(slab, kern);
    if (!autoawq.empty()) run_gemv(autoawq, kern);
    return;
  }
  for (const AwqLinearArgs& a : ops) {
    if (a.weight.layout == AwqLayout::Slab8) run_gemm_i8(a, kern);
    else run_gemm(a, kern);
  }
}

// awq_linear_many's ops must share the input (and the group size: the activations' block sums).
void check_many(const AwqLinearArgs* args, size_t count) {
  PAGEDLLM_CHECK(args || count == 0, InvalidArgument, "awq_linear_many: null args");
  for (size_t i = 0; i < count; ++i) {
    check_awq_linear(args[i]);
    const AwqLinearArgs& a = args[i];
    PAGEDLLM_CHECK(a.x == args[0].x && a.x_stride == args[0].x_stride && a.x_dtype == args[0].x_dtype &&
                       a.num_tokens == args[0].num_tokens && a.weight.in_features == args[0].weight.in_features &&
                       a.weight.group_size == args[0].weight.group_size,
                   InvalidArgument, "awq_linear_many: linear ", i,
                   " has another input than linear 0 (x, x_stride, x_dtype, num_tokens, in_features and group_size must match)");
  }
}


// Rows [k0, k1) of W, word by word: the 8 codes of a word in column order, each (q − z)·s rounded
// once to float16 — the same value as awq_reference_weight, computed without it.
void dequantize_rows(const AwqDequantizeArgs& a, int64_t k0, int64_t k1) {
  const AwqWeight& w = a.weight;
  const int64_t N = w.out_features, words = N / 8;
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t g = k / w.group_size;
    for (int64_t c = 0; c < words; ++c) {
      const uint32_t z = static_cast<uint32_t>(w.qzeros[g * words + c]);
      for (int j = 0; j < 8; ++j) {
        const float s = half_bits_to_float(w.scales[g * N + 8 * c + j]);
        const int q = awq_weight_code(w, k, 8 * c + j);
        const uint16_t h = float_to_half_bits(static_cast<float>(q - awq::code(z, j)) * s);
        if (a.out_dtype == DType::Float16) static_cast<uint16_t*>(a.out)[k * N + 8 * c + j] = h;
        else static_cast<float*>(a.out)[k * N + 8 * c + j] = half_bits_to_float(h);
      }
    }
  }
}

}  // namespace

// ---- entry points --------------------------------------------------------------------------------

AwqCpuActivations awq_cpu_activations(CpuSimd simd) {
  static const AwqCpuActivations chosen = [] {
    const char* env = std::getenv("PAGEDLLM_AWQ_ACTIVATIONS");
    return env && std::string(env) == "float32" ? AwqCpuActivations::Float32 : AwqCpuActivations::Int8;
  }();
  return simd != CpuSimd::Portable ? chosen : AwqCpuActivations::Float32;
}

const char* awq_cpu_activations_name(AwqCpuActivations activations) {
  return activations == AwqCpuActivations::Int8 ? "int8" : "float32";
}

const char* awq_layout_name(AwqLayout layout) {
  return layout == AwqLayout::AutoAwq ? "autoawq" : layout == AwqLayout::Slab8 ? "slab8" : "unknown";
}

void awq_linear_many_cpu(const AwqLinearArgs* args, size_t count, Stream& stream, CpuSimd simd) {
  check_many(args, count);
  PAGEDLLM_CHECK(cpu_simd_supported(simd), Unsupported, "awq_linear: this CPU lacks the ", cpu_simd_name(simd),
                 " path's instructions");
  for (size_t i = 0; i < count; ++i)
    PAGEDLLM_CHECK(args[i].weight.layout == AwqLayout::AutoAwq || simd != CpuSimd::Portable, Unsupported,
                   "awq_linear: a slab8 weight needs the avx2 or avx512 path (this call runs the ", cpu_simd_name(simd), " one)");
  if (count == 0 || args[0].num_tokens == 0) return;
  as_cpu_stream(stream).enqueue([ops = std::vector<AwqLinearArgs>(args, args + count), simd] { run_awq_linears(ops, simd); });
}

void awq_linear_cpu(const AwqLinearArgs& a, Stream& stream, CpuSimd simd) { awq_linear_many_cpu(&a, 1, stream, simd); }

void awq_linear_cpu(const AwqLinearArgs& a, Stream& stream) { awq_linear_cpu(a, stream, cpu_simd()); }

void awq_linear(const AwqLinearArgs& a, Stream& stream) { awq_linear_many(&a, 1, stream); }

void awq_linear_many(const AwqLinearArgs* args, size_t count, Stream& stream) {
  if (stream.device().is_cpu()) {
    awq_linear_many_cpu(args, count, stream, cpu_simd());
    return;
  }
  check_many(args, count);
  if (count == 0 || args[0].num_tokens == 0) return;
  for (size_t i = 0; i < count; ++i) awq_linear_cuda(args[i], stream);
}

void awq_dequantize_cpu(const AwqDequantizeArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    ThreadPool::global().parallel_for(a.weight.in_features, 16, [&](int64_t k0, int64_t k1) { dequantize_rows(a, k0, k1); });
  });
}

void awq_repack(const AwqRepackArgs& a, Stream& stream) {
  check_awq_weight(a.weight, "awq_repack");
  PAGEDLLM_CHECK(a.weight.layout == AwqLayout::AutoAwq, InvalidArgument, "awq_repack: the weight is already ",
                 awq_layout_name(a.weight.layout));
  PAGEDLLM_CHECK(a.weight.in_features % awq::kSlabKMultiple == 0, InvalidArgument,
                 "awq_repack: the slab8 layout needs in_features a multiple of 32, got ", a.weight.in_features);
  PAGEDLLM_CHECK(a.weight.qweight && a.dst, InvalidArgument, "awq_repack: null pointer");
  PAGEDLLM_CHECK(stream.device().is_cpu(), Unsupported, "awq_repack: the slab8 layout is for the CPU (the CUDA kernels read autoawq)");
  as_cpu_stream(stream).enqueue([a] {
    const int64_t N = a.weight.out_features, slabs = a.weight.in_features / awq::kSlabRows;
    ThreadPool::global().parallel_for(slabs, 8, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> slab(N);  // slab r is the same 4·N bytes in both layouts: in place through a copy
      const int64_t words = N / 8;
      for (int64_t r = r0; r < r1; ++r) {
        const int32_t* src = a.weight.qweight + r * N;  // rows 8r … 8r+7, [8][N/8] words
        std::fill(slab.begin(), slab.end(), 0);
        for (int t = 0; t < 8; ++t)
          for (int64_t c = 0; c < words; ++c) {
            const uint32_t word = static_cast<uint32_t>(src[t * words + c]);
            for (int j = 0; j < 8; ++j) slab[8 * c + j] |= static_cast<int32_t>(static_cast<uint32_t>(awq::code(word, j)) << awq::slab_shift(t));
          }
        std::memcpy(a.dst + r * N, slab.data(), N * sizeof(int32_t));
      }
    });
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
