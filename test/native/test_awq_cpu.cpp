// The CPU AWQ int4 ops (include/pagedllm/awq.h): the packing constants against
// formats.md §1.5, the reference dequantizer against the spec decoded once more
// in the test, awq_dequantize bit for bit, awq_linear against dequantize +
// float64 matmul over M × shapes × every group size on both SIMD paths, and the
// typed errors of bad shapes and group sizes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "awq_reference.h"
#include "harness.h"
#include "pagedllm/awq.h"
#include "pagedllm/device.h"

using namespace pagedllm;
using test::HostTensor;

namespace {

std::shared_ptr<Stream> cpu() { return default_stream(Device{DeviceKind::Cpu, 0}); }

constexpr DType kFloats[] = {DType::Float32, DType::Float16, DType::BFloat16};

std::vector<CpuSimd> simd_paths() { return cpu_simd_paths(); }

// The CPU kernels' variants: every SIMD path over AutoAWQ weights (float32 activations in the
// gemv), and the avx2 path over Slab8 ones (int8 activations in the gemv), where this CPU has it.
struct GemvPath {
  CpuSimd simd;
  AwqLayout layout;
  std::string name() const { return test::str(cpu_simd_name(simd), " ", awq_layout_name(layout)); }
};
std::vector<GemvPath> gemv_paths() {
  std::vector<GemvPath> paths;
  for (CpuSimd simd : cpu_simd_paths()) {
    paths.push_back({simd, AwqLayout::AutoAwq});
    if (simd != CpuSimd::Portable) paths.push_back({simd, AwqLayout::Slab8});
  }
  return paths;
}

HostTensor dequantize(const AwqWeight& w, DType dtype) {
  HostTensor out(dtype, w.in_features * w.out_features);
  auto s = cpu();
  awq_dequantize({w, out.data(), dtype}, *s);
  s->synchronize();
  return out;
}

// The CPU gemv does not round (q − z)·s to float16 (awq.h): half a float16 ulp of W.
constexpr double kCpuWeightError = 1.0 / 2048;

// A CPU result against the reference its path computes: x̂ · W over Slab8 weights (x quantized to
// int8, the gemv and the gemm alike), x · W over AutoAWQ ones.
void check_cpu(const test::AwqLinearCase& c, const HostTensor& out, AwqLayout layout, const std::string& what) {
  if (layout == AwqLayout::Slab8) c.check_int8(out, kCpuWeightError, what);
  else c.check(out, kCpuWeightError, what);
}

// The layout a model loaded on this CPU gets (awq_cpu_activations).
AwqLayout loader_layout() {
  return awq_cpu_activations(cpu_simd()) == AwqCpuActivations::Int8 ? AwqLayout::Slab8 : AwqLayout::AutoAwq;
}

}  // namespace

// ---- format ------------------------------------------------------------------------------------

TEST(awq_pack_order_matches_formats_md) {
  // §1.5: codes 1 … 8 of columns 0 … 7 → slots [1, 3, 5, 7, 2, 4, 6, 8] → 0x86427531 (−2042464975).
  CHECK(awq::pack({1, 2, 3, 4, 5, 6, 7, 8}) == 0x86427531u);
  CHECK(static_cast<int32_t>(0x86427531u) == -2042464975);
  const uint8_t bytes[4] = {0x31, 0x75, 0x42, 0x86};  // little-endian on disk
  uint32_t word;
  std::memcpy(&word, bytes, 4);
  for (int j = 0; j < 8; ++j) CHECK(awq::code(word, j) == j + 1, "column ", j);
  // A sequential unpack would read [1, 3, 5, 7, 2, 4, 6, 8].
  CHECK(((word >> 4) & 15u) == 3u);
  CHECK(awq::pack({8, 8, 8, 8, 8, 8, 8, 8}) == 0x88888888u);
  CHECK(awq::pack({8, 7, 8, 7, 8, 7, 8, 7}) == 0x77778888u);
  // Round trip over random words: every word is a packing, and unpack ∘ pack is the identity.
  std::mt19937 rng(5);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t w = rng();
    int codes[8];
    for (int j = 0; j < 8; ++j) {
      codes[j] = awq::code(w, j);
      CHECK(codes[j] == test::awq_code_from_spec(w, j), "word ", w, " column ", j);
    }
    CHECK(awq::pack(codes) == w, "word ", w);
  }
}

