// embedding, rms_norm, rope, silu_mul and add on the CPU — the readable
// references of cuda/model_ops.cu — and the argument checks and dispatch
// shared by both backends. Semantics: include/pagedllm/model_ops.h.
//
// These ops touch each element a few times, so they are limited by memory
// bandwidth: rows are split over the shared thread pool and the inner loops
// are plain float32 loops the compiler vectorises. (linear is in linear.cpp.)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_stream.h"
#include "float_rows.h"
#include "pagedllm/convert.h"
#include "pagedllm/model_ops.h"
#include "thread_pool.h"

namespace pagedllm {

namespace {

// ---- element access ----------------------------------------------------------------------

void check_float(const char* op, const char* name, DType t) {
  PAGEDLLM_CHECK(is_float(t), Unsupported, op, ": ", name, *name ? " " : "", "dtype ", dtype_name(t),
                 " (supported: float32, float16, bfloat16)");
}

// Σ v[i]² in float32 over eight lanes (vectorisable; a shorter error chain than one running sum).
float sum_squares(const float* v, int64_t n) {
  float lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += v[i + l] * v[i + l];
  for (; i < n; ++i) lanes[i % 8] += v[i] * v[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

// The value a float32 takes once stored as t.
float round_to(DType t, float v) {
  switch (t) {
    case DType::Float16: return to_float(from_float<half_t>(v));
    case DType::BFloat16: return to_float(from_float<bfloat16_t>(v));
    default: return v;
  }
}

// Rows [0, rows) over the pool, `grain` rows a chunk so each chunk is ~64 KiB of work.
template <typename F>
void for_rows(int64_t rows, int64_t row_elements, F&& f) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_elements));
  ThreadPool::global().parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

}  // namespace

// ---- embedding ----------------------------------------------------------------------------

void embedding_cpu(const EmbeddingArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    for_rows(a.num_tokens, a.hidden_size, [&](int64_t t) {
      thread_local std::vector<float> row;
      const int64_t id = a.ids[t];
      PAGEDLLM_CHECK(id >= 0 && id < a.vocab_size, InvalidArgument, "embedding: token ", t, " has id ", id,
                     ", outside the vocabulary [0, ", a.vocab_size, ")");
      row.resize(a.hidden_size);
      load_row(a.weight, a.weight_dtype, id * a.hidden_size, a.hidden_size, row.data());
      store_row(a.out, a.out_dtype, t * a.hidden_size, a.hidden_size, row.data());
    });
  });
}

void embedding(const EmbeddingArgs& a, Stream& stream) {
  check_float("embedding", "weight", a.weight_dtype);
  check_float("embedding", "out", a.out_dtype);
  PAGEDLLM_CHECK(a.num_tokens >= 0 && a.vocab_size > 0 && a.hidden_size > 0, InvalidArgument,
                 "embedding: num_tokens (", a.num_tokens, ") must be ≥ 0, vocab_size (", a.vocab_size,
                 ") and hidden_size (", a.hidden_size, ") positive");
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) embedding_cpu(a, stream);
  else embedding_cuda(a, stream);
}

// ---- rms_norm ---------------------------------------------------------------------------

void rms_norm_cpu(const RmsNormArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    const int64_t H = a.hidden_size;
    std::vector<float> weight(H);
    load_row(a.weight, a.weight_dtype, 0, H, weight.data());
    const DType h_dtype = a.residual ? a.residual_dtype : a.x_dtype;
    for_rows(a.num_tokens, H, [&](int64_t t) {
      thread_local std::vector<float> h;
      h.resize(H);
      load_row(a.x, a.x_dtype, t * a.x_stride, H, h.data());
      if (a.residual) {
        thread_local std::vector<float> r;
        r.resize(H);
        load_row(a.residual, a.residual_dtype, t * a.residual_stride, H, r.data());
        // (The dtype tested once per row, not per element: the float32 loops vectorise.)
        if (a.residual_dtype == DType::Float32)
          for (int64_t i = 0; i < H; ++i) h[i] = h[i] + r[i];
        else
          for (int64_t i = 0; i < H; ++i) h[i] = round_to(a.residual_dtype, h[i] + r[i]);
        store_row(a.residual, a.residual_dtype, t * a.residual_stride, H, h.data());
      }
      const float sum = sum_squares(h.data(), H);
      const float scale = 1.0f / std::sqrt(sum / static_cast<float>(H) + a.eps);
      if (h_dtype == DType::Float32)
        for (int64_t i = 0; i < H; ++i) h[i] = (h[i] * scale) * weight[i];
      else
        for (int64_t i = 0; i < H; ++i) h[i] = round_to(h_dtype, h[i] * scale) * weight[i];
      store_row(a.out, a.out_dtype, t * a.out_stride, H, h.data());
    });
  });
}

