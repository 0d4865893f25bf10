// AWQ int4 test cases shared by the CPU and CUDA tests: random AutoAWQ tensors
// (any 32-bit word is a valid packing of 8 codes), the weight decoded once
// more here straight from formats.md §1.3 (literal reverse order, float16
// rounding by table search, reference.h) and checked against the header's
// reference dequantizer, and y = x · W (+ bias) in float64.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "model_ops_reference.h"
#include "pagedllm/awq.h"

namespace test {

// formats.md §1.3, written out again: column j of a word is nibble slot {0,4,1,5,2,6,3,7}[j].
inline int awq_code_from_spec(uint32_t word, int j) {
  static const int reverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  return static_cast<int>((word >> (4 * reverse[j])) & 15u);
}

// W[k, n] = float16((q − z) · s), decoded from the spec (double math, table rounding).
inline float awq_weight_from_spec(const pagedllm::AwqWeight& w, int64_t k, int64_t n) {
  const int64_t words = w.out_features / 8, g = k / w.group_size;
  const int q = awq_code_from_spec(static_cast<uint32_t>(w.qweight[k * words + n / 8]), static_cast<int>(n % 8));
  const int z = awq_code_from_spec(static_cast<uint32_t>(w.qzeros[g * words + n / 8]), static_cast<int>(n % 8));
  const double s = half_value(w.scales[g * w.out_features + n]);
  return static_cast<float>(half_value(reference_to_half(static_cast<float>((q - z) * s))));
}

// The Slab8 layout (awq.h), written out again: row 8r + t of column n is at bit
// {0, 8, 16, 24, 4, 12, 20, 28}[t] of word r · N + n.
inline int awq_slab_code_from_spec(const int32_t* words, int64_t N, int64_t k, int64_t n) {
  static const int bit[8] = {0, 8, 16, 24, 4, 12, 20, 28};
  return static_cast<int>((static_cast<uint32_t>(words[(k / 8) * N + n]) >> bit[k % 8]) & 15u);
}

struct AwqTensors {
  int64_t K, N, G;
  std::vector<int32_t> qweight, qzeros;
  std::vector<uint16_t> scales;
  std::vector<int32_t> slab;  // qweight in the Slab8 layout (the header's reference repack), when K allows

  AwqTensors(int64_t k, int64_t n, int64_t g, uint32_t seed) : K(k), N(n), G(g) {
    std::mt19937 rng(seed);
    qweight.resize(K * N / 8);
    qzeros.resize((K / G) * N / 8);
    scales.resize((K / G) * N);
    for (auto& v : qweight) v = static_cast<int32_t>(rng());
    for (auto& v : qzeros) v = static_cast<int32_t>(rng());
    std::uniform_real_distribution<float> u(0.002f, 0.02f);
    for (auto& v : scales) v = reference_to_half(u(rng));
    if (K % pagedllm::awq::kSlabKMultiple == 0) {
      slab.resize(qweight.size());
      pagedllm::awq_repack_slab8_reference(qweight.data(), slab.data(), K, N);
    }
  }
  // Over host copies (or device copies of the same bytes).
  pagedllm::AwqWeight weight(const void* q, const void* z, const void* s) const {
    return {static_cast<const int32_t*>(q), static_cast<const int32_t*>(z), static_cast<const uint16_t*>(s), K, N, G};
  }
  pagedllm::AwqWeight weight() const { return weight(qweight.data(), qzeros.data(), scales.data()); }
  bool has(pagedllm::AwqLayout layout) const { return layout == pagedllm::AwqLayout::AutoAwq || !slab.empty(); }
  pagedllm::AwqWeight weight(pagedllm::AwqLayout layout) const {
    if (layout == pagedllm::AwqLayout::AutoAwq) return weight();
    pagedllm::AwqWeight w = weight(slab.data(), qzeros.data(), scales.data());
    w.layout = layout;
    return w;
  }
};

struct AwqLinearCase {
  int64_t M, x_stride, out_stride;
  AwqTensors w;
  HostTensor x, bias;  // bias empty: none
  DType out_dtype;
  std::vector<double> ref, magnitude;
  std::vector<float> W;  // the reference dequantized weight, [K, N]
  std::string what;

  AwqLinearCase(DType x_dtype, DType out, bool with_bias, int64_t m, int64_t k, int64_t n, int64_t g, bool strided,
                uint32_t seed)
      : M(m), x_stride(strided ? k + 3 : k), out_stride(strided ? n + 5 : n), w(k, n, g, seed), out_dtype(out) {
    x = random_tensor(x_dtype, (m - 1) * x_stride + k, seed + 1, -1, 1);
    if (with_bias) bias = random_tensor(DType::Float32, n, seed + 2, -1, 1);
    // W once, from the header's reference dequantizer, then y in float64.
    W.resize(k * n);
    pagedllm::awq_dequantize_reference(w.weight(), W.data());
    ref.assign(m * n, 0.0);
    magnitude.assign(m * n, 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t kk = 0; kk < k; ++kk) {
        const double xv = x.get(i * x_stride + kk);
        const float* wr = &W[kk * n];
        for (int64_t j = 0; j < n; ++j) {
          ref[i * n + j] += xv * wr[j];
          magnitude[i * n + j] += std::fabs(xv * wr[j]);
        }
      }
    if (with_bias)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          ref[i * n + j] += bias.get(j);
          magnitude[i * n + j] += std::fabs(bias.get(j));
        }
    what = str("awq_linear x ", name(x_dtype), " out ", name(out), with_bias ? " bias" : "", " M ", m, " K ", k, " N ", n,
               " G ", g, strided ? " strided" : "");
  }
  pagedllm::AwqLinearArgs args(const void* x_copy, const pagedllm::AwqWeight& weight, const void* bias_copy, void* out) const {
    return {x_copy, x_stride, x.dtype, weight, bias.size() ? bias_copy : nullptr, DType::Float32, out, out_stride, out_dtype, M};
  }
  pagedllm::AwqLinearArgs args(void* out, pagedllm::AwqLayout layout = pagedllm::AwqLayout::AutoAwq) const {
    return args(x.data(), w.weight(layout), bias.data(), out);
  }
  HostTensor make_out() const { return HostTensor(out_dtype, (M - 1) * out_stride + w.N); }

