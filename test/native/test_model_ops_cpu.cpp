// The CPU model ops (embedding, rms_norm, rope, silu_mul, add, linear) against
// the float64 references of model_ops_reference.h over grids of dtypes and
// shapes (odd sizes included), linear on both the AVX2 and the portable path,
// the worked examples of formats.md §5.3–§5.4, and the errors bad arguments give.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "harness.h"
#include "model_ops_reference.h"
#include "pagedllm/device.h"
#include "pagedllm/model_ops.h"

using namespace pagedllm;
using test::HostTensor;

namespace {

std::shared_ptr<Stream> cpu() { return default_stream(Device{DeviceKind::Cpu, 0}); }

constexpr DType kFloats[] = {DType::Float32, DType::Float16, DType::BFloat16};

std::vector<CpuSimd> simd_paths() { return cpu_simd_paths(); }

HostTensor run_linear(const test::LinearCase& c, CpuSimd simd) {
  HostTensor out = c.make_out();
  auto s = cpu();
  linear_cpu(c.args(out.data()), *s, simd);
  s->synchronize();
  return out;
}

}  // namespace

// ---- embedding ---------------------------------------------------------------------------------

TEST(cpu_embedding_grid) {
  uint32_t seed = 1;
  for (DType w : kFloats)
    for (DType o : kFloats)
      for (int64_t hidden : {64, 100, 4096})
        for (int64_t tokens : {1, 7, 33}) {
          const test::EmbeddingCase c(w, o, tokens, 300, hidden, seed++);
          HostTensor out = c.make_out();
          auto s = cpu();
          embedding(c.args(out.data()), *s);
          s->synchronize();
          c.check(out, "cpu");
        }
}

TEST(cpu_embedding_reports_ids_outside_the_vocabulary) {
  for (int32_t bad : {300, -1}) {
    test::EmbeddingCase c(DType::Float16, DType::Float32, 4, 300, 64, 9);
    c.ids.set(2, bad);
    HostTensor out = c.make_out();
    auto s = cpu();
    embedding(c.args(out.data()), *s);
    test::expect_error(ErrorCode::InvalidArgument, test::str("token 2 has id ", bad, ", outside the vocabulary [0, 300)"),
                       [&] { s->synchronize(); });
    // The stream goes on working.
    c.ids.set(2, 5);
    embedding(c.args(out.data()), *s);
    s->synchronize();
    c.check(out, "cpu (after an error)");
  }
}

// ---- rms_norm ----------------------------------------------------------------------------------

TEST(cpu_rms_norm_grid) {
  uint32_t seed = 100;
  int combo = 0;
  for (DType x : kFloats)
    for (DType o : kFloats)
      for (bool fused : {false, true})
        for (int64_t hidden : {64, 100, 127, 1024, 4096}) {
          const DType w = kFloats[combo % 3], r = kFloats[(combo / 3) % 3];
          const int64_t tokens = combo % 3 == 0 ? 1 : combo % 3 == 1 ? 3 : 17;
          const test::RmsNormCase c(x, w, o, fused, r, tokens, hidden, combo % 2 == 1, combo % 2 ? 1e-5f : 1e-6f, seed++);
          HostTensor out = c.make_out(), residual = c.residual;
          auto s = cpu();
          rms_norm(c.args(out.data(), residual.data()), *s);
          s->synchronize();
          c.check(out, &residual, "cpu");
          ++combo;
        }
}

TEST(cpu_rms_norm_worked_example_and_in_place) {
  // formats.md §5.3: x = [1, 2, 3, 4], eps 1e-5, weight 1 → [0.365148, 0.730296, 1.095444, 1.460592].
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 1, 1};
  RmsNormArgs a{x.data(), 4, DType::Float32, nullptr, 4, DType::Float32, w.data(), DType::Float32,
                x.data(), 4, DType::Float32, 1, 4, 1e-5f};
  auto s = cpu();
  rms_norm(a, *s);  // in place: out is x
  s->synchronize();
  const float want[] = {0.365148f, 0.730296f, 1.095444f, 1.460592f};
  for (int i = 0; i < 4; ++i) CHECK(std::fabs(x[i] - want[i]) < 1e-6f, "element ", i, ": ", x[i]);
  // Fused and in place on x: residual becomes x + residual, x the norm of it.
  std::vector<float> h = {0.5f, 1, 1.5f, 2}, r = {0.5f, 1, 1.5f, 2};
  a.x = a.out = h.data();
  a.residual = r.data();
  rms_norm(a, *s);
  s->synchronize();
  for (int i = 0; i < 4; ++i) {
    CHECK(r[i] == static_cast<float>(i + 1), "residual ", i, ": ", r[i]);
    CHECK(std::fabs(h[i] - want[i]) < 1e-6f, "fused element ", i, ": ", h[i]);
  }
}

