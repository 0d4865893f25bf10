// Host tensors and float64 references for the model ops (include/pagedllm/model_ops.h), written
// from the formulas (HF modeling_llama.py, formats.md §5.3–§5.4) independently of the kernels,
// shared by the CPU and CUDA tests. Values are decoded by their definition (reference.h), and
// rounding to float16/bfloat16 is the table search of reference.h, not half.h's bit tricks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "pagedllm/dtype.h"
#include "pagedllm/error.h"
#include "pagedllm/model_ops.h"
#include "reference.h"

namespace test {

using pagedllm::DType;

// A host array of `dtype` elements.
struct HostTensor {
  DType dtype = DType::Float32;
  std::vector<unsigned char> bytes;

  HostTensor() = default;
  HostTensor(DType t, size_t n) : dtype(t), bytes(n * pagedllm::dtype_size(t)) {}
  size_t size() const { return bytes.size() / pagedllm::dtype_size(dtype); }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }

  double get(size_t i) const {
    switch (dtype) {
      case DType::Float16: { uint16_t h; std::memcpy(&h, &bytes[2 * i], 2); return half_value(h); }
      case DType::BFloat16: { uint16_t b; std::memcpy(&b, &bytes[2 * i], 2); return bfloat16_value(b); }
      case DType::Int32: { int32_t v; std::memcpy(&v, &bytes[4 * i], 4); return v; }
      default: { float f; std::memcpy(&f, &bytes[4 * i], 4); return f; }
    }
  }
  // Stores v rounded to the dtype (via float32, as every op's float math ends in float32).
  void set(size_t i, double v) {
    const float f = static_cast<float>(v);
    switch (dtype) {
      case DType::Float16: { const uint16_t h = reference_to_half(f); std::memcpy(&bytes[2 * i], &h, 2); break; }
      case DType::BFloat16: { const uint16_t b = reference_to_bfloat16(f); std::memcpy(&bytes[2 * i], &b, 2); break; }
      case DType::Int32: { const int32_t n = static_cast<int32_t>(v); std::memcpy(&bytes[4 * i], &n, 4); break; }
      default: std::memcpy(&bytes[4 * i], &f, 4); break;
    }
  }
};

inline const char* name(DType t) { return pagedllm::dtype_name(t); }

// Uniform values in [lo, hi), as stored in `t`.
inline HostTensor random_tensor(DType t, size_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  HostTensor out(t, n);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  for (size_t i = 0; i < n; ++i) out.set(i, u(rng));
  return out;
}

// The value v has once stored in t.
inline double round_to(DType t, double v) {
  HostTensor one(t, 1);
  one.set(0, v);
  return one.get(0);
}

// Relative spacing of t's values (half an ulp is the rounding error).
inline double ulp(DType t) {
  switch (t) {
    case DType::Float16: return std::ldexp(1.0, -10);
    case DType::BFloat16: return std::ldexp(1.0, -7);
    default: return std::ldexp(1.0, -23);
  }
}

// got[i] against want[i] within tol[i] (NaN never passes); names the first failure.
inline void check_close(const HostTensor& got, const std::vector<double>& want, const std::vector<double>& tol,
                        const std::string& what) {
  CHECK(got.size() == want.size(), what, ": ", got.size(), " elements, expected ", want.size());
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got.get(i);
    if (!(std::fabs(g - want[i]) <= tol[i])) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  CHECK(bad == 0, what, ": ", bad, " of ", want.size(), " elements differ; first at ", first, ": got ",
        first >= 0 ? got.get(first) : 0.0, ", want ", first >= 0 ? want[first] : 0.0, " (tolerance ",
        first >= 0 ? tol[first] : 0.0, ")");
}

// Bit-exact comparison of two buffers, naming the first differing byte.
inline void check_same_bytes(const std::vector<unsigned char>& got, const std::vector<unsigned char>& want, const std::string& what) {
  CHECK(got.size() == want.size(), what, ": sizes differ");
  for (size_t i = 0; i < got.size(); ++i)
    CHECK(got[i] == want[i], what, ": byte ", i, " is ", int(got[i]), ", expected ", int(want[i]));
}

