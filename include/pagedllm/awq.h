// AWQ int4 weights (AutoAWQ "GEMM" checkpoints), defined once: the packing,
// the shape rules, the plain-loop reference dequantizer every test uses, and
// the ops that multiply by such a weight. Facts: ../shared/reference/formats.md §1.
//
// One quantized nn.Linear(in_features = K, out_features = N), group size G:
//   qweight [K, N/8]   int32   4-bit codes q ∈ [0, 15], 8 per word along the output dim, AWQ order
//   qzeros  [K/G, N/8] int32   4-bit zero points z, packed the same way
//   scales  [K/G, N]   float16 natural (un-interleaved) column order
// and the dequantized weight is W[k, n] = float16((q[k, n] − z[k / G, n]) · s[k / G, n]), shape
// [K, N] — in-major, the transpose of HF's nn.Linear weight, so y = x · W with no transpose.
// (q − z) · s is exact in float32 (a 5-bit integer times an 11-bit significand), so rounding it once
// to float16 is the value vLLM's kernels produce (formats.md §1.4) and tests may demand bit equality.
//
// Word c of a row holds output columns 8c … 8c+7: nibble slot i (bits 4i … 4i+3) holds column
// 8c + kOrder[i], so column 8c + j sits in slot kReverseOrder[j] — even columns in the low 16 bits,
// odd columns in the high 16 bits. A checkpoint's int32 words are little-endian on disk.
//
// Every kernel reads the AutoAWQ tensors as they are, with one exception: the CPU's int8 GEMV reads
// qweight repacked in place (same bytes, another order: AwqLayout::Slab8 below), which the model
// loader does once on a CPU whose gemv takes int8 activations. awq_weight_code and
// awq_dequantize_reference are the one definition of what either layout means.
#pragma once

#include <cstdint>

#include "pagedllm/convert.h"
#include "pagedllm/dtype.h"
#include "pagedllm/error.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/stream.h"

