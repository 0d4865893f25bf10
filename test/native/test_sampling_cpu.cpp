// sample_tokens on the CPU (include/pagedllm/sampling.h) against the plain definition
// (sampling_reference.h) over a grid of temperatures, top-k, top-p, min-p and penalties on
// vocabularies of 1 to 32000 tokens with tied logits; NaN logits; bad parameters.
#include <cmath>
#include <limits>
#include <vector>

#include "harness.h"
#include "model_ops_reference.h"
#include "pagedllm/device.h"
#include "pagedllm/error.h"
#include "pagedllm/sampling.h"
#include "sampling_reference.h"

using namespace pagedllm;

namespace {
std::shared_ptr<Stream> cpu() { return default_stream(Device{DeviceKind::Cpu, 0}); }
}  // namespace

TEST(sample_tokens_cpu_matches_the_definition) {
  uint32_t seed = 1;
  for (int64_t V : {1, 7, 1000, 32000}) {
    const test::SampleBatch b(V, 3, seed++);
    const int64_t S = static_cast<int64_t>(b.params.size());
    std::vector<int32_t> ids(S, -2);
    std::vector<float> lps(S);
    auto s = cpu();
    sample_tokens(b.args(b.logits.data(), b.params.data(), b.history.data(), ids.data(), lps.data()), *s);
    s->synchronize();
    for (int64_t i = 0; i < S; ++i) {
      const SampleParams& p = b.params[i];
      const test::SampleResult want = test::sample_reference(b.logits.data() + p.logits_row * V, V, p, b.per_sample[i]);
      CHECK(ids[i] == want.token, "V ", V, " sample ", i, " (T ", p.temperature, " k ", p.top_k, " p ", p.top_p, " min_p ",
            p.min_p, " rep ", p.repetition_penalty, "): token ", ids[i], ", want ", want.token);
      CHECK(std::fabs(lps[i] - want.logprob) <= 1e-5 * (1 + std::fabs(want.logprob)), "V ", V, " sample ", i, ": logprob ",
            lps[i], ", want ", want.logprob);
    }
    // Without logprobs: the same tokens.
    std::vector<int32_t> again(S, -2);
    sample_tokens(b.args(b.logits.data(), b.params.data(), b.history.data(), again.data(), nullptr), *s);
    s->synchronize();
    CHECK(again == ids, "V ", V, ": tokens depend on whether logprobs are asked for");
  }
}

TEST(sample_tokens_cpu_draws_follow_the_distribution) {
  // Three tokens with probabilities 1/2, 1/3, 1/6 at T = 1: draws spread over [0, 1) land on each
  // token in proportion (u walks the kept tokens in id order).
  const float logits[3] = {std::log(3.0f), std::log(2.0f), 0.0f};
  std::vector<SampleParams> params(600);
  for (size_t i = 0; i < params.size(); ++i) {
    params[i] = SampleParams{};
    params[i].temperature = 1;
    params[i].top_p = 1;
    params[i].repetition_penalty = 1;
    params[i].draw = static_cast<uint32_t>((i + 0.5) / params.size() * 4294967296.0);
  }
  std::vector<int32_t> ids(params.size());
  auto s = cpu();
  sample_tokens({logits, 1, 3, 3, params.data(), static_cast<int64_t>(params.size()), nullptr, 0, ids.data(), nullptr}, *s);
  s->synchronize();
  int counts[3] = {};
  for (int32_t id : ids) counts[id]++;
  CHECK(counts[0] == 300 && counts[1] == 200 && counts[2] == 100, counts[0], " ", counts[1], " ", counts[2]);
}

TEST(sample_tokens_cpu_nan_logits_and_bad_parameters) {
  auto s = cpu();
  std::vector<float> logits(8, 0.5f);
  logits[3] = std::numeric_limits<float>::quiet_NaN();
  SampleParams p{};
  p.temperature = 1;
  p.top_p = 1;
  p.repetition_penalty = 1;
  int32_t id = 0;
  float lp = 0;
  std::fill(logits.begin(), logits.end(), std::numeric_limits<float>::quiet_NaN());
  sample_tokens({logits.data(), 1, 8, 8, &p, 1, nullptr, 0, &id, &lp}, *s);
  s->synchronize();
  CHECK(id == -1 && std::isnan(lp), "all-NaN logits: ", id);
  using test::expect_error;
  expect_error(ErrorCode::InvalidArgument, "sample_tokens: vocab_size 0 is out of range",
               [&] { sample_tokens({logits.data(), 1, 8, 0, &p, 1, nullptr, 0, &id, nullptr}, *s); });
  expect_error(ErrorCode::InvalidArgument, "sample_tokens: logits stride 4 is less than vocab_size (8)",
               [&] { sample_tokens({logits.data(), 1, 4, 8, &p, 1, nullptr, 0, &id, nullptr}, *s); });
  for (auto [field, patch] : std::vector<std::pair<const char*, void (*)(SampleParams&)>>{
           {"temperature must be a finite number ≥ 0", [](SampleParams& q) { q.temperature = -1; }},
           {"top_p must be in (0, 1]", [](SampleParams& q) { q.top_p = 0; }},
           {"min_p must be in [0, 1]", [](SampleParams& q) { q.min_p = 2; }},
           {"repetition_penalty must be a finite number > 0", [](SampleParams& q) { q.repetition_penalty = 0; }},
           {"logits_row must be a row of the logits", [](SampleParams& q) { q.logits_row = 1; }},
           {"history range must be inside the history", [](SampleParams& q) { q.history_end = 2; }}}) {
    SampleParams bad = p;
    patch(bad);
    expect_error(ErrorCode::InvalidArgument, std::string("sample_tokens: sample 0 ") + field, [&] {
      sample_tokens({logits.data(), 1, 8, 8, &bad, 1, nullptr, 0, &id, nullptr}, *s);
      s->synchronize();
    });
  }
}

namespace pagedllm::sampling_kernels {
void exp_negative_avx2(const double* d, double* out, int64_t n);  // cpu/sampling_avx2.cpp
}

TEST(sample_tokens_avx2_exponential_within_two_ulp) {
  if (!cpu_simd_supported(CpuSimd::Avx2)) SKIP("this CPU lacks AVX2/FMA: the kernel is never chosen here");
  std::vector<double> d;
  for (double v = 0; v <= 750; v += 0.0137) d.push_back(v);
  for (double v : {0.0, 1e-300, 1e-17, 0.34657359027997264, 0.5 * std::log(2.0), 707.9, 708.0, 708.0001, 745.2,
                   std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()})
    d.push_back(v);
  std::vector<double> out(d.size());
  sampling_kernels::exp_negative_avx2(d.data(), out.data(), static_cast<int64_t>(d.size()));
  for (size_t i = 0; i < d.size(); ++i) {
    if (std::isnan(d[i])) {
      CHECK(std::isnan(out[i]), "exp(-NaN) = ", out[i]);
    } else if (d[i] > 708) {
      CHECK(out[i] == 0, "exp(-", d[i], ") = ", out[i], ", want 0 (below the normal range)");
    } else {
      const double want = std::exp(-d[i]);
      const double rel = std::fabs(out[i] - want) / want;
      CHECK(rel <= 4.5e-16, "exp(-", d[i], ") = ", out[i], ", want ", want, " (relative error ", rel, ")");
    }
  }
}
