// sample_tokens (include/pagedllm/sampling.h): the argument checks and dispatch for every backend,
// and the CPU op — lib/sampling.ts sampleToken's algorithm step for step in float64 (the same
// bucketed top-p bound, quickselect for top-k and the same sort keys; its sums over the vocabulary
// are added by chunks), samples split over the thread pool, or one sample's vocabulary.
#include "pagedllm/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "cpu_stream.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/device.h"
#include "pagedllm/error.h"
#include "thread_pool.h"

namespace pagedllm {

namespace sampling_kernels {
void exp_negative_avx2(const double* d, double* out, int64_t n);  // cpu/sampling_avx2.cpp
}  // namespace sampling_kernels

namespace {

constexpr int64_t kMaxVocab = int64_t(1) << 20;
constexpr int kMassBuckets = 64;
constexpr int64_t kChunk = 8192;  // vocabulary chunk of the exponentials (see sample_one)

void check_sample_args(const SampleArgs& a) {
  PAGEDLLM_CHECK(a.vocab_size > 0 && a.vocab_size <= kMaxVocab, InvalidArgument, "sample_tokens: vocab_size ", a.vocab_size,
                 " is out of range (1 … 2^20)");
  PAGEDLLM_CHECK(a.num_rows >= 0 && a.num_samples >= 0 && a.num_history >= 0, InvalidArgument,
                 "sample_tokens: negative count");
  PAGEDLLM_CHECK(a.logits_stride >= a.vocab_size, InvalidArgument, "sample_tokens: logits stride ", a.logits_stride,
                 " is less than vocab_size (", a.vocab_size, ")");
  PAGEDLLM_CHECK(a.num_samples == 0 || (a.logits && a.params && a.token_ids && (a.history || a.num_history == 0)),
                 InvalidArgument, "sample_tokens: null pointer");
}

// The host-side checks of the parameters (CPU: params are host memory).
void check_params(const SampleArgs& a) {
  for (int64_t i = 0; i < a.num_samples; ++i) {
    const SampleParams& p = a.params[i];
    auto bad = [&](const char* field, const char* rule) {
      PAGEDLLM_FAIL(InvalidArgument, "sample_tokens: sample ", i, " ", field, " must be ", rule);
    };
    if (!(p.temperature >= 0 && std::isfinite(p.temperature))) bad("temperature", "a finite number ≥ 0");
    if (!(p.top_p > 0 && p.top_p <= 1)) bad("top_p", "in (0, 1]");
    if (!(p.min_p >= 0 && p.min_p <= 1)) bad("min_p", "in [0, 1]");
    if (!(p.repetition_penalty > 0 && std::isfinite(p.repetition_penalty))) bad("repetition_penalty", "a finite number > 0");
    if (!std::isfinite(p.presence_penalty)) bad("presence_penalty", "finite");
    if (!std::isfinite(p.frequency_penalty)) bad("frequency_penalty", "finite");
    if (!(p.logits_row >= 0 && p.logits_row < a.num_rows)) bad("logits_row", "a row of the logits");
    if (!(p.history_begin >= 0 && p.history_begin <= p.history_end && p.history_end <= a.num_history))
      bad("history range", "inside the history");
  }
}

// Per-thread scratch of one sample.
struct Scratch {
  std::vector<double> x, values;
  std::vector<double> keys;
  std::vector<int32_t> ids;
  std::vector<double> chunk_max, chunk_sums;
  std::vector<int64_t> chunk_counts;
};

// log-softmax of x at id (lib/sampling.ts logSoftmaxAt).
template <typename T>
double log_softmax_at(const T* x, int64_t n, int64_t id) {
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i)
    if (static_cast<double>(x[i]) > max) max = x[i];
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max);
  return static_cast<double>(x[id]) - max - std::log(sum);
}