TEST(awq_dequantize_worked_example) {
  // §1.5: K = 128, N = 8, G = 128, every qweight row 0x86427531, zeros all 8, scales fp16(0.01).
  const int64_t K = 128, N = 8;
  std::vector<int32_t> qweight(K, static_cast<int32_t>(0x86427531u)), qzeros(1, static_cast<int32_t>(0x88888888u));
  std::vector<uint16_t> scales(N, test::reference_to_half(0.01f));
  CHECK(test::half_value(scales[0]) == 0.01000213623046875);
  const AwqWeight w{qweight.data(), qzeros.data(), scales.data(), K, N, 128};
  const double want[8] = {-0.07000732, -0.05999756, -0.05001831, -0.04000854, -0.02999878, -0.02000427, -0.01000214, 0.0};
  const HostTensor f16 = dequantize(w, DType::Float16), f32 = dequantize(w, DType::Float32);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      CHECK(std::fabs(f16.get(k * N + n) - want[n]) < 5e-9, "k ", k, " n ", n, ": ", f16.get(k * N + n));
      CHECK(f32.get(k * N + n) == f16.get(k * N + n));
      CHECK(awq_reference_weight(w, k, n) == static_cast<float>(f16.get(k * N + n)));
    }
  // y = ones · W = 128 · W[0, n]; the gemv's unrounded (q − z)·s errs the same way in every row here.
  std::vector<float> x(K, 1.0f), y(N);
  auto s = cpu();
  // (Ones quantize to 127 · (1 / 127): within 1e-7 of 1.)
  std::vector<int32_t> slab(qweight.size());
  awq_repack_slab8_reference(qweight.data(), slab.data(), K, N);
  for (const GemvPath& path : gemv_paths()) {
    AwqWeight pw = w;
    if (path.layout == AwqLayout::Slab8) {
      pw.qweight = slab.data();
      pw.layout = AwqLayout::Slab8;
    }
    const AwqLinearArgs a{x.data(), K, DType::Float32, pw, nullptr, DType::Float32, y.data(), N, DType::Float32, 1};
    awq_linear_many_cpu(&a, 1, *s, path.simd);
    s->synchronize();
    for (int64_t n = 0; n < N; ++n) CHECK(std::fabs(y[n] - 128 * f16.get(n)) <= (1e-5 + kCpuWeightError) * 128 * std::fabs(f16.get(n)), path.name(), " n ", n, ": ", y[n]);
  }
}

TEST(awq_dequantize_bit_exact_against_the_reference) {
  uint32_t seed = 11;
  for (const test::AwqShape& shape : test::awq_shapes()) {
    const test::AwqTensors t(shape.K, shape.N, shape.G, seed++);
    const AwqWeight w = t.weight();
    std::vector<float> ref(shape.K * shape.N);
    awq_dequantize_reference(w, ref.data());
    const HostTensor f16 = dequantize(w, DType::Float16), f32 = dequantize(w, DType::Float32);
    if (t.has(AwqLayout::Slab8)) {  // the same weight in the Slab8 layout: the same W, bit for bit
      const HostTensor slab16 = dequantize(t.weight(AwqLayout::Slab8), DType::Float16);
      CHECK(slab16.bytes == f16.bytes, "slab8 dequantize differs, K ", shape.K, " N ", shape.N, " G ", shape.G);
    }
    for (int64_t i = 0; i < shape.K * shape.N; ++i) {
      const int64_t k = i / shape.N, n = i % shape.N;
      CHECK(ref[i] == test::awq_weight_from_spec(w, k, n), "reference vs spec at k ", k, " n ", n, " G ", shape.G);
      uint16_t h;
      std::memcpy(&h, &f16.bytes[2 * i], 2);
      CHECK(h == float_to_half_bits(ref[i]), "float16 at k ", k, " n ", n, " K ", shape.K, " N ", shape.N, " G ", shape.G);
      float f;
      std::memcpy(&f, &f32.bytes[4 * i], 4);
      CHECK(float_bits(f) == float_bits(ref[i]), "float32 at k ", k, " n ", n, " K ", shape.K, " N ", shape.N, " G ", shape.G);
    }
  }
}

