// The forward-pass ops of a Llama-family decoder besides attention: token
// embedding, RMSNorm (optionally fused with the residual add), RoPE, the SiLU
// gate of the MLP, an element-wise add, and the dense linear layer (GEMM /
// GEMV). Formulas follow HF transformers' modeling_llama.py
// (../shared/reference/formats.md §5.3–§5.4) and vLLM's fused kernels.
//
// Conventions (DESIGN.md §1): each op is `<op>(args, stream)`, which checks
// the by-value arguments (sizes, dtypes) and dispatches on the stream's device
// to `<op>_cpu` / `<op>_cuda` with the same arguments. Every pointer is to
// memory of the stream's device; calls enqueue and return at once. Float
// dtypes are float32 / float16 / bfloat16; math is float32 everywhere and a
// result is rounded once (to nearest even) to its output dtype, except where
// an op says otherwise. Dimension names: num_tokens, hidden_size, vocab_size,
// num_heads, num_kv_heads, head_size (plus rotary_dim, intermediate_size,
// in_features, out_features where the vocabulary has no word).
#pragma once

#include <cstdint>
#include <vector>

#include "pagedllm/dtype.h"
#include "pagedllm/stream.h"

namespace pagedllm {

// ---- embedding ---------------------------------------------------------------------------------
// out[t, :] = weight[ids[t], :], converted to out_dtype.
// An id outside [0, vocab_size) is a caller bug: the CPU op reports ERR_INVALID_ARGUMENT at the next
// synchronisation (rows before it are written); the CUDA kernel writes a row of zeros for it (a
// kernel cannot throw, and reading outside the table is never an option).
struct EmbeddingArgs {
  const int32_t* ids;  // [num_tokens] int32
  int64_t num_tokens;
  const void* weight;  // [vocab_size, hidden_size] of weight_dtype, contiguous
  DType weight_dtype;
  int64_t vocab_size;
  int64_t hidden_size;
  void* out;  // [num_tokens, hidden_size] of out_dtype, contiguous
  DType out_dtype;
};
void embedding(const EmbeddingArgs& args, Stream& stream);
void embedding_cpu(const EmbeddingArgs& args, Stream& stream);
void embedding_cuda(const EmbeddingArgs& args, Stream& stream);

// ---- rms_norm ----------------------------------------------------------------------------------
// Per token, with h the row being normalised:
//   plain:  h = x
//   fused:  residual = round_residual(x + residual); h = residual   (vLLM fused_add_rms_norm: the
//           sum is stored first, and the norm reads the stored, rounded value, as HF's `h = h + …`)
//   out = round_out(round_h(h · rsqrt(mean(h²) + eps)) · weight)
// where round_h rounds to h's dtype (x's, or residual's when fused) — HF LlamaRMSNorm casts the
// normalised value back to the input dtype before the weight multiply; a float32 h skips it.
// mean(h²) is accumulated in float32. `out` may be `x` itself (same dtype and stride): each row is
// read completely before it is written.
struct RmsNormArgs {
  const void* x;  // [num_tokens, hidden_size] of x_dtype; token stride x_stride elements
  int64_t x_stride;
  DType x_dtype;
  void* residual;  // [num_tokens, hidden_size] of residual_dtype, token stride residual_stride; null: plain
  int64_t residual_stride;
  DType residual_dtype;
  const void* weight;  // [hidden_size] of weight_dtype
  DType weight_dtype;
  void* out;  // [num_tokens, hidden_size] of out_dtype; token stride out_stride
  int64_t out_stride;
  DType out_dtype;
  int64_t num_tokens;
  int64_t hidden_size;
  float eps;
};
void rms_norm(const RmsNormArgs& args, Stream& stream);
void rms_norm_cpu(const RmsNormArgs& args, Stream& stream);
void rms_norm_cuda(const RmsNormArgs& args, Stream& stream);

// ---- rope --------------------------------------------------------------------------------------
// Rotary position embedding, in place, HF "rotate_half" (vLLM is_neox_style) convention: within the
// first rotary_dim dimensions of every head, dimension i < rotary_dim/2 is paired with
// i + rotary_dim/2, and with p = positions[t], f = inv_freq[i]:
//   angle = float32(float32(p) · f)             (HF: position_ids.float() @ inv_freq, in float32)
//   c, s  = cos(angle), sin(angle)              (float32)
//   x'[i]              = x[i] · c − x[i + rotary_dim/2] · s
//   x'[i + rotary_dim/2] = x[i + rotary_dim/2] · c + x[i] · s
// Dimensions [rotary_dim, head_size) are left as they are (partial rotary). The rotation is done in
// float32 and rounded once; HF rounds cos/sin to the activation dtype first, so float16/bfloat16
// results may differ from HF by an ulp. inv_freq carries any scaling (linear, llama3): lib/ops.ts
// ropeInvFreq computes it as HF's modeling_rope_utils does.
// query and key may be views into one fused QKV row (their token strides say so); key may be null.
struct RopeArgs {
  void* query;  // [num_tokens, num_heads, head_size] of dtype; token stride query_stride, heads contiguous
  int64_t query_stride;
  void* key;  // [num_tokens, num_kv_heads, head_size] of dtype; token stride key_stride; null: query only
  int64_t key_stride;
  DType dtype;
  const int32_t* positions;  // [num_tokens] int32
  const float* inv_freq;     // [rotary_dim / 2] float32
  int64_t num_tokens;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_size;
  int64_t rotary_dim;  // even, ≤ head_size
};
void rope(const RopeArgs& args, Stream& stream);
void rope_cpu(const RopeArgs& args, Stream& stream);
void rope_cuda(const RopeArgs& args, Stream& stream);

// ---- silu_mul ----------------------------------------------------------------------------------
// The Llama MLP gate on a merged gate_up projection: out[t, i] = silu(x[t, i]) · x[t, I + i] with
// I = intermediate_size and silu(g) = g / (1 + exp(−g)), in float32.
struct SiluMulArgs {
  const void* x;  // [num_tokens, 2 · intermediate_size] of dtype (gate, then up); token stride x_stride
  int64_t x_stride;
  void* out;  // [num_tokens, intermediate_size] of dtype, contiguous
  DType dtype;
  int64_t num_tokens;
  int64_t intermediate_size;
};
void silu_mul(const SiluMulArgs& args, Stream& stream);
void silu_mul_cpu(const SiluMulArgs& args, Stream& stream);
void silu_mul_cuda(const SiluMulArgs& args, Stream& stream);

// ---- add ---------------------------------------------------------------------------------------
// out[i] = a[i] + b[i] for i < n (float32 math); out may be a or b.
struct AddArgs {
  const void* a;  // [n] of dtype
  const void* b;  // [n] of dtype
  void* out;      // [n] of dtype
  DType dtype;
  int64_t n;
};
void add(const AddArgs& args, Stream& stream);
void add_cpu(const AddArgs& args, Stream& stream);
void add_cuda(const AddArgs& args, Stream& stream);

// ---- linear ------------------------------------------------------------------------------------
// out = x · weightᵀ (+ bias): out[m, n] = Σ_k x[m, k] · weight[n, k] (+ bias[n]), float32
// accumulation, one rounding to out_dtype. weight is in HF nn.Linear orientation [out, in].
// In GEMM terms M = num_tokens, N = out_features, K = in_features.
//   CPU:  M ≤ 8 streams each weight row once for all M tokens (decode is a bandwidth problem);
//         larger M is cache-blocked (weight panels packed to float32, 6×16 register tiles).
//         AVX2+FMA+F16C kernels where the CPU has them, portable C++ otherwise (cpu_simd()).
//   CUDA: M ≤ 8: a GEMV kernel (a warp per weight row, 16-byte loads); larger M: tensor cores
//         (mma.sync m16n8k16, float32 accumulate) on sm_80+ when x and weight share a 16-bit
//         dtype, else a float32 SIMT tiled GEMM (float32 weights or activations, sm_75).
//         The CUDA kernels need no workspace and no cuBLAS.
struct LinearArgs {
  const void* x;  // [num_tokens, in_features] of x_dtype; token stride x_stride elements
  int64_t x_stride;
  DType x_dtype;
  const void* weight;  // [out_features, in_features] of weight_dtype, contiguous
  DType weight_dtype;
  const void* bias;  // [out_features] of bias_dtype, or null
  DType bias_dtype;
  void* out;  // [num_tokens, out_features] of out_dtype; token stride out_stride elements
  int64_t out_stride;
  DType out_dtype;
  int64_t num_tokens;    // M
  int64_t out_features;  // N
  int64_t in_features;   // K
};
void linear(const LinearArgs& args, Stream& stream);
void linear_cpu(const LinearArgs& args, Stream& stream);
void linear_cuda(const LinearArgs& args, Stream& stream);

// Several linears of one input — the same x, x_stride, x_dtype, num_tokens and in_features, each
// with its own weight, bias and out — as one op: the results are bit-identical to linear on each
// in turn. CPU: x is converted (or packed) once and one fork/join of the thread pool covers every
// weight's rows, where separate calls pay one each and leave threads idle at the end of small ones
// (the decoder's q, k, v and gate, up projections). CUDA: linear on each.
void linear_many(const LinearArgs* args, size_t count, Stream& stream);

// The CPU kernels' instruction set, one choice for every CPU op (linear, awq_linear, paged
// attention). Chosen at first use, the widest the CPU and OS support: Avx512 (AVX-512 F/BW/VL +
// VNNI, and everything Avx2 needs: 512-bit GEMM tiles, VNNI int8 dot products in the AWQ kernels),
// else Avx2 (AVX2 + FMA + F16C), else portable C++. PAGEDLLM_SIMD=portable|avx2|avx512 in the
// environment caps the choice (PAGEDLLM_SIMD=avx512 on a CPU without it gets the best it has:
// never an instruction the CPU lacks). Paths are ordered: each one's CPU runs every narrower one.
enum class CpuSimd { Portable, Avx2, Avx512 };
CpuSimd cpu_simd();
const char* cpu_simd_name(CpuSimd simd);
// Whether this CPU (and OS) can run `simd`; and every path it can run, portable first.
bool cpu_simd_supported(CpuSimd simd);
std::vector<CpuSimd> cpu_simd_paths();
// linear_cpu on a given path (tests and benchmarks compare them); ERR_UNSUPPORTED for a path the CPU
// lacks.
void linear_cpu(const LinearArgs& args, Stream& stream, CpuSimd simd);
void linear_many_cpu(const LinearArgs* args, size_t count, Stream& stream, CpuSimd simd);

}  // namespace pagedllm