template <typename F>
void expect_error(pagedllm::ErrorCode code, const std::string& fragment, F&& f) {
  try {
    f();
  } catch (const pagedllm::Error& e) {
    CHECK(e.code() == code, "wrong code for: ", e.what());
    CHECK(std::string(e.what()).find(fragment) != std::string::npos, "message '", e.what(), "' lacks '", fragment, "'");
    return;
  }
  CHECK(false, "expected an error mentioning '", fragment, "'");
}

// ---- references (float64) -------------------------------------------------------------------

// HF LlamaRMSNorm over rows of h (already the residual sum when fused): h · rsqrt(mean(h²) + eps),
// rounded to h's dtype, times the weight. Returns [num_tokens, hidden] values before the output
// rounding.
inline std::vector<double> rms_norm_reference(const std::vector<double>& h, DType h_dtype, const HostTensor& weight,
                                              int64_t num_tokens, int64_t hidden, double eps) {
  std::vector<double> out(num_tokens * hidden);
  for (int64_t t = 0; t < num_tokens; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < hidden; ++i) ss += h[t * hidden + i] * h[t * hidden + i];
    const double scale = 1.0 / std::sqrt(ss / hidden + eps);
    for (int64_t i = 0; i < hidden; ++i)
      out[t * hidden + i] = round_to(h_dtype, h[t * hidden + i] * scale) * weight.get(i);
  }
  return out;
}

// HF default RoPE frequencies in float32: 1 / θ^(2i/dim).
inline std::vector<float> default_inv_freq(int64_t rotary_dim, double theta) {
  std::vector<float> f(rotary_dim / 2);
  for (int64_t i = 0; i < rotary_dim / 2; ++i)
    f[i] = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(rotary_dim)));
  return f;
}

// Rotate-half RoPE of one head's first rotary_dim values (x: exact values), angle = float32(p · f).
inline void rope_reference_head(std::vector<double>& x, int32_t position, const std::vector<float>& inv_freq) {
  const size_t half = inv_freq.size();
  for (size_t i = 0; i < half; ++i) {
    const double angle = static_cast<float>(static_cast<float>(position) * inv_freq[i]);
    const double c = std::cos(angle), s = std::sin(angle), x1 = x[i], x2 = x[half + i];
    x[i] = x1 * c - x2 * s;
    x[half + i] = x2 * c + x1 * s;
  }
}

// out[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]); also Σ_k |x·w| (+ |bias|) per element for tolerances.
inline void linear_reference(const HostTensor& x, int64_t x_stride, const HostTensor& w, const HostTensor* bias, int64_t M,
                             int64_t N, int64_t K, std::vector<double>& out, std::vector<double>& magnitude) {
  out.assign(M * N, 0.0);
  magnitude.assign(M * N, 0.0);
  std::vector<double> xv(M * K), wv(N * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xv[m * K + k] = x.get(m * x_stride + k);
  for (int64_t i = 0; i < N * K; ++i) wv[i] = w.get(i);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, a = 0;
      const double* xr = &xv[m * K];
      const double* wr = &wv[n * K];
      for (int64_t k = 0; k < K; ++k) {
        s += xr[k] * wr[k];
        a += std::fabs(xr[k] * wr[k]);
      }
      if (bias) {
        s += bias->get(n);
        a += std::fabs(bias->get(n));
      }
      out[m * N + n] = s;
      magnitude[m * N + n] = a;
    }
}

// ---- cases: inputs, the reference and the check; args() over host pointers (the CUDA test swaps
// in device copies) ------------------------------------------------------------------------------

struct EmbeddingCase {
  int64_t num_tokens, vocab_size, hidden_size;
  HostTensor ids, weight;
  DType out_dtype;
  std::string what;