// ---- awq_linear ----------------------------------------------------------------------------------

TEST(awq_linear_cpu_grid_every_group_size_every_path) {
  uint32_t seed = 100;
  int combo = 0;
  for (const test::AwqShape& shape : test::awq_shapes())
    for (int64_t M : test::kAwqMs) {
      const int k = combo++;
      const DType x = kFloats[k % 3], o = kFloats[(k / 3) % 3];
      const test::AwqLinearCase c(x, o, k % 2 == 0, M, shape.K, shape.N, shape.G, k % 4 == 1, seed++);
      HostTensor avx2[2];  // per layout
      for (const GemvPath& path : gemv_paths()) {
        if (!c.w.has(path.layout)) continue;  // K not a multiple of 32: no Slab8 form
        HostTensor out = c.make_out();
        auto s = cpu();
        const AwqLinearArgs a = c.args(out.data(), path.layout);
        awq_linear_many_cpu(&a, 1, *s, path.simd);
        s->synchronize();
        check_cpu(c, out, path.layout, "cpu " + path.name());
        // avx512 (VNNI dot products, 512-bit tiles) computes avx2's sums exactly: the same bits.
        const int l = path.layout == AwqLayout::Slab8;
        if (path.simd == CpuSimd::Avx2) avx2[l] = out;
        if (path.simd == CpuSimd::Avx512)
          CHECK(out.bytes == avx2[l].bytes, "avx512 and avx2 differ: ", awq_layout_name(path.layout), " M ", M, " K ", shape.K,
                " N ", shape.N, " G ", shape.G);
      }
    }
}

TEST(awq_linear_cpu_llama_shapes) {
  // A decode step (gemv) and a prefill chunk (gemm) on a Llama-like projection, through the dispatch.
  for (auto [M, G] : {std::pair<int64_t, int64_t>{1, 128}, {5, 64}, {40, 128}}) {
    const test::AwqLinearCase c(DType::Float16, DType::Float16, false, M, 2048, 1024, G, false, static_cast<uint32_t>(M));
    HostTensor out = c.make_out();
    auto s = cpu();
    awq_linear(c.args(out.data(), loader_layout()), *s);
    s->synchronize();
    const std::string what = test::str("cpu dispatch (", cpu_simd_name(cpu_simd()), ", ", awq_layout_name(loader_layout()), ")");
    check_cpu(c, out, loader_layout(), what);
  }
}

