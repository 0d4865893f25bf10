// sample_tokens on CUDA against the plain definition (sampling_reference.h) over the grid of
// test_sampling_cpu.cpp. The kernel's float32 arithmetic may move a top-p cut or a draw boundary
// by a rounding step: greedy must match exactly, sampled draws in all but 1 % of the cases, and
// matching draws' logprobs within 1e-3.
#include <cmath>
#include <vector>

#include "cuda_test.h"
#include "harness.h"
#include "pagedllm/sampling.h"
#include "sampling_reference.h"

using namespace pagedllm;

TEST(cuda_sample_tokens_matches_the_definition) {
  test::require_cuda();
  uint32_t seed = 1;
  for (int64_t V : {1, 7, 1000, 32000}) {
    const test::SampleBatch b(V, 3, seed++);
    const int64_t S = static_cast<int64_t>(b.params.size());
    test::DeviceBuffer logits(b.logits), params(b.params.data(), b.params.size() * sizeof(SampleParams)),
        history(b.history.data(), b.history.size() * sizeof(int32_t)), ids(S * 4), lps(S * 4);
    auto s = test::gpu();
    sample_tokens(b.args(logits.get<float>(), params.get<SampleParams>(), history.get<int32_t>(), ids.get<int32_t>(), lps.get<float>()), *s);
    std::vector<int32_t> got(S);
    std::vector<float> got_lp(S);
    ids.read(got.data(), S * 4);
    lps.read(got_lp.data(), S * 4);
    int mismatches = 0;
    for (int64_t i = 0; i < S; ++i) {
      const SampleParams& p = b.params[i];
      const test::SampleResult want = test::sample_reference(b.logits.data() + p.logits_row * V, V, p, b.per_sample[i]);
      if (p.temperature == 0) CHECK(got[i] == want.token, "V ", V, " greedy sample ", i, ": ", got[i], ", want ", want.token);
      if (got[i] != want.token) {
        ++mismatches;
        continue;
      }
      CHECK(std::fabs(got_lp[i] - want.logprob) <= 1e-3 * (1 + std::fabs(want.logprob)), "V ", V, " sample ", i, ": logprob ",
            got_lp[i], ", want ", want.logprob);
    }
    CHECK(mismatches <= S / 100, "V ", V, ": ", mismatches, " of ", S, " draws differ from the definition");
  }
}