  EmbeddingCase(DType weight_dtype, DType out, int64_t tokens, int64_t vocab, int64_t hidden, uint32_t seed)
      : num_tokens(tokens), vocab_size(vocab), hidden_size(hidden), ids(DType::Int32, tokens),
        weight(random_tensor(weight_dtype, vocab * hidden, seed, -3, 3)), out_dtype(out) {
    std::mt19937 rng(seed);
    for (int64_t t = 0; t < tokens; ++t) ids.set(t, t == 0 ? vocab - 1 : t == 1 ? 0 : static_cast<int64_t>(rng() % vocab));
    what = str("embedding weight ", name(weight_dtype), " out ", name(out), " tokens ", tokens, " vocab ", vocab, " hidden ", hidden);
  }
  pagedllm::EmbeddingArgs args(void* out) const {
    return {static_cast<const int32_t*>(ids.data()), num_tokens, weight.data(), weight.dtype, vocab_size, hidden_size, out, out_dtype};
  }
  HostTensor make_out() const { return HostTensor(out_dtype, num_tokens * hidden_size); }
  // Exact: a row copy rounded once to the output dtype.
  void check(const HostTensor& out, const std::string& backend) const {
    std::vector<double> want(num_tokens * hidden_size), tol(want.size(), 0.0);
    for (int64_t t = 0; t < num_tokens; ++t)
      for (int64_t i = 0; i < hidden_size; ++i)
        want[t * hidden_size + i] = round_to(out_dtype, weight.get(static_cast<int64_t>(ids.get(t)) * hidden_size + i));
    check_close(out, want, tol, backend + " " + what);
  }
};

struct RmsNormCase {
  int64_t num_tokens, hidden, x_stride, out_stride, residual_stride;
  HostTensor x, weight, residual;  // residual empty: plain
  DType out_dtype;
  float eps;
  std::string what;

  RmsNormCase(DType x_dtype, DType weight_dtype, DType out, bool fused, DType residual_dtype, int64_t tokens, int64_t H,
              bool strided, float epsilon, uint32_t seed)
      : num_tokens(tokens), hidden(H), x_stride(strided ? H + 3 : H), out_stride(strided ? H + 5 : H),
        residual_stride(strided ? H + 1 : H), out_dtype(out), eps(epsilon) {
    x = random_tensor(x_dtype, (tokens - 1) * x_stride + H, seed, -2, 2);
    weight = random_tensor(weight_dtype, H, seed + 1, 0.5, 1.5);
    if (fused) residual = random_tensor(residual_dtype, (tokens - 1) * residual_stride + H, seed + 2, -2, 2);
    what = str("rms_norm x ", name(x_dtype), " weight ", name(weight_dtype), " out ", name(out),
               fused ? str(" residual ", name(residual_dtype)) : std::string(" plain"), " tokens ", tokens, " hidden ", H,
               strided ? " strided" : "", " eps ", eps);
  }
  bool fused() const { return residual.size() > 0; }
  pagedllm::RmsNormArgs args(void* out, void* residual_copy) const {
    return {x.data(), x_stride, x.dtype, fused() ? residual_copy : nullptr, residual_stride, residual.dtype,
            weight.data(), weight.dtype, out, out_stride, out_dtype, num_tokens, hidden, eps};
  }
  HostTensor make_out() const { return HostTensor(out_dtype, (num_tokens - 1) * out_stride + hidden); }
  // out (and the updated residual): rows compared where written, padding must be untouched (zero).
  void check(const HostTensor& out, const HostTensor* residual_after, const std::string& backend) const {
    std::vector<double> h(num_tokens * hidden);
    for (int64_t t = 0; t < num_tokens; ++t)
      for (int64_t i = 0; i < hidden; ++i) {
        double v = x.get(t * x_stride + i);
        if (fused()) v = round_to(residual.dtype, v + residual.get(t * residual_stride + i));
        h[t * hidden + i] = v;
      }
    const DType h_dtype = fused() ? residual.dtype : x.dtype;
    const std::vector<double> ref = rms_norm_reference(h, h_dtype, weight, num_tokens, hidden, eps);
    std::vector<double> want(out.size(), 0.0), tol(out.size(), 0.0);
    for (int64_t t = 0; t < num_tokens; ++t)
      for (int64_t i = 0; i < hidden; ++i) {
        const double r = ref[t * hidden + i];
        // float32 math (1e-5 relative), plus an ulp of the normalised value's rounding to h's dtype
        // (a near-tie may round the other way) and the output rounding.
        want[t * out_stride + i] = r;
        tol[t * out_stride + i] = std::fabs(r) * (1e-5 + (h_dtype == DType::Float32 ? 0 : ulp(h_dtype)) + ulp(out_dtype)) + 1e-6;
      }
    check_close(out, want, tol, backend + " " + what);
    if (fused() && residual_after) {
      std::vector<double> rw(residual.size()), rt(residual.size(), 0.0);
      for (size_t i = 0; i < rw.size(); ++i) rw[i] = residual.get(i);
      for (int64_t t = 0; t < num_tokens; ++t)
        for (int64_t i = 0; i < hidden; ++i) {
          rw[t * residual_stride + i] = h[t * hidden + i];
          rt[t * residual_stride + i] = std::fabs(h[t * hidden + i]) * ulp(residual.dtype);  // float32 sum, then rounded
        }
      check_close(*residual_after, rw, rt, backend + " " + what + " (residual)");
    }
  }
};