TEST(awq_linear_many_equals_awq_linear_on_each) {
  // q, k, v-like projections of one x (N 64, 16, 16, bias on one), K 256, on the gemv path (where
  // the ops share one pool pass) and the gemm path, both SIMD paths; outputs bit-identical.
  for (const GemvPath& path : gemv_paths())
    for (int64_t M : {1, 3, 8, 9}) {
      std::vector<test::AwqLinearCase> cases;
      const int64_t Ns[] = {64, 16, 16};
      for (int i = 0; i < 3; ++i)
        cases.emplace_back(DType::Float16, DType::Float16, i == 2, M, 256, Ns[i], 64, false, static_cast<uint32_t>(700 + 10 * M + i));
      std::vector<HostTensor> many, one;
      std::vector<AwqLinearArgs> args;
      for (const auto& c : cases) {
        many.push_back(c.make_out());
        one.push_back(c.make_out());
      }
      for (size_t i = 0; i < cases.size(); ++i) args.push_back(cases[i].args(cases[0].x.data(), cases[i].w.weight(path.layout), cases[i].bias.data(), many[i].data()));
      auto s = cpu();
      awq_linear_many_cpu(args.data(), args.size(), *s, path.simd);
      for (size_t i = 0; i < cases.size(); ++i) {
        AwqLinearArgs a = args[i];
        a.out = one[i].data();
        awq_linear_many_cpu(&a, 1, *s, path.simd);
      }
      s->synchronize();
      for (size_t i = 0; i < cases.size(); ++i)
        CHECK(many[i].bytes == one[i].bytes, "awq_linear_many differs from awq_linear: ", path.name(), " M ", M, " op ", i);
      check_cpu(cases[0], many[0], path.layout, "awq_linear_many cpu " + path.name());
    }
}

TEST(awq_quantize_activations_definition) {
  // Blocks of 16: scale max|x| / 127, codes rounded to nearest even, the last block short; zeros,
  // tiny values and non-finite values.
  std::vector<float> x(40);
  for (int i = 0; i < 16; ++i) x[i] = (i - 8) * 0.25f;      // max |x| 2 → scale 2/127
  x[16] = 127.0f;                                            // scale 1: codes are x rounded
  x[17] = 2.5f;                                              // a tie: rounds to 2 (even)
  x[18] = -3.5f;                                             // → −4
  x[19] = 0.49f;
  for (int i = 32; i < 40; ++i) x[i] = 1e-31f;               // below 1e-30: a zero block
  std::vector<int8_t> c(40);
  std::vector<float> d(3);
  awq_quantize_activations(x.data(), 40, c.data(), d.data());
  CHECK(d[0] == 2.0f / 127.0f && c[0] == -127 && c[8] == 0 && c[15] == 111, d[0], " ", int(c[0]), " ", int(c[15]));
  CHECK(d[1] == 1.0f && c[16] == 127 && c[17] == 2 && c[18] == -4 && c[19] == 0 && c[20] == 0);
  CHECK(d[2] == 0.0f && c[32] == 0 && c[39] == 0);
  x[3] = std::nanf("");
  x[20] = -INFINITY;
  awq_quantize_activations(x.data(), 40, c.data(), d.data());
  CHECK(std::isnan(d[0]) && std::isnan(d[1]) && c[0] == 0 && c[16] == 0);
}

TEST(awq_int8_gemv_non_finite_and_zero_activations) {
  // A NaN or infinity in x makes the outputs NaN (as a float product would be non-finite); an all-zero
  // x gives exactly the bias.
  const test::AwqLinearCase c(DType::Float32, DType::Float32, true, 2, 256, 72, 64, false, 41);
  for (const GemvPath& path : gemv_paths()) {
    HostTensor x = c.x, out = c.make_out();
    for (int64_t k = 0; k < 256; ++k) x.set(k, 0.0);
    x.set(256 + 100, path.layout == AwqLayout::Slab8 ? INFINITY : std::nan(""));
    AwqLinearArgs a = c.args(x.data(), c.w.weight(path.layout), c.bias.data(), out.data());
    auto s = cpu();
    awq_linear_many_cpu(&a, 1, *s, path.simd);
    s->synchronize();
    for (int64_t n = 0; n < 72; ++n) {
      CHECK(out.get(n) == c.bias.get(n), path.name(), " zero row, n ", n, ": ", out.get(n));
      CHECK(!std::isfinite(out.get(72 + n)), path.name(), " non-finite row, n ", n, ": ", out.get(72 + n));
    }
  }
}

// ---- errors --------------------------------------------------------------------------------------