// ---- rope --------------------------------------------------------------------------------------

TEST(cpu_rope_grid) {
  uint32_t seed = 200;
  int combo = 0;
  for (DType t : kFloats)
    for (int64_t D : {64, 80, 128, 256})
      for (bool partial : {false, true}) {
        const int64_t heads = combo % 2 ? 8 : 4, kv = combo % 3 ? 2 : heads;
        const test::RopeCase c(t, combo % 2 ? 9 : 3, heads, kv, D, partial ? D / 2 : D, combo % 2 ? 500000.0 : 10000.0,
                               combo % 5 != 4, seed++);
        HostTensor qkv = c.qkv;
        auto s = cpu();
        rope(c.args(qkv.data(), c.positions.data(), c.inv_freq.data()), *s);
        s->synchronize();
        c.check(qkv, "cpu");
        ++combo;
      }
}

TEST(cpu_rope_worked_example) {
  // formats.md §5.4: D = 4, θ = 10000 (inv_freq [1, 0.01]), position 1, q = [1, 2, 3, 4]
  // → [−1.984111, 1.959901, 2.462378, 4.019800] (the interleaved convention would give −1.142640, …).
  std::vector<float> q = {1, 2, 3, 4}, inv_freq = {1.0f, 0.01f};
  std::vector<int32_t> pos = {1};
  RopeArgs a{q.data(), 4, nullptr, 0, DType::Float32, pos.data(), inv_freq.data(), 1, 1, 0, 4, 4};
  auto s = cpu();
  rope(a, *s);
  s->synchronize();
  const float want[] = {-1.984111f, 1.959901f, 2.462378f, 4.019800f};
  for (int i = 0; i < 4; ++i) CHECK(std::fabs(q[i] - want[i]) < 2e-6f, "element ", i, ": ", q[i]);
}

// ---- silu_mul, add -------------------------------------------------------------------------------

TEST(cpu_silu_mul_grid) {
  uint32_t seed = 300;
  for (DType t : kFloats)
    for (int64_t I : {1, 64, 100, 11008})
      for (int64_t tokens : {1, 3, 8}) {
        const test::SiluMulCase c(t, tokens, I, tokens == 3, seed++);
        HostTensor out = c.make_out();
        auto s = cpu();
        silu_mul(c.args(out.data()), *s);
        s->synchronize();
        c.check(out, "cpu");
      }
}

TEST(cpu_silu_mul_extreme_gates) {
  // silu's exponential is a polynomial on a clamped argument (no libm call, so the loop
  // vectorizes): gates far outside the clamp [-88, 87] must still give g·σ(g) (≈ g, or ≈ 0).
  const float gates[] = {-1e7f, -1000.0f, -100.0f, -88.5f, -87.5f, -30.0f, -1e-3f, 0.0f, 1e-3f, 30.0f, 87.5f, 88.5f, 100.0f, 1000.0f, 1e7f};
  const int64_t I = sizeof(gates) / sizeof(gates[0]);
  std::vector<float> x(2 * I, 1.5f), out(I);
  std::memcpy(x.data(), gates, sizeof(gates));
  auto s = cpu();
  silu_mul(SiluMulArgs{x.data(), 2 * I, out.data(), DType::Float32, 1, I}, *s);
  s->synchronize();
  for (int64_t i = 0; i < I; ++i) {
    const double g = gates[i], want = g / (1.0 + std::exp(-g)) * 1.5;
    CHECK(std::fabs(out[i] - want) <= 4e-6 * std::fabs(want) + 1e-30, "silu_mul gate ", g, ": ", out[i], " want ", want);
  }
}

TEST(cpu_add) {
  for (DType t : kFloats)
    for (int64_t n : {1, 7, 4096, 100003}) {
      const HostTensor a = test::random_tensor(t, n, 1), b = test::random_tensor(t, n, 2);
      HostTensor out(t, n), in_place = a;
      auto s = cpu();
      add(AddArgs{a.data(), b.data(), out.data(), t, n}, *s);
      add(AddArgs{in_place.data(), b.data(), in_place.data(), t, n}, *s);
      s->synchronize();
      std::vector<double> want(n), tol(n);
      for (int64_t i = 0; i < n; ++i) {
        want[i] = test::round_to(t, a.get(i) + b.get(i));
        tol[i] = std::fabs(want[i]) * test::ulp(t);  // a float32 sum rounded once vs the exact sum rounded once
      }
      test::check_close(out, want, tol, test::str("add ", test::name(t), " n ", n));
      test::check_close(in_place, want, tol, test::str("add in place ", test::name(t), " n ", n));
    }
}

