// sample_tokens on CUDA (include/pagedllm/sampling.h): one 1024-thread block per sample, float32
// math over a stream-ordered workspace row of the vocabulary. Each thread owns a contiguous chunk
// of token ids, so that "in id order" (the ties of a cut, the walk of the draw) is a block-wide
// exclusive scan over the chunks. The top-k and top-p cuts are found by binary search over the
// float32 bit patterns of e ∈ [0, 1] (monotone for non-negative floats): the k-th largest e, and
// the largest threshold whose mass reaches top_p; ties at a cut are kept lowest id first.
// A kernel cannot throw: parameters out of range are clamped (the TS wrapper checks them).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_stream.h"
#include "pagedllm/error.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/sampling.h"

namespace pagedllm {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

// ---- block-wide reductions and scans (every thread gets the result) ---------------------------

template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* shared) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T r = shared[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, shared[w]);
  return r;
}

__device__ float block_sum(float v, float* shared) {
  return block_reduce(v, [](float a, float b) { return a + b; }, shared);
}
__device__ float block_max(float v, float* shared) {
  return block_reduce(v, [](float a, float b) { return fmaxf(a, b); }, shared);
}
__device__ int block_count(int v, int* shared) {
  return block_reduce(v, [](int a, int b) { return a + b; }, shared);
}

// The exclusive prefix of v over the threads in order (thread 0 gets 0).
template <typename T>
__device__ T block_exclusive_scan(T v, T* shared) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T x = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();
  if (lane == 31) shared[warp] = x;
  __syncthreads();
  T before = 0;
  for (int w = 0; w < warp; ++w) before += shared[w];
  return before + x - v;
}

__device__ float bits_float(uint32_t b) { return __uint_as_float(b); }

struct Chunk {
  int64_t begin, end;
};
__device__ Chunk my_chunk(int64_t V) {
  const int64_t c = (V + kThreads - 1) / kThreads;
  const int64_t b = min(V, static_cast<int64_t>(threadIdx.x) * c);
  return {b, min(V, b + c)};
}

// Ties (e == t) in the chunks of the threads before this one.
__device__ int ties_before(const float* e, Chunk ch, float t, int* ishared) {
  int ties = 0;
  for (int64_t i = ch.begin; i < ch.end; ++i) ties += e[i] == t;
  return block_exclusive_scan(ties, ishared);
}