TEST(awq_ops_reject_bad_arguments) {
  using test::expect_error;
  auto s = cpu();
  const test::AwqLinearCase c(DType::Float32, DType::Float32, false, 2, 128, 16, 64, false, 3);
  HostTensor out = c.make_out();
  AwqLinearArgs a = c.args(out.data());
  a.weight.group_size = 48;
  expect_error(ErrorCode::Unsupported, "awq_linear: group size 48 is not supported (supported: 32, 64, 128, or in_features", [&] { awq_linear(a, *s); });
  a.weight.group_size = -1;
  expect_error(ErrorCode::Unsupported, "group size -1 is not supported", [&] { awq_linear(a, *s); });
  a.weight.group_size = 0;
  expect_error(ErrorCode::Unsupported, "group size 0", [&] { awq_linear(a, *s); });
  a = c.args(out.data());
  a.weight.out_features = 12;
  expect_error(ErrorCode::InvalidArgument, "awq_linear: out_features 12 is not a multiple of 8", [&] { awq_linear(a, *s); });
  a = c.args(out.data());
  a.weight.in_features = 96;  // G = 64
  expect_error(ErrorCode::InvalidArgument, "awq_linear: in_features 96 is not a multiple of the group size 64", [&] { awq_linear(a, *s); });
  a = c.args(out.data());
  a.weight.in_features = 0;
  expect_error(ErrorCode::InvalidArgument, "must be positive", [&] { awq_linear(a, *s); });
  AwqLinearArgs pair[2] = {c.args(out.data()), c.args(out.data())};
  pair[1].weight.group_size = 32;
  expect_error(ErrorCode::InvalidArgument, "awq_linear_many: linear 1 has another input than linear 0", [&] { awq_linear_many(pair, 2, *s); });
  a = c.args(out.data());
  a.x_dtype = DType::Int32;
  expect_error(ErrorCode::Unsupported, "awq_linear: x dtype int32 (supported: float32, float16, bfloat16)", [&] { awq_linear(a, *s); });
  a = c.args(out.data());
  a.x_stride = 100;
  expect_error(ErrorCode::InvalidArgument, "awq_linear: x stride 100 is less than in_features (128)", [&] { awq_linear(a, *s); });
  a = c.args(out.data());
  a.out_stride = 8;
  expect_error(ErrorCode::InvalidArgument, "awq_linear: out stride 8 is less than out_features (16)", [&] { awq_linear(a, *s); });
  HostTensor w(DType::BFloat16, 128 * 16);
  expect_error(ErrorCode::Unsupported, "awq_dequantize: out dtype bfloat16 (supported: float16, float32)",
               [&] { awq_dequantize({c.w.weight(), w.data(), DType::BFloat16}, *s); });
  AwqWeight bad = c.w.weight();
  bad.group_size = 256;
  expect_error(ErrorCode::Unsupported, "awq_dequantize: group size 256", [&] { awq_dequantize({bad, w.data(), DType::Float16}, *s); });
  a = c.args(out.data(), AwqLayout::Slab8);
  expect_error(ErrorCode::Unsupported, "awq_linear: a slab8 weight needs the avx2 or avx512 path (this call runs the portable one)",
               [&] { awq_linear_many_cpu(&a, 1, *s, CpuSimd::Portable); });
  const test::AwqTensors odd(80, 16, 80, 4);  // one group of 80 rows: no Slab8 form
  a.weight = odd.weight();
  a.weight.layout = AwqLayout::Slab8;
  expect_error(ErrorCode::InvalidArgument, "awq_linear: the slab8 layout needs in_features a multiple of 32, got 80", [&] { awq_linear(a, *s); });
  a.weight.layout = static_cast<AwqLayout>(7);
  expect_error(ErrorCode::InvalidArgument, "awq_linear: layout 7 is not a layout (0: autoawq, 1: slab8)", [&] { awq_linear(a, *s); });
  std::vector<int32_t> dst(odd.qweight.size());
  expect_error(ErrorCode::InvalidArgument, "awq_repack: the slab8 layout needs in_features a multiple of 32, got 80",
               [&] { awq_repack({odd.weight(), dst.data()}, *s); });
  expect_error(ErrorCode::InvalidArgument, "awq_repack: the weight is already slab8",
               [&] { awq_repack({c.w.weight(AwqLayout::Slab8), dst.data()}, *s); });
  // One group of any length is fine (a checkpoint's −1): 128 here.
  a = c.args(out.data());
  a.weight.group_size = 128;
  a.weight.qzeros = c.w.qzeros.data();
  awq_linear(a, *s);
  s->synchronize();
}