void rms_norm(const RmsNormArgs& a, Stream& stream) {
  check_float("rms_norm", "x", a.x_dtype);
  check_float("rms_norm", "weight", a.weight_dtype);
  check_float("rms_norm", "out", a.out_dtype);
  if (a.residual) check_float("rms_norm", "residual", a.residual_dtype);
  PAGEDLLM_CHECK(a.num_tokens >= 0 && a.hidden_size > 0, InvalidArgument, "rms_norm: num_tokens (", a.num_tokens,
                 ") must be ≥ 0 and hidden_size (", a.hidden_size, ") positive");
  PAGEDLLM_CHECK(a.x_stride >= a.hidden_size && a.out_stride >= a.hidden_size &&
                     (!a.residual || a.residual_stride >= a.hidden_size),
                 InvalidArgument, "rms_norm: token strides must be at least hidden_size (", a.hidden_size, ")");
  PAGEDLLM_CHECK(std::isfinite(a.eps) && a.eps >= 0, InvalidArgument, "rms_norm: eps ", a.eps, " must be finite and ≥ 0");
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) rms_norm_cpu(a, stream);
  else rms_norm_cuda(a, stream);
}

// ---- rope -------------------------------------------------------------------------------

void rope_cpu(const RopeArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    const int64_t half = a.rotary_dim / 2, D = a.head_size;
    for_rows(a.num_tokens, (a.num_heads + a.num_kv_heads) * D, [&](int64_t t) {
      thread_local std::vector<float> cs, x;
      cs.resize(2 * half);
      x.resize(a.rotary_dim);
      // angle = float32(position) · inv_freq in float32, as HF (the product is rounded, then cos/sin).
      const float p = static_cast<float>(a.positions[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * a.inv_freq[i];
        cs[i] = std::cos(angle);
        cs[half + i] = std::sin(angle);
      }
      auto rotate = [&](void* base, int64_t stride, int64_t heads) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t at = t * stride + h * D;
          load_row(base, a.dtype, at, a.rotary_dim, x.data());
          for (int64_t i = 0; i < half; ++i) {
            const float x1 = x[i], x2 = x[half + i], c = cs[i], s = cs[half + i];
            x[i] = x1 * c - x2 * s;
            x[half + i] = x2 * c + x1 * s;
          }
          store_row(base, a.dtype, at, a.rotary_dim, x.data());
        }
      };
      rotate(a.query, a.query_stride, a.num_heads);
      if (a.key) rotate(a.key, a.key_stride, a.num_kv_heads);
    });
  });
}

void rope(const RopeArgs& a, Stream& stream) {
  check_float("rope", "query/key", a.dtype);
  PAGEDLLM_CHECK(a.num_tokens >= 0 && a.num_heads > 0 && a.head_size > 0 && (!a.key || a.num_kv_heads > 0), InvalidArgument,
                 "rope: num_tokens must be ≥ 0; num_heads, num_kv_heads and head_size positive");
  PAGEDLLM_CHECK(a.rotary_dim > 0 && a.rotary_dim % 2 == 0 && a.rotary_dim <= a.head_size, InvalidArgument,
                 "rope: rotary_dim ", a.rotary_dim, " must be even, positive and ≤ head_size (", a.head_size, ")");
  PAGEDLLM_CHECK(a.query_stride >= a.num_heads * a.head_size, InvalidArgument, "rope: query stride ", a.query_stride,
                 " is less than num_heads * head_size (", a.num_heads * a.head_size, ")");
  PAGEDLLM_CHECK(!a.key || a.key_stride >= a.num_kv_heads * a.head_size, InvalidArgument, "rope: key stride ",
                 a.key_stride, " is less than num_kv_heads * head_size (", a.num_kv_heads * a.head_size, ")");
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) rope_cpu(a, stream);
  else rope_cuda(a, stream);
}