__global__ void sample_kernel(SampleArgs a, float* work) {
  __shared__ float fshared[kWarps];
  __shared__ int ishared[kWarps];
  const int64_t s = blockIdx.x;
  const SampleParams p = a.params[s];
  const int64_t V = a.vocab_size;
  const int64_t row = min(static_cast<int64_t>(max(p.logits_row, 0)), a.num_rows - 1);
  const float* logits = a.logits + row * a.logits_stride;
  float* x = work + s * V;
  const Chunk ch = my_chunk(V);
  for (int64_t i = ch.begin; i < ch.end; ++i) x[i] = logits[i];
  __syncthreads();
  const float rep = p.repetition_penalty > 0 ? p.repetition_penalty : 1.0f;
  const int64_t hb = min(static_cast<int64_t>(max(p.history_begin, 0)), a.num_history);
  const int64_t he = min(max(static_cast<int64_t>(p.history_end), hb), a.num_history);
  // Distinct tokens: no two threads touch one logit.
  if (rep != 1.0f)
    for (int64_t h = hb + threadIdx.x; h < he; h += kThreads) {
      const int32_t t = a.history[2 * h];
      if (t >= 0 && t < V) x[t] = x[t] > 0 ? x[t] / rep : x[t] * rep;
    }
  __syncthreads();
  if (p.presence_penalty != 0 || p.frequency_penalty != 0)
    for (int64_t h = hb + threadIdx.x; h < he; h += kThreads) {
      const int32_t t = a.history[2 * h], n = a.history[2 * h + 1];
      if (n > 0 && t >= 0 && t < V) x[t] = x[t] - p.frequency_penalty * n - p.presence_penalty;
    }
  __syncthreads();

  if (!(p.temperature > 0)) {
    // Greedy: the first maximum (NaN never wins).
    float best = -INFINITY;
    int64_t best_id = V;
    for (int64_t i = ch.begin; i < ch.end; ++i)
      if (x[i] > best) best = x[i], best_id = i;
    const float m = block_max(best, fshared);
    const int64_t cand = best == m ? best_id : V;
    __syncthreads();
    if (threadIdx.x == 0) ishared[0] = INT32_MAX;
    __syncthreads();
    if (cand < V) atomicMin(&ishared[0], static_cast<int>(cand));
    __syncthreads();
    const int id = ishared[0];
    if (a.logprobs) {
      float sum = 0;
      for (int64_t i = ch.begin; i < ch.end; ++i) sum += expf(x[i] - m);
      sum = block_sum(sum, fshared);
      if (threadIdx.x == 0) a.logprobs[s] = id < V ? x[id] - m - logf(sum) : NAN;
    }
    if (threadIdx.x == 0) a.token_ids[s] = id < V ? id : -1;
    return;
  }

  // e = exp(x / T − max) ∈ [0, 1], in place.
  float m = -INFINITY;
  for (int64_t i = ch.begin; i < ch.end; ++i) m = fmaxf(m, x[i] / p.temperature);
  m = block_max(m, fshared);
  float local = 0;
  for (int64_t i = ch.begin; i < ch.end; ++i) local += (x[i] = expf(x[i] / p.temperature - m));
  const float all = block_sum(local, fshared);
  __syncthreads();
  float* e = x;

  const int64_t k = p.top_k > 0 ? min(static_cast<int64_t>(p.top_k), V) : V;
  // top-k: t_k = the k-th largest e (the largest t with count(e ≥ t) ≥ k); keep e > t_k and the
  // first k − count(e > t_k) ties.
  float tk = 0;
  int tk_need = 0, tk_before = 0;
  const bool top_k = k < V;
  if (top_k) {
    uint32_t lo = 0, hi = 0x3f800000u;  // bits of 0 and 1
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      const float t = bits_float(mid);
      int c = 0;
      for (int64_t i = ch.begin; i < ch.end; ++i) c += e[i] >= t;
      if (block_count(c, ishared) >= k) lo = mid;
      else hi = mid - 1;
    }
    tk = bits_float(lo);
    int gt = 0;
    for (int64_t i = ch.begin; i < ch.end; ++i) gt += e[i] > tk;
    tk_need = static_cast<int>(k) - block_count(gt, ishared);
    tk_before = ties_before(e, ch, tk, ishared);
  }
  // Kept by top-k: needs this thread's running tie rank, so the loops below walk the chunk in order.
  auto kept_k_walk = [&](auto&& body) {
    int rank = tk_before;
    for (int64_t i = ch.begin; i < ch.end; ++i) {
      bool keep = true;
      if (top_k) {
        if (e[i] == tk) keep = rank++ < tk_need;
        else keep = e[i] > tk;
      }
      body(i, keep);
    }
  };
  float sum_k = all;
  if (top_k) {
    float sk = 0;
    kept_k_walk([&](int64_t i, bool keep) { if (keep) sk += e[i]; });
    sum_k = block_sum(sk, fshared);
  }
  // top-p among the top-k kept: the largest t whose kept mass of e ≥ t reaches top_p · sum_k; keep
  // e > t_p, and ties at t_p in id order while the mass before them is short of the target.
  const bool top_p = p.top_p < 1;
  const float target = p.top_p * sum_k;
  float tp = 0, tp_mass_gt = 0;
  int tp_before = 0;
  if (top_p) {
    uint32_t lo = 0, hi = 0x3f800000u;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      const float t = bits_float(mid);
      float mass = 0;
      kept_k_walk([&](int64_t i, bool keep) { if (keep && e[i] >= t) mass += e[i]; });
      if (block_sum(mass, fshared) >= target) lo = mid;
      else hi = mid - 1;
    }
    tp = bits_float(lo);
    float gt = 0;
    int ties = 0;
    kept_k_walk([&](int64_t i, bool keep) {
      if (keep && e[i] > tp) gt += e[i];
      if (keep && e[i] == tp) ties++;
    });
    tp_mass_gt = block_sum(gt, fshared);
    tp_before = block_exclusive_scan(ties, ishared);
  }
  // The kept set in id order: min-p last; this thread's kept mass, then the draw's walk.
  const float min_p = p.min_p;
  auto kept_walk = [&](auto&& body) {
    int rank = tp_before;
    kept_k_walk([&](int64_t i, bool keep) {
      if (keep && top_p) {
        if (e[i] == tp) keep = tp_mass_gt + static_cast<float>(rank++) * tp < target;
        else keep = e[i] > tp;
      }
      body(i, keep && e[i] >= min_p);
    });
  };
  float mine = 0;
  int64_t my_last = -1;
  kept_walk([&](int64_t i, bool keep) {
    if (keep) mine += e[i], my_last = i;
  });
  const float before = block_exclusive_scan(mine, fshared);
  const float total = block_sum(mine, fshared);
  const float u = static_cast<float>(p.draw * (1.0 / 4294967296.0)) * total;
  __syncthreads();
  if (threadIdx.x == 0) ishared[0] = INT32_MAX, ishared[1] = -1;
  __syncthreads();
  if (my_last >= 0) atomicMax(&ishared[1], static_cast<int>(my_last));
  if (mine > 0 && before <= u && u < before + mine) {
    // The first kept id of this chunk at which the running sum passes u.
    float run = before;
    int64_t found = -1;
    kept_walk([&](int64_t i, bool keep) {
      if (keep && found < 0 && (run += e[i]) > u) found = i;
    });
    // (The scan put u in this chunk but the running sum rounded below it: the chunk's last token.)
    if (found < 0) found = my_last;
    atomicMin(&ishared[0], static_cast<int>(found));
  }
  __syncthreads();
  const int id = ishared[0] != INT32_MAX ? ishared[0] : ishared[1];  // u ≥ total by rounding: the last kept
  if (threadIdx.x == 0) {
    a.token_ids[s] = id;
    if (a.logprobs) a.logprobs[s] = id >= 0 ? logf(e[id] / all) : NAN;
  }
}

}  // namespace

void sample_tokens_cuda(const SampleArgs& a, Stream& stream) {
  if (a.num_samples == 0) return;
  PAGEDLLM_CHECK(a.num_rows > 0, InvalidArgument, "sample_tokens: no logits rows");
  PAGEDLLM_CHECK(a.num_samples <= 65535, InvalidArgument, "sample_tokens: at most 65535 samples per call, got ", a.num_samples);
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  const size_t bytes = static_cast<size_t>(a.num_samples * a.vocab_size) * sizeof(float);
  MemoryResourcePtr resource = default_memory_resource(stream.device());
  void* work = resource->allocate(bytes, stream, Category::Workspace);
  sample_kernel<<<static_cast<unsigned>(a.num_samples), kThreads, 0, cuda.handle()>>>(a, static_cast<float*>(work));
  const cudaError_t launched = cudaGetLastError();
  resource->deallocate(work, bytes, stream, Category::Workspace);  // stream-ordered: after the kernel
  PAGEDLLM_CUDA_CHECK(launched);
}

}  // namespace pagedllm