// ---- the Slab8 layout ----------------------------------------------------------------------------

TEST(awq_slab8_layout_matches_its_definition) {
  // The header's reference repack against the layout written out again (awq_reference.h), and the
  // awq_repack op (out of place and in place, on the thread pool) against the reference, bit for bit.
  uint32_t seed = 300;
  for (auto [K, N] : {std::pair<int64_t, int64_t>{32, 8}, {64, 72}, {256, 200}, {1024, 1536}}) {
    const test::AwqTensors t(K, N, 32, seed++);
    const AwqWeight w = t.weight(), slab = t.weight(AwqLayout::Slab8);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        const int q = test::awq_code_from_spec(static_cast<uint32_t>(t.qweight[k * (N / 8) + n / 8]), static_cast<int>(n % 8));
        CHECK(test::awq_slab_code_from_spec(t.slab.data(), N, k, n) == q, "slab8 vs autoawq at k ", k, " n ", n, " K ", K, " N ", N);
        CHECK(awq_weight_code(slab, k, n) == q && awq_weight_code(w, k, n) == q, "awq_weight_code at k ", k, " n ", n);
      }
    auto s = cpu();
    std::vector<int32_t> out(t.qweight.size(), 0x5A5A5A5A), in_place = t.qweight;
    awq_repack({w, out.data()}, *s);
    AwqWeight own = w;
    own.qweight = in_place.data();
    awq_repack({own, in_place.data()}, *s);
    s->synchronize();
    CHECK(out == t.slab, "awq_repack out of place, K ", K, " N ", N);
    CHECK(in_place == t.slab, "awq_repack in place, K ", K, " N ", N);
  }
}

TEST(awq_linear_many_mixes_layouts) {
  // One call over an AutoAWQ and a Slab8 weight of the same x: each as awq_linear on its own.
  if (!cpu_simd_supported(CpuSimd::Avx2)) {
    std::printf("  (skipped: this CPU has no avx2 path, and Slab8 weights run only there)\n");
    return;
  }
  const test::AwqLinearCase c0(DType::Float32, DType::Float32, false, 2, 256, 64, 128, false, 500);
  const test::AwqLinearCase c1(DType::Float32, DType::Float32, false, 2, 256, 40, 128, false, 501);
  HostTensor m0 = c0.make_out(), m1 = c1.make_out(), o0 = c0.make_out(), o1 = c1.make_out();
  const AwqLinearArgs args[2] = {c0.args(m0.data(), AwqLayout::AutoAwq), c1.args(c0.x.data(), c1.w.weight(AwqLayout::Slab8), nullptr, m1.data())};
  auto s = cpu();
  awq_linear_many_cpu(args, 2, *s, CpuSimd::Avx2);
  AwqLinearArgs a = args[0];
  a.out = o0.data();
  awq_linear_many_cpu(&a, 1, *s, CpuSimd::Avx2);
  a = args[1];
  a.out = o1.data();
  awq_linear_many_cpu(&a, 1, *s, CpuSimd::Avx2);
  s->synchronize();
  CHECK(m0.bytes == o0.bytes && m1.bytes == o1.bytes, "awq_linear_many over mixed layouts differs from awq_linear on each");
  c0.check(m0, kCpuWeightError, "mixed: autoawq");
}
