// The sampling definition (include/pagedllm/sampling.h) written out plainly for the tests: every
// token sorted (no buckets, no quickselect), in float64; and the random cases the CPU and CUDA
// tests share.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "pagedllm/sampling.h"

namespace test {

struct SampleResult {
  int32_t token;
  double logprob;
};

// history: (token, output count) pairs of this sample.
inline SampleResult sample_reference(const float* row, int64_t V, const pagedllm::SampleParams& p,
                                     const std::vector<std::pair<int32_t, int32_t>>& history) {
  std::vector<double> x(row, row + V);
  for (auto [t, n] : history)
    if (p.repetition_penalty != 1.0f) x[t] = x[t] > 0 ? x[t] / p.repetition_penalty : x[t] * p.repetition_penalty;
  for (auto [t, n] : history)
    if (n > 0) x[t] = x[t] - static_cast<double>(p.frequency_penalty) * n - p.presence_penalty;
  auto log_softmax = [&](const std::vector<double>& v, int64_t id) {
    const double m = *std::max_element(v.begin(), v.end());
    double s = 0;
    for (double a : v) s += std::exp(a - m);
    return v[id] - m - std::log(s);
  };
  if (p.temperature == 0) {
    const int64_t best = std::max_element(x.begin(), x.end()) - x.begin();  // the first maximum
    return {static_cast<int32_t>(best), log_softmax(x, best)};
  }
  for (double& a : x) a /= p.temperature;
  const double m = *std::max_element(x.begin(), x.end());
  std::vector<double> e(V);
  double all = 0;
  for (int64_t i = 0; i < V; ++i) all += (e[i] = std::exp(x[i] - m));
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return static_cast<float>(e[a]) > static_cast<float>(e[b]); });
  const int64_t k = p.top_k > 0 ? std::min<int64_t>(p.top_k, V) : V;
  int64_t keep = k;
  if (p.top_p < 1) {
    double sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += e[order[i]];
    if (k == V) sum = all;
    double c = 0;
    for (int64_t i = 0; i < keep; ++i)
      if ((c += e[order[i]] / sum) >= p.top_p) {
        keep = i + 1;
        break;
      }
  }
  std::vector<int32_t> kept(order.begin(), order.begin() + keep);
  std::sort(kept.begin(), kept.end());
  double total = 0;
  for (int32_t id : kept)
    if (e[id] >= p.min_p) total += e[id];
  double u = p.draw / 4294967296.0 * total;
  int32_t last = -1;
  for (int32_t id : kept) {
    if (!(e[id] >= p.min_p)) continue;
    last = id;
    if ((u -= e[id]) < 0) break;
  }
  return {last, std::log(e[last] / all)};
}

// A batch of random cases: logits rows (with repeated values, so ties occur), every parameter
// combination of the grid, draws, and penalty histories.
struct SampleBatch {
  int64_t V, rows;
  std::vector<float> logits;
  std::vector<pagedllm::SampleParams> params;
  std::vector<int32_t> history;  // pairs
  std::vector<std::vector<std::pair<int32_t, int32_t>>> per_sample;

  SampleBatch(int64_t vocab, int64_t num_rows, uint32_t seed) : V(vocab), rows(num_rows) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    logits.resize(rows * V);
    for (float& v : logits) v = normal(rng);
    for (int64_t i = 0; i < rows * V; i += 7) logits[i] = std::round(logits[i]);  // ties
    const float temps[] = {0.0f, 0.7f, 1.3f};
    const int32_t ks[] = {0, 1, 5, 50};
    const float ps[] = {1.0f, 0.9f, 0.5f};
    const float min_ps[] = {0.0f, 0.05f};
    int n = 0;
    for (float t : temps)
      for (int32_t k : ks)
        for (float tp : ps)
          for (float mp : min_ps)
            for (int pen = 0; pen < 2; ++pen) {
              pagedllm::SampleParams p{};
              p.temperature = t;
              p.top_k = k;
              p.top_p = tp;
              p.min_p = mp;
              p.repetition_penalty = pen ? 1.3f : 1.0f;
              p.presence_penalty = pen ? 0.5f : 0.0f;
              p.frequency_penalty = pen ? 0.25f : 0.0f;
              p.logits_row = static_cast<int32_t>(n++ % rows);
              p.draw = static_cast<uint32_t>(rng());
              std::vector<std::pair<int32_t, int32_t>> h;
              if (pen) {
                std::map<int32_t, int32_t> counts;
                for (int j = 0; j < 6; ++j) counts[static_cast<int32_t>(rng() % V)] += 1 + j % 2;
                for (int j = 0; j < 4; ++j) counts.emplace(static_cast<int32_t>(rng() % V), 0);  // prompt-only
                h.assign(counts.begin(), counts.end());
              }
              p.history_begin = static_cast<int32_t>(history.size() / 2);
              for (auto [tok, c] : h) {
                history.push_back(tok);
                history.push_back(c);
              }
              p.history_end = static_cast<int32_t>(history.size() / 2);
              params.push_back(p);
              per_sample.push_back(h);
            }
  }
  pagedllm::SampleArgs args(const float* l, const pagedllm::SampleParams* pp, const int32_t* h, int32_t* ids, float* lps) const {
    return {l, rows, V, V, pp, static_cast<int64_t>(params.size()), h, static_cast<int64_t>(history.size() / 2), ids, lps};
  }
};

}  // namespace test