namespace pagedllm {

namespace awq {

constexpr int kBits = 4;
constexpr int kPackFactor = 8;  // codes per int32 word
// Slot i of a word holds column kOrder[i] of its 8 (AutoAWQ packing_utils AWQ_ORDER) …
constexpr int kOrder[kPackFactor] = {0, 2, 4, 6, 1, 3, 5, 7};
// … and column j is read from slot kReverseOrder[j] (AWQ_REVERSE_ORDER).
constexpr int kReverseOrder[kPackFactor] = {0, 4, 1, 5, 2, 6, 3, 7};
// Group sizes the kernels are tested for; a checkpoint's −1 (one group) is passed as G = K.
constexpr int64_t kGroupSizes[] = {32, 64, 128};

constexpr bool orders_are_inverse() {
  for (int j = 0; j < kPackFactor; ++j)
    if (kOrder[kReverseOrder[j]] != j || kReverseOrder[kOrder[j]] != j) return false;
  return true;
}
static_assert(orders_are_inverse(), "kOrder and kReverseOrder must be inverse permutations");
static_assert(kOrder[1] == 2 && kReverseOrder[1] == 4, "slot 1 holds column 2; column 1 is in slot 4");

// The two permutations as arithmetic (usable in device code, where the host arrays are not).
PAGEDLLM_HD constexpr int slot_column(int i) { return (i & 3) * 2 + (i >> 2); }  // = kOrder[i]
PAGEDLLM_HD constexpr int column_slot(int j) { return (j >> 1) + 4 * (j & 1); }  // = kReverseOrder[j]
constexpr bool formulas_match_orders() {
  for (int i = 0; i < kPackFactor; ++i)
    if (slot_column(i) != kOrder[i] || column_slot(i) != kReverseOrder[i]) return false;
  return true;
}
static_assert(formulas_match_orders(), "slot_column / column_slot must equal kOrder / kReverseOrder");

// Bit offset of column j (0 … 7) inside its word.
PAGEDLLM_HD constexpr int column_shift(int j) { return kBits * column_slot(j); }
// The code of column j of a packed word.
PAGEDLLM_HD constexpr int code(uint32_t word, int j) { return static_cast<int>((word >> column_shift(j)) & 0xFu); }

// Packs the codes of 8 consecutive columns (each 0 … 15) into one word (AutoAWQ's pack).
constexpr uint32_t pack(const int (&codes)[kPackFactor]) {
  uint32_t word = 0;
  for (int i = 0; i < kPackFactor; ++i) word |= static_cast<uint32_t>(codes[kOrder[i]] & 0xF) << (kBits * i);
  return word;
}
// formats.md §1.5, the worked example: codes 1 … 8 pack to 0x86427531 (a sequential pack would be 0x87654321).
static_assert(pack({1, 2, 3, 4, 5, 6, 7, 8}) == 0x86427531u, "AWQ order: formats.md §1.5");
static_assert(pack({0, 1, 2, 3, 4, 5, 6, 7}) == 0x75316420u && pack({15, 0, 15, 0, 15, 0, 15, 0}) == 0x0000FFFFu,
              "AWQ order: formats.md §1.5");
static_assert(code(0x86427531u, 0) == 1 && code(0x86427531u, 1) == 2 && code(0x86427531u, 7) == 8,
              "unpacking inverts packing");

}  // namespace awq

// The order of qweight's words (qzeros and scales are always as AutoAWQ stores them):
//   AutoAwq: [K, N/8], the checkpoint's order (above).
//   Slab8:   [K/8, N], the CPU int8 GEMV's order (K a multiple of 32; CPU only): word (r, n) holds
//            column n's codes of rows 8r … 8r+7, row 8r + t at bit slab_shift(t) = 8·(t mod 4) +
//            4·⌊t/4⌋. Byte b of a word thus holds rows 8r + b (low nibble) and 8r + 4 + b (high), and
//            a 32-byte vector of 8 words, masked to its low nibbles, is 8 columns × 4 rows of bytes
//            that vpmaddubsw multiplies pairwise by 4 broadcast activation codes (the high nibbles:
//            the next 4 rows) — summed per column by vpmaddwd, with no shuffle, in natural column
//            order. Slab r is the same 4·N bytes as rows 8r … 8r+7 of the AutoAWQ tensor, so
//            awq_repack converts one to the other in place. Measured on a 2-core AVX2 VM: the GEMV
//            over Slab8 reads 1.4-1.8x faster per core than the byte-interleaving one it replaced
//            (which needed 4 unpacks and a per-block even/odd split per 64 bytes).
enum class AwqLayout : int32_t { AutoAwq = 0, Slab8 = 1 };
const char* awq_layout_name(AwqLayout layout);
namespace awq {
PAGEDLLM_HD constexpr int slab_shift(int t) { return 8 * (t & 3) + 4 * (t >> 2); }
constexpr int64_t kSlabRows = 8;
constexpr int64_t kSlabKMultiple = 32;  // K of a Slab8 weight: whole 32-row blocks (the GEMV's jobs)
}  // namespace awq

// One AWQ weight in device (or host) memory: the three AutoAWQ tensors, qweight in `layout` order.
struct AwqWeight {
  const int32_t* qweight;  // K · N/8 int32 words, contiguous, in `layout` order
  const int32_t* qzeros;   // [in_features / group_size, out_features / 8] int32, contiguous
  const uint16_t* scales;  // [in_features / group_size, out_features] float16 bits, contiguous
  int64_t in_features;     // K
  int64_t out_features;    // N, a multiple of 8
  int64_t group_size;      // G: 32, 64, 128, or in_features (a checkpoint's −1)
  AwqLayout layout = AwqLayout::AutoAwq;
};

// Throws ERR_INVALID_ARGUMENT for sizes the format cannot have (K ≤ 0, N not a positive multiple of 8,
// K not a multiple of G) and ERR_UNSUPPORTED for a group size outside kGroupSizes ∪ {K}. `op` prefixes
// the message.
inline void check_awq_weight(const AwqWeight& w, const char* op) {
  PAGEDLLM_CHECK(w.in_features > 0 && w.out_features > 0, InvalidArgument, op, ": in_features (", w.in_features,
                 ") and out_features (", w.out_features, ") must be positive");
  PAGEDLLM_CHECK(w.out_features % awq::kPackFactor == 0, InvalidArgument, op, ": out_features ", w.out_features,
                 " is not a multiple of 8 (8 int4 codes per int32)");
  PAGEDLLM_CHECK(w.in_features <= INT32_MAX && w.out_features <= INT32_MAX, InvalidArgument, op,
                 ": sizes must fit in 32 bits");
  bool listed = w.group_size == w.in_features;
  for (int64_t g : awq::kGroupSizes) listed = listed || w.group_size == g;
  PAGEDLLM_CHECK(listed, Unsupported, op, ": group size ", w.group_size,
                 " is not supported (supported: 32, 64, 128, or in_features for one group)");
  PAGEDLLM_CHECK(w.in_features % w.group_size == 0, InvalidArgument, op, ": in_features ", w.in_features,
                 " is not a multiple of the group size ", w.group_size);
  PAGEDLLM_CHECK(w.layout == AwqLayout::AutoAwq || w.layout == AwqLayout::Slab8, InvalidArgument, op, ": layout ",
                 static_cast<int>(w.layout), " is not a layout (0: autoawq, 1: slab8)");
  PAGEDLLM_CHECK(w.layout != AwqLayout::Slab8 || w.in_features % awq::kSlabKMultiple == 0, InvalidArgument, op,
                 ": the slab8 layout needs in_features a multiple of 32, got ", w.in_features);
}

// The code q[k, n] of a weight in either layout, by the definitions above.
inline int awq_weight_code(const AwqWeight& w, int64_t k, int64_t n) {
  if (w.layout == AwqLayout::Slab8)
    return static_cast<int>((static_cast<uint32_t>(w.qweight[(k / 8) * w.out_features + n]) >> awq::slab_shift(static_cast<int>(k % 8))) & 15u);
  return awq::code(static_cast<uint32_t>(w.qweight[k * (w.out_features / awq::kPackFactor) + n / 8]), static_cast<int>(n % 8));
}

// The reference repack (plain loops): AutoAWQ words src [K, N/8] → Slab8 words dst [K/8, N] (K a
// multiple of 8; src and dst distinct).
inline void awq_repack_slab8_reference(const int32_t* src, int32_t* dst, int64_t K, int64_t N) {
  const AwqWeight from{src, nullptr, nullptr, K, N, K};
  for (int64_t r = 0; r < K / 8; ++r)
    for (int64_t n = 0; n < N; ++n) {
      uint32_t word = 0;
      for (int t = 0; t < 8; ++t) word |= static_cast<uint32_t>(awq_weight_code(from, 8 * r + t, n)) << awq::slab_shift(t);
      dst[r * N + n] = static_cast<int32_t>(word);
    }
}

// The reference: W[k, n] of the dequantized weight (a float16 value, returned as float), by the
// definition, one element at a time.
inline float awq_reference_weight(const AwqWeight& w, int64_t k, int64_t n) {
  const int64_t words = w.out_features / awq::kPackFactor, g = k / w.group_size;
  const uint32_t zword = static_cast<uint32_t>(w.qzeros[g * words + n / 8]);
  const int q = awq_weight_code(w, k, n), z = awq::code(zword, static_cast<int>(n % 8));
  const float s = half_bits_to_float(w.scales[g * w.out_features + n]);
  return half_bits_to_float(float_to_half_bits(static_cast<float>(q - z) * s));
}

// The reference dequantizer: out[k · N + n] = W[k, n] for the whole [K, N] weight (host memory).
inline void awq_dequantize_reference(const AwqWeight& w, float* out) {
  for (int64_t k = 0; k < w.in_features; ++k)
    for (int64_t n = 0; n < w.out_features; ++n) out[k * w.out_features + n] = awq_reference_weight(w, k, n);
}

// ---- int8 activations (the CPU gemv's fast path) ------------------------------------------------
// x is cut into blocks of kActivationBlock values along K (the last may be short); block b is stored
// as int8 codes c ∈ [−127, 127] and one float scale d_b = max|x_b| / 127, so x̂ = d_b · c with
// c = round-to-nearest-even(x · (127 / max|x_b|)) and |x − x̂| ≤ d_b / 2. An all-zero block has d_b = 0;
// a block holding a non-finite value gets d_b = NaN (its outputs are NaN, as a float product would
// be non-finite), and a block with max|x_b| < 1e-30 counts as zero (its 127 / max|x_b| would
// overflow). awq_quantize_activations is the definition (plain loops); the AVX2 kernel computes
// the same codes and scales.
namespace awq {
constexpr int64_t kActivationBlock = 16;
}  // namespace awq
// x[0, n) → codes[0, n) and scales[0, ceil(n / 16)); returns nothing, never throws.
inline void awq_quantize_activations(const float* x, int64_t n, int8_t* codes, float* scales) {
  for (int64_t b0 = 0; b0 < n; b0 += awq::kActivationBlock) {
    const int64_t b1 = b0 + awq::kActivationBlock < n ? b0 + awq::kActivationBlock : n;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t k = b0; k < b1; ++k) {
      const float a = x[k] < 0 ? -x[k] : x[k];
      finite = finite && a <= 3.4028234663852886e38f;
      amax = a > amax ? a : amax;
    }
    float& d = scales[b0 / awq::kActivationBlock];
    if (!finite || amax < 1e-30f) {
      for (int64_t k = b0; k < b1; ++k) codes[k] = 0;
      d = finite ? 0.0f : __builtin_nanf("");
      continue;
    }
    const float inv = 127.0f / amax;
    d = amax / 127.0f;
    for (int64_t k = b0; k < b1; ++k) {
      const float r = __builtin_nearbyintf(x[k] * inv);  // ties to even (the default rounding mode)
      codes[k] = static_cast<int8_t>(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r);
    }
  }
}