// q and k as views into one fused QKV row [num_heads + 2·num_kv_heads, head_size] per token.
struct RopeCase {
  int64_t num_tokens, num_heads, num_kv_heads, head_size, rotary_dim, row;
  HostTensor qkv, positions;
  std::vector<float> inv_freq;
  bool with_key;
  std::string what;

  RopeCase(DType dtype, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t D, int64_t rotary, double theta, bool key,
           uint32_t seed)
      : num_tokens(tokens), num_heads(heads), num_kv_heads(kv_heads), head_size(D), rotary_dim(rotary),
        row((heads + 2 * kv_heads) * D), positions(DType::Int32, tokens), with_key(key) {
    qkv = random_tensor(dtype, tokens * row, seed, -2, 2);
    inv_freq = default_inv_freq(rotary, theta);
    std::mt19937 rng(seed);
    const int32_t fixed[] = {0, 1, 131071, 4095, 8192};
    for (int64_t t = 0; t < tokens; ++t) positions.set(t, t < 5 ? fixed[t] : static_cast<int32_t>(rng() % 32768));
    what = str("rope ", name(dtype), " tokens ", tokens, " heads ", heads, "/", kv_heads, " head_size ", D, " rotary ",
               rotary, " theta ", theta, key ? "" : " (no key)");
  }
  pagedllm::RopeArgs args(void* qkv_copy, const void* positions_copy, const float* inv_freq_copy) const {
    char* base = static_cast<char*>(qkv_copy);
    const size_t es = pagedllm::dtype_size(qkv.dtype);
    return {base, row, with_key ? base + num_heads * head_size * es : nullptr, row, qkv.dtype,
            static_cast<const int32_t*>(positions_copy), inv_freq_copy, num_tokens, num_heads, num_kv_heads, head_size,
            rotary_dim};
  }
  // Rotated parts within float32 error and the output rounding; everything else (dims past
  // rotary_dim, the V part, K when absent) bit-identical.
  void check(const HostTensor& out, const std::string& backend) const {
    std::vector<double> want(qkv.size()), tol(qkv.size(), 0.0);
    for (size_t i = 0; i < want.size(); ++i) want[i] = qkv.get(i);
    const int64_t rotated_heads = num_heads + (with_key ? num_kv_heads : 0);
    std::vector<double> x(rotary_dim);
    for (int64_t t = 0; t < num_tokens; ++t)
      for (int64_t h = 0; h < rotated_heads; ++h) {
        const int64_t at = t * row + h * head_size;
        double mag = 0;
        for (int64_t d = 0; d < rotary_dim; ++d) mag = std::max(mag, std::fabs(x[d] = qkv.get(at + d)));
        rope_reference_head(x, static_cast<int32_t>(positions.get(t)), inv_freq);
        for (int64_t d = 0; d < rotary_dim; ++d) {
          want[at + d] = round_to(qkv.dtype, x[d]);
          tol[at + d] = 4e-6 * mag + std::fabs(x[d]) * ulp(qkv.dtype);
        }
      }
    check_close(out, want, tol, backend + " " + what);
  }
};