// ---- linear ------------------------------------------------------------------------------------

TEST(cpu_linear_grid_every_simd_path) {
  // (N, K) pairs with K and N off every multiple of 8/16/64 as well as on them.
  const int64_t shapes[][2] = {{1, 1}, {7, 13}, {16, 64}, {100, 37}, {257, 515}, {64, 4096}, {33, 1000}};
  const int64_t Ms[] = {1, 3, 8, 33, 128};
  uint32_t seed = 400;
  int combo = 0;
  for (const auto& nk : shapes)
    for (int64_t M : Ms)
      for (int d = 0; d < 3; ++d) {
        // Rotate through all 27 (x, weight, out) dtype combinations across the grid.
        const int k = combo++;
        const DType x = kFloats[k % 3], w = kFloats[(k / 3) % 3], o = kFloats[(k / 9) % 3];
        const test::LinearCase c(x, w, o, k % 2 == 0, M, nk[0], nk[1], k % 4 == 1, seed++);
        HostTensor avx2;
        for (CpuSimd simd : simd_paths()) {
          HostTensor out = run_linear(c, simd);
          c.check(out, test::str("cpu ", cpu_simd_name(simd)));
          // avx512 runs avx2's arithmetic in wider registers (the same sums in the same order).
          if (simd == CpuSimd::Avx2) avx2 = out;
          if (simd == CpuSimd::Avx512)
            CHECK(out.bytes == avx2.bytes, "avx512 and avx2 differ: M ", M, " N ", nk[0], " K ", nk[1], " ", dtype_name(x), "/",
                  dtype_name(w), "/", dtype_name(o));
        }
      }
}

TEST(cpu_linear_decode_and_prefill_shapes) {
  // Llama-shaped layers: a decode step (M 1 and 8: the gemv path) and a 128-token prefill chunk.
  for (CpuSimd simd : simd_paths())
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1024, 4096}, {8, 512, 4096}, {128, 192, 2048}})
      for (DType t : {DType::Float16, DType::BFloat16}) {
        const test::LinearCase c(t, t, t, false, M, N, K, false, static_cast<uint32_t>(M * 7 + N));
        c.check(run_linear(c, simd), test::str("cpu ", cpu_simd_name(simd)));
      }
}

TEST(cpu_linear_dispatch_uses_the_chosen_path) {
  const CpuSimd chosen = cpu_simd();
  CHECK(cpu_simd_supported(chosen), cpu_simd_name(chosen), " chosen on a CPU without it");
  // The widest path this CPU has, unless PAGEDLLM_SIMD caps it.
  const std::vector<CpuSimd> paths = cpu_simd_paths();
  const char* env = std::getenv("PAGEDLLM_SIMD");
  const std::string want = env ? env : "";
  CpuSimd expected = paths.back();
  if (want == "portable") expected = CpuSimd::Portable;
  if (want == "avx2" && expected == CpuSimd::Avx512) expected = CpuSimd::Avx2;
  CHECK(chosen == expected, "chose ", cpu_simd_name(chosen), ", expected ", cpu_simd_name(expected), " (PAGEDLLM_SIMD='", want, "')");
  const test::LinearCase c(DType::Float32, DType::Float16, DType::Float32, true, 5, 40, 70, false, 77);
  HostTensor out = c.make_out();
  auto s = cpu();
  linear(c.args(out.data()), *s);
  s->synchronize();
  c.check(out, test::str("cpu dispatch (", cpu_simd_name(chosen), ")"));
}

TEST(cpu_linear_many_equals_linear_on_each) {
  // q, k, v-like projections of one x (N 40, 24, 24 and a ragged 13), bias on some, float16 and
  // float32 weights mixed; M on the gemv path and the gemm path (one token block and several).
  for (CpuSimd simd : simd_paths())
    for (int64_t M : {1, 5, 8, 9, 140}) {
      const int64_t K = 70;
      const int64_t Ns[] = {40, 24, 24, 13};
      std::vector<test::LinearCase> cases;
      for (int i = 0; i < 4; ++i)
        cases.emplace_back(DType::Float16, i % 2 ? DType::Float32 : DType::Float16, DType::Float16, i == 1, M, Ns[i], K, false,
                           static_cast<uint32_t>(900 + 10 * M + i));
      // One shared input: every case reads case 0's x.
      std::vector<HostTensor> many, one;
      std::vector<LinearArgs> args;
      for (const auto& c : cases) {
        many.push_back(c.make_out());
        one.push_back(c.make_out());
      }
      for (size_t i = 0; i < cases.size(); ++i)
        args.push_back(cases[i].args(cases[0].x.data(), cases[i].weight.data(), cases[i].bias.data(), many[i].data()));
      auto s = cpu();
      linear_many_cpu(args.data(), args.size(), *s, simd);
      for (size_t i = 0; i < cases.size(); ++i) {
        LinearArgs a = args[i];
        a.out = one[i].data();
        linear_cpu(a, *s, simd);
      }
      s->synchronize();
      for (size_t i = 0; i < cases.size(); ++i)
        CHECK(many[i].bytes == one[i].bytes,
              "linear_many differs from linear: ", cpu_simd_name(simd), " M ", M, " op ", i);
      cases[0].check(many[0], test::str("linear_many cpu ", cpu_simd_name(simd)));
    }
}