// ---- awq_linear ----------------------------------------------------------------------------------
// out = x · W (+ bias): out[m, n] = Σ_k x[m, k] · W[k, n] (+ bias[n]), float32 accumulation, one
// rounding to out_dtype; x, bias and out of any float dtype. In GEMM terms M = num_tokens,
// N = out_features, K = in_features. Conventions as model_ops.h (args, stream, dispatch).
//   CPU:  M ≤ 8: a GEMV that streams the packed words once for all M rows (threads over row
//         ranges of K, each a contiguous stretch of memory), unpacking nibbles in registers and
//         applying each group's scale and zero point to per-group sums:
//         Σ_k x·W = Σ_g s·(Σ_{k∈g} x·q − z·Σ_{k∈g} x); AutoAwq weights multiply float32 x (the
//         products are not rounded to float16, so each term may differ from x·W by half a float16
//         ulp of W; tests allow it). M > 8, AutoAwq: a cache-blocked GEMM over panels dequantized to
//         exactly W (float32), 6 × 16 register tiles, threads over N. Slab8 weights (AVX2 only), at
//         any M: x quantized to int8 first (AwqCpuActivations below: faster, a bounded error), then
//         the gemv's int8 arithmetic — for M > 8 a GEMM of 6 × 8 register tiles over 6-row panels
//         of x, threads over N. AVX2+FMA+F16C or portable C++ (cpu_simd()); no AVX-512 variant yet.
//   CUDA: M small: a fused GEMV (the words read once, 16-byte loads, K split across warps); larger M:
//         a fused tensor-core GEMM (mma.sync m16n8k16, sm_80+, float16/bfloat16 x: W is rounded to
//         x's dtype, so bfloat16 x sees W to bfloat16 precision) or a float32 SIMT GEMM (sm_75,
//         float32 x); past a crossover, W is dequantized into a workspace (stream-ordered from the
//         device's default memory resource) and the dense linear GEMM of model_ops.h runs on it.
struct AwqLinearArgs {
  const void* x;  // [num_tokens, in_features] of x_dtype; token stride x_stride elements
  int64_t x_stride;
  DType x_dtype;
  AwqWeight weight;
  const void* bias;  // [out_features] of bias_dtype, or null
  DType bias_dtype;
  void* out;  // [num_tokens, out_features] of out_dtype; token stride out_stride elements
  int64_t out_stride;
  DType out_dtype;
  int64_t num_tokens;  // M
};
void awq_linear(const AwqLinearArgs& args, Stream& stream);
void awq_linear_cpu(const AwqLinearArgs& args, Stream& stream);
void awq_linear_cuda(const AwqLinearArgs& args, Stream& stream);
// awq_linear_cpu on a given SIMD path (tests and benchmarks compare them); ERR_UNSUPPORTED for Avx2 on
// a CPU without it.
void awq_linear_cpu(const AwqLinearArgs& args, Stream& stream, CpuSimd simd);