// ---- silu_mul ----------------------------------------------------------------------------

namespace {

// e^x in float32 without a libm call (Cephes' expf polynomial: relative error < 2e-7), in integer
// and float arithmetic with no float comparison, so the silu loop below vectorizes (GCC keeps a
// float select as a branch under its default -ftrapping-math); std::exp is one call per element, and
// silu was ~7 % of a 128-token prefill of the issue-8 model. x is first clamped to [-87, 88]
// (e^x in 2^-126 … 2^127: silu only needs 1 + e^-g) on its bits, two integer minimums: as int32 a
// positive float orders like its value and every negative one is below 0; as uint32 a negative
// float (sign bit set) orders like its magnitude and is above every positive one. NaN stays NaN
// through gate in silu's numerator.
inline float exp_clamped(float x) {
  int32_t b;
  std::memcpy(&b, &x, 4);
  b = b < 0x42B00000 ? b : 0x42B00000;  // positive above 88 → 88.0f
  uint32_t u = static_cast<uint32_t>(b);
  u = u < 0xC2AE0000u ? u : 0xC2AE0000u;  // negative beyond −87 (−inf and negative NaN too) → −87.0f
  std::memcpy(&x, &u, 4);
  // t's low mantissa bits hold round(x / ln 2) (adding 1.5 · 2^23 forces the rounding).
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  uint32_t t_bits;
  std::memcpy(&t_bits, &t, 4);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x − n ln 2, ln 2 split in two
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t scale_bits = (t_bits - 0x4B400000u + 127u) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &scale_bits, 4);
  return p * scale;
}

}  // namespace

void silu_mul_cpu(const SiluMulArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    const int64_t I = a.intermediate_size;
    for_rows(a.num_tokens, 2 * I, [&](int64_t t) {
      thread_local std::vector<float> x;
      x.resize(2 * I);
      load_row(a.x, a.dtype, t * a.x_stride, 2 * I, x.data());
      float* const gate = x.data();
      const float* const up = x.data() + I;
      for (int64_t i = 0; i < I; ++i) gate[i] = gate[i] / (1.0f + exp_clamped(-gate[i])) * up[i];
      store_row(a.out, a.dtype, t * I, I, x.data());
    });
  });
}

void silu_mul(const SiluMulArgs& a, Stream& stream) {
  check_float("silu_mul", "x", a.dtype);
  PAGEDLLM_CHECK(a.num_tokens >= 0 && a.intermediate_size > 0, InvalidArgument, "silu_mul: num_tokens (", a.num_tokens,
                 ") must be ≥ 0 and intermediate_size (", a.intermediate_size, ") positive");
  PAGEDLLM_CHECK(a.x_stride >= 2 * a.intermediate_size, InvalidArgument, "silu_mul: x stride ", a.x_stride,
                 " is less than 2 * intermediate_size (", 2 * a.intermediate_size, ")");
  if (a.num_tokens == 0) return;
  if (stream.device().is_cpu()) silu_mul_cpu(a, stream);
  else silu_mul_cuda(a, stream);
}

// ---- add --------------------------------------------------------------------------------

void add_cpu(const AddArgs& a, Stream& stream) {
  as_cpu_stream(stream).enqueue([a] {
    constexpr int64_t kChunk = 4096;
    for_rows((a.n + kChunk - 1) / kChunk, kChunk, [&](int64_t c) {
      float x[kChunk], y[kChunk];
      const int64_t at = c * kChunk, n = std::min(kChunk, a.n - at);
      load_row(a.a, a.dtype, at, n, x);
      load_row(a.b, a.dtype, at, n, y);
      for (int64_t i = 0; i < n; ++i) x[i] += y[i];
      store_row(a.out, a.dtype, at, n, x);
    });
  });
}

void add(const AddArgs& a, Stream& stream) {
  check_float("add", "", a.dtype);
  PAGEDLLM_CHECK(a.n >= 0, InvalidArgument, "add: n ", a.n, " is negative");
  if (a.n == 0) return;
  if (stream.device().is_cpu()) add_cpu(a, stream);
  else add_cuda(a, stream);
}

}  // namespace pagedllm