// ---- errors ------------------------------------------------------------------------------------

TEST(cpu_model_ops_reject_bad_arguments) {
  auto s = cpu();
  using test::expect_error;
  const test::LinearCase lc(DType::Float32, DType::Float32, DType::Float32, false, 2, 3, 4, false, 5);
  HostTensor out = lc.make_out();
  LinearArgs la = lc.args(out.data());
  la.weight_dtype = DType::Int8;
  expect_error(ErrorCode::Unsupported, "linear: weight dtype int8 (supported: float32, float16, bfloat16)", [&] { linear(la, *s); });
  la = lc.args(out.data());
  la.x_stride = 3;
  expect_error(ErrorCode::InvalidArgument, "linear: x stride 3 is less than in_features (4)", [&] { linear(la, *s); });
  la = lc.args(out.data());
  la.in_features = 0;
  expect_error(ErrorCode::InvalidArgument, "must be positive", [&] { linear(la, *s); });
  LinearArgs pair[2] = {lc.args(out.data()), lc.args(out.data())};
  pair[1].num_tokens = 1;
  expect_error(ErrorCode::InvalidArgument, "linear_many: linear 1 has another input than linear 0", [&] { linear_many(pair, 2, *s); });
  pair[1] = lc.args(out.data());
  pair[1].weight_dtype = DType::Int8;
  expect_error(ErrorCode::Unsupported, "linear: weight dtype int8", [&] { linear_many(pair, 2, *s); });

  const test::RopeCase rc(DType::Float32, 2, 2, 1, 64, 64, 10000.0, true, 6);
  HostTensor qkv = rc.qkv;
  RopeArgs ra = rc.args(qkv.data(), rc.positions.data(), rc.inv_freq.data());
  ra.rotary_dim = 63;
  expect_error(ErrorCode::InvalidArgument, "rope: rotary_dim 63 must be even", [&] { rope(ra, *s); });
  ra = rc.args(qkv.data(), rc.positions.data(), rc.inv_freq.data());
  ra.query_stride = 100;
  expect_error(ErrorCode::InvalidArgument, "rope: query stride 100 is less than", [&] { rope(ra, *s); });
  ra = rc.args(qkv.data(), rc.positions.data(), rc.inv_freq.data());
  ra.dtype = DType::Int32;
  expect_error(ErrorCode::Unsupported, "rope: query/key dtype int32", [&] { rope(ra, *s); });

  const test::RmsNormCase nc(DType::Float32, DType::Float32, DType::Float32, false, DType::Float32, 2, 64, false, 1e-5f, 7);
  HostTensor nout = nc.make_out();
  RmsNormArgs na = nc.args(nout.data(), nullptr);
  na.eps = -1.0f;
  expect_error(ErrorCode::InvalidArgument, "rms_norm: eps -1 must be finite and ≥ 0", [&] { rms_norm(na, *s); });
  na = nc.args(nout.data(), nullptr);
  na.out_dtype = DType::UInt8;
  expect_error(ErrorCode::Unsupported, "rms_norm: out dtype uint8", [&] { rms_norm(na, *s); });

  SiluMulArgs sa{nout.data(), 10, nout.data(), DType::Float32, 1, 6};
  expect_error(ErrorCode::InvalidArgument, "silu_mul: x stride 10 is less than 2 * intermediate_size (12)", [&] { silu_mul(sa, *s); });
  expect_error(ErrorCode::Unsupported, "add: dtype int32", [&] { add(AddArgs{nullptr, nullptr, nullptr, DType::Int32, 4}, *s); });
  EmbeddingArgs ea{nullptr, 1, nullptr, DType::Float32, 0, 8, nullptr, DType::Float32};
  expect_error(ErrorCode::InvalidArgument, "vocab_size (0)", [&] { embedding(ea, *s); });
  s->synchronize();  // nothing was enqueued
}