// The arithmetic of the CPU kernels, set by the weight's layout:
//   Float32 (AutoAwq): x as given (see awq_linear above).
//   Int8 (Slab8):      x quantized per 16 values (awq_quantize_activations) and multiplied by the codes
//            in integers (AVX2 vpmaddubsw), the scales and zero points applied per block and group in
//            float32 — several times the float32 kernels' speed: decode streams the weights at
//            memory speed, and prefill does 128 multiply-adds in 11 vector ops. The result is
//            Σ x̂ · W (each term within half a float16 ulp of W, as Float32), which differs from Σ x · W by at most Σ_k |W[k, n]| · |x[k] − x̂[k]| ≤
//            Σ_k |W[k, n]| · d_b / 2 (about 0.4 % of max|x| per block: llama.cpp's Q8_0 activations
//            make the same trade). The avx2 path only (ERR_UNSUPPORTED on another).
// awq_cpu_activations: which one a model loaded on this CPU uses — Int8 on the avx2 path (the loader
// repacks its AWQ weights to Slab8), Float32 on the portable one, or when PAGEDLLM_AWQ_ACTIVATIONS=
// float32 (read once per process).
enum class AwqCpuActivations { Float32, Int8 };
AwqCpuActivations awq_cpu_activations(CpuSimd simd);
const char* awq_cpu_activations_name(AwqCpuActivations activations);