template <typename T>
int64_t argmax(const T* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

// split: this sample may use the thread pool (it is the only one running).
void sample_one(const SampleArgs& a, const SampleParams& p, Scratch& s, int32_t* token, float* logprob, bool split) {
  const int64_t V = a.vocab_size;
  const float* row = a.logits + p.logits_row * a.logits_stride;
  const bool want = logprob != nullptr;
  const double rep = p.repetition_penalty, presence = p.presence_penalty, frequency = p.frequency_penalty;
  const bool penalized = rep != 1 || presence != 0 || frequency != 0;
  if (p.temperature == 0 && !penalized) {
    const int64_t best = argmax(row, V);
    *token = static_cast<int32_t>(best);
    if (want) *logprob = static_cast<float>(log_softmax_at(row, V, best));
    return;
  }
  s.x.assign(row, row + V);
  double* x = s.x.data();
  if (penalized) {
    const int32_t* h = a.history + 2 * static_cast<int64_t>(p.history_begin);
    const int64_t n = p.history_end - p.history_begin;
    if (rep != 1)
      for (int64_t i = 0; i < n; ++i) {
        const int32_t t = h[2 * i];
        if (t >= 0 && t < V) x[t] = x[t] > 0 ? x[t] / rep : x[t] * rep;
      }
    for (int64_t i = 0; i < n; ++i) {
      const int32_t t = h[2 * i], count = h[2 * i + 1];
      if (count > 0 && t >= 0 && t < V) x[t] = x[t] - frequency * count - presence;
    }
  }
  if (p.temperature == 0) {
    const int64_t best = argmax(x, V);
    *token = static_cast<int32_t>(best);
    if (want) *logprob = static_cast<float>(log_softmax_at(x, V, best));
    return;
  }
  const double T = p.temperature;
  // x /= T and its max, then x becomes e = exp(x − max) ∈ (0, 1] with all = Σ e and mass[b] the sum
  // of those in (2^−(b+1), 2^−b] (the top-p bound). Over fixed chunks of the vocabulary, on the
  // pool when this is the only sample running (`split`); the chunks' sums are added in chunk order,
  // so the result does not depend on the number of threads.
  const int64_t chunks = (V + kChunk - 1) / kChunk;
  s.chunk_max.assign(chunks, -std::numeric_limits<double>::infinity());
  s.chunk_sums.assign(chunks * (kMassBuckets + 1), 0.0);
  s.chunk_counts.assign(chunks * kMassBuckets, 0);
  auto scale = [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t i = c * kChunk; i < std::min(V, (c + 1) * kChunk); ++i)
        if ((x[i] = x[i] / T) > m) m = x[i];
      s.chunk_max[c] = m;
    }
  };
  double max = -std::numeric_limits<double>::infinity();
  const bool avx2 = cpu_simd() != CpuSimd::Portable;  // (the avx512 path runs the AVX2 kernel here)
  auto exponentiate = [&](int64_t c0, int64_t c1) {
    constexpr int64_t kStep = 256;
    double d[kStep], ev[kStep];
    for (int64_t c = c0; c < c1; ++c) {
      double* sums = &s.chunk_sums[c * (kMassBuckets + 1)];  // [all, mass[0 … 63]]
      int64_t* counts = &s.chunk_counts[c * kMassBuckets];
      for (int64_t i0 = c * kChunk; i0 < std::min(V, (c + 1) * kChunk); i0 += kStep) {
        const int64_t n = std::min(kStep, std::min(V, (c + 1) * kChunk) - i0);
        for (int64_t j = 0; j < n; ++j) d[j] = max - x[i0 + j];
        if (avx2) sampling_kernels::exp_negative_avx2(d, ev, n);
        else
          for (int64_t j = 0; j < n; ++j) ev[j] = std::exp(-d[j]);
        for (int64_t j = 0; j < n; ++j) {
          const double e = (x[i0 + j] = ev[j]);
          sums[0] += e;
          const double bits = d[j] * 1.4426950408889634;  // Math.LOG2E
          const int b = bits < kMassBuckets - 1 ? static_cast<int>(bits) : kMassBuckets - 1;
          sums[1 + b] += e;
          counts[b]++;
        }
      }
    }
  };
  if (split && chunks > 1) ThreadPool::global().parallel_for(chunks, 1, scale);
  else scale(0, chunks);
  for (double m : s.chunk_max)
    if (m > max) max = m;
  if (split && chunks > 1) ThreadPool::global().parallel_for(chunks, 1, exponentiate);
  else exponentiate(0, chunks);
  double mass[kMassBuckets] = {};
  int64_t count[kMassBuckets] = {};
  double all = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    all += s.chunk_sums[c * (kMassBuckets + 1)];
    for (int b = 0; b < kMassBuckets; ++b) {
      mass[b] += s.chunk_sums[c * (kMassBuckets + 1) + 1 + b];
      count[b] += s.chunk_counts[c * kMassBuckets + b];
    }
  }
  const double* e = x;
  const int64_t k = p.top_k > 0 ? std::min<int64_t>(p.top_k, V) : V;
  const double top_p = p.top_p;
  // The kept tokens, in id order.
  std::vector<int32_t>& ids = s.ids;
  ids.clear();
  if (k < V || top_p < 1) {
    double floor = 0;
    if (k < V) {
      // The k-th largest e: among the tokens of the buckets down to the one where the count reaches k.
      int64_t seen = 0;
      int b = 0;
      while (b < kMassBuckets - 1 && (seen += count[b]) < k) b++;
      // (A bucket lower than its own bound: a count near a bucket's edge may have rounded either way.)
      const double bound = b + 2 >= kMassBuckets ? -1.0 : std::ldexp(1.0, -(b + 2));
      s.values.clear();
      for (int64_t i = 0; i < V; ++i)
        if (e[i] > bound) s.values.push_back(e[i]);
      if (static_cast<int64_t>(s.values.size()) < k) s.values.assign(e, e + V);  // (cannot happen; never index past)
      std::nth_element(s.values.begin(), s.values.begin() + (k - 1), s.values.end(), std::greater<double>());
      floor = s.values[k - 1];
    } else {
      double cumulative = 0;
      int b = 0;
      while (b < kMassBuckets - 1 && (cumulative += mass[b]) < top_p * all) b++;
      floor = b + 2 >= kMassBuckets ? 0 : std::ldexp(1.0, -(b + 2));
    }
    // Descending e at float32 precision, ties by id: keys (2^32 − 1 − bits(float(e))) · 2^20 + id,
    // exact in a double (as lib/sampling.ts descending()).
    s.keys.clear();
    for (int64_t i = 0; i < V; ++i) {
      if (!(e[i] >= floor)) continue;
      const float f = static_cast<float>(e[i]);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      s.keys.push_back(static_cast<double>(0xffffffffu - bits) * 1048576.0 + static_cast<double>(i));
    }
    std::sort(s.keys.begin(), s.keys.end());
    const int64_t n = static_cast<int64_t>(s.keys.size());
    auto id_at = [&](int64_t i) { return static_cast<int32_t>(std::fmod(s.keys[i], 1048576.0)); };
    int64_t keep = std::min(k, n);
    if (top_p < 1) {
      double sum = 0;
      if (k < V) {
        for (int64_t i = 0; i < keep; ++i) sum += e[id_at(i)];
      } else {
        sum = all;
      }
      double cumulative = 0;
      for (int64_t i = 0; i < keep; ++i) {
        cumulative += e[id_at(i)] / sum;
        if (cumulative >= top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    for (int64_t i = 0; i < keep; ++i) ids.push_back(id_at(i));
    std::sort(ids.begin(), ids.end());
  } else {
    ids.resize(V);
    for (int64_t i = 0; i < V; ++i) ids[i] = static_cast<int32_t>(i);
  }
  // min-p relative to the most likely token (e = 1, kept by every filter); then the draw.
  const double min_p = p.min_p;
  double total = 0;
  for (int32_t id : ids)
    if (e[id] >= min_p) total += e[id];
  double u = static_cast<double>(p.draw) / 4294967296.0 * total;
  int32_t last = -1;
  for (int32_t id : ids) {
    if (!(e[id] >= min_p)) continue;  // (NaN too)
    last = id;
    u -= e[id];
    if (u < 0) break;
  }
  // Nothing kept only when the logits are all NaN (every comparison false): -1, which the caller reports.
  *token = last;
  if (want) *logprob = last < 0 ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(std::log(e[last] / all));
}

// Samples over the pool when there are enough to keep it busy; else one after another, each
// splitting its vocabulary-wide loops over the pool.
void run_samples(const SampleArgs& a) {
  ThreadPool& pool = ThreadPool::global();
  if (a.num_samples >= pool.size()) {
    pool.parallel_for(a.num_samples, 1, [&](int64_t i0, int64_t i1) {
      thread_local Scratch scratch;
      for (int64_t i = i0; i < i1; ++i)
        sample_one(a, a.params[i], scratch, a.token_ids + i, a.logprobs ? a.logprobs + i : nullptr, false);
    });
    return;
  }
  thread_local Scratch scratch;
  for (int64_t i = 0; i < a.num_samples; ++i)
    sample_one(a, a.params[i], scratch, a.token_ids + i, a.logprobs ? a.logprobs + i : nullptr, true);
}

}  // namespace

void sample_tokens_cpu(const SampleArgs& a, Stream& stream) {
  check_sample_args(a);
  as_cpu_stream(stream).enqueue([a] {
    check_params(a);  // params live in (host) memory written by earlier work on this stream
    run_samples(a);
  });
}

void sample_tokens(const SampleArgs& a, Stream& stream) {
  check_sample_args(a);
  if (a.num_samples == 0) return;
  if (stream.device().is_cpu()) sample_tokens_cpu(a, stream);
  else sample_tokens_cuda(a, stream);
}

}  // namespace pagedllm