struct SiluMulCase {
  int64_t num_tokens, intermediate, x_stride;
  HostTensor x;
  std::string what;

  SiluMulCase(DType dtype, int64_t tokens, int64_t I, bool strided, uint32_t seed)
      : num_tokens(tokens), intermediate(I), x_stride(strided ? 2 * I + 7 : 2 * I) {
    x = random_tensor(dtype, (tokens - 1) * x_stride + 2 * I, seed, -6, 6);
    what = str("silu_mul ", name(dtype), " tokens ", tokens, " intermediate ", I, strided ? " strided" : "");
  }
  pagedllm::SiluMulArgs args(void* out) const { return {x.data(), x_stride, out, x.dtype, num_tokens, intermediate}; }
  HostTensor make_out() const { return HostTensor(x.dtype, num_tokens * intermediate); }
  void check(const HostTensor& out, const std::string& backend) const {
    std::vector<double> want(out.size()), tol(out.size());
    for (int64_t t = 0; t < num_tokens; ++t)
      for (int64_t i = 0; i < intermediate; ++i) {
        const double g = x.get(t * x_stride + i), u = x.get(t * x_stride + intermediate + i);
        const double v = g / (1.0 + std::exp(-g)) * u;
        want[t * intermediate + i] = v;
        tol[t * intermediate + i] = std::fabs(v) * (4e-6 + ulp(x.dtype)) + 1e-7;
      }
    check_close(out, want, tol, backend + " " + what);
  }
};

struct LinearCase {
  int64_t M, N, K, x_stride, out_stride;
  HostTensor x, weight, bias;  // bias empty: none
  DType out_dtype;
  std::vector<double> ref, magnitude;
  std::string what;

  LinearCase(DType x_dtype, DType w_dtype, DType out, bool with_bias, int64_t m, int64_t n, int64_t k, bool strided,
             uint32_t seed)
      : M(m), N(n), K(k), x_stride(strided ? k + 5 : k), out_stride(strided ? n + 3 : n), out_dtype(out) {
    x = random_tensor(x_dtype, (m - 1) * x_stride + k, seed, -1, 1);
    weight = random_tensor(w_dtype, n * k, seed + 1, -0.5, 0.5);
    if (with_bias) bias = random_tensor(w_dtype, n, seed + 2, -1, 1);
    linear_reference(x, x_stride, weight, with_bias ? &bias : nullptr, M, N, K, ref, magnitude);
    what = str("linear x ", name(x_dtype), " weight ", name(w_dtype), " out ", name(out), with_bias ? " bias" : "", " M ", m,
               " N ", n, " K ", k, strided ? " strided" : "");
  }
  pagedllm::LinearArgs args(const void* x_copy, const void* w_copy, const void* bias_copy, void* out) const {
    return {x_copy, x_stride, x.dtype, w_copy, weight.dtype, bias.size() ? bias_copy : nullptr, bias.dtype, out,
            out_stride, out_dtype, M, N, K};
  }
  pagedllm::LinearArgs args(void* out) const { return args(x.data(), weight.data(), bias.data(), out); }
  HostTensor make_out() const { return HostTensor(out_dtype, (M - 1) * out_stride + N); }
  // float32 accumulation: 1e-5 of Σ|x·w| (orders of summation differ), plus the output rounding.
  void check(const HostTensor& out, const std::string& backend) const {
    std::vector<double> want(out.size(), 0.0), tol(out.size(), 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        want[m * out_stride + n] = ref[m * N + n];
        tol[m * out_stride + n] = 1e-5 * magnitude[m * N + n] + std::fabs(ref[m * N + n]) * ulp(out_dtype) + 1e-30;
      }
    check_close(out, want, tol, backend + " " + what);
  }
};

}  // namespace test