  // Tolerance per element, relative to Σ|x·W| (+ |bias|): float32 accumulation in any order (1e-5,
  // as the dense linear), plus `weight_error`, the relative error a path allows itself in W (CPU gemv:
  // unrounded (q − z)·s, ≤ 2^-11; CUDA with bfloat16 x: W rounded to bfloat16, ≤ 2^-8), plus the
  // output rounding.
  void check(const HostTensor& out, double weight_error, const std::string& backend) const {
    std::vector<double> want(out.size(), 0.0), tol(out.size(), 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < w.N; ++n) {
        want[m * out_stride + n] = ref[m * w.N + n];
        tol[m * out_stride + n] =
            (1e-5 + weight_error) * magnitude[m * w.N + n] + std::fabs(ref[m * w.N + n]) * ulp(out_dtype) + 1e-30;
      }
    check_close(out, want, tol, backend + " " + what);
  }
  // The int8-activation gemv (awq.h, Slab8 weights): out must be Σ x̂ · W (+ bias), x̂ the
  // header's quantization of x, within the float path's tolerance; and it is checked against
  // Σ x · W too, with the quantization's bound Σ_k |W[k, n]| · |x[k] − x̂[k]| added.
  void check_int8(const HostTensor& out, double weight_error, const std::string& backend) const {
    const int64_t K = w.K, N = w.N, B = pagedllm::awq::kActivationBlock;
    std::vector<double> want(out.size(), 0.0), tol(out.size(), 0.0), want_exact(out.size(), 0.0), tol_exact(out.size(), 0.0);
    std::vector<float> row(K), scales((K + B - 1) / B);
    std::vector<int8_t> codes(K);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t kk = 0; kk < K; ++kk) row[kk] = static_cast<float>(x.get(m * x_stride + kk));
      pagedllm::awq_quantize_activations(row.data(), K, codes.data(), scales.data());
      std::vector<double> y(N, 0.0), mag(N, 0.0), bound(N, 0.0);
      for (int64_t kk = 0; kk < K; ++kk) {
        const double xq = static_cast<double>(scales[kk / B]) * codes[kk];
        CHECK(std::fabs(xq - row[kk]) <= (0.5 + 1e-4) * scales[kk / B], "quantization of x[", m, ", ", kk, "] = ", row[kk],
              " is ", xq, " (scale ", scales[kk / B], ")");
        for (int64_t j = 0; j < N; ++j) {
          y[j] += xq * W[kk * N + j];
          mag[j] += std::fabs(xq * W[kk * N + j]);
          bound[j] += std::fabs(W[kk * N + j]) * std::fabs(xq - row[kk]);
        }
      }
      for (int64_t j = 0; j < N; ++j) {
        const double b = bias.size() ? bias.get(j) : 0.0;
        const int64_t i = m * out_stride + j;
        want[i] = y[j] + b;
        tol[i] = (1e-5 + weight_error) * (mag[j] + std::fabs(b)) + std::fabs(want[i]) * ulp(out_dtype) + 1e-30;
        want_exact[i] = ref[m * N + j];
        tol_exact[i] = (1e-5 + weight_error) * magnitude[m * N + j] + bound[j] * (1 + 1e-6) +
                       std::fabs(ref[m * N + j]) * ulp(out_dtype) + 1e-30;
      }
    }
    check_close(out, want, tol, backend + " int8 activations " + what);
    check_close(out, want_exact, tol_exact, backend + " int8 activations vs x " + what);
  }
};

// The grid of the issue: every group size, K and N off the kernels' tile sizes where the format
// allows (N a multiple of 8 only; K a multiple of G, any K for one group).
struct AwqShape {
  int64_t K, N, G;
};
inline std::vector<AwqShape> awq_shapes() {
  std::vector<AwqShape> shapes;
  for (int64_t G : {32, 64, 128})
    for (auto [K, N] : {std::pair<int64_t, int64_t>{128, 8}, {256, 72}, {384, 200}})
      shapes.push_back({K, N, G});
  for (auto [K, N] : {std::pair<int64_t, int64_t>{77, 24}, {384, 136}, {640, 64}}) shapes.push_back({K, N, K});  // one group
  return shapes;
}
inline const int64_t kAwqMs[] = {1, 2, 3, 4, 8, 16, 32, 64, 128, 256};

}  // namespace test