// Several AWQ linears of one input — the same x, x_stride, x_dtype, num_tokens, in_features and
// group_size, each with its own weight, bias and out — as one op, bit-identical to awq_linear on
// each (linear_many's AWQ twin). CPU, M ≤ 8: x quantized (or its block sums taken) once, and one
// thread-pool pass over every weight's row blocks (each op's outputs summed by the thread that
// finishes its last block), where separate calls pay one pass each (ops of both layouts may be
// mixed: one pass per layout); larger M and CUDA: awq_linear on each.
void awq_linear_many(const AwqLinearArgs* args, size_t count, Stream& stream);
void awq_linear_many_cpu(const AwqLinearArgs* args, size_t count, Stream& stream, CpuSimd simd);

// ---- awq_repack ----------------------------------------------------------------------------------
// dst = qweight of `weight` (AutoAwq) in Slab8 order (K a multiple of 32). dst may be weight.qweight
// itself (in place: slab by slab, through a 4·N-byte buffer) or must not overlap it. CPU only
// (ERR_UNSUPPORTED on CUDA, whose kernels read AutoAwq). A Slab8 weight is dst with
// layout = AwqLayout::Slab8 and the same qzeros and scales.
struct AwqRepackArgs {
  AwqWeight weight;  // AutoAwq
  int32_t* dst;      // K · N/8 words
};
void awq_repack(const AwqRepackArgs& args, Stream& stream);

// The CUDA kernels of awq_linear, for tests and the crossover benchmark; Auto is the dispatch.
// TensorCore needs sm_80+ and float16/bfloat16 x (ERR_UNSUPPORTED otherwise). Gemv is the newer GEMV
// (M ≤ 8; the previous one where the weight's buffers are not aligned for its vector loads, or M > 8);
// GemvLegacy the previous GEMV always. The dispatch (Auto, M ≤ 8) takes GemvLegacy unless
// PAGEDLLM_AWQ_GEMV=new (read once per process): the newer one has not run on a GPU yet.
enum class AwqCudaKernel { Auto, Gemv, TensorCore, Simt, DequantGemm, GemvLegacy };
const char* awq_cuda_kernel_name(AwqCudaKernel kernel);
void awq_linear_cuda(const AwqLinearArgs& args, Stream& stream, AwqCudaKernel kernel);

// ---- awq_dequantize ------------------------------------------------------------------------------
// out[k, n] = W[k, n], [in_features, out_features] contiguous, float16 (bit-exact W) or float32 (W
// widened, also exact).
struct AwqDequantizeArgs {
  AwqWeight weight;
  void* out;  // [in_features, out_features] of out_dtype, contiguous
  DType out_dtype;
};
void awq_dequantize(const AwqDequantizeArgs& args, Stream& stream);
void awq_dequantize_cpu(const AwqDequantizeArgs& args, Stream& stream);
void awq_dequantize_cuda(const AwqDequantizeArgs& args, Stream& stream);

}  // namespace pagedllm
