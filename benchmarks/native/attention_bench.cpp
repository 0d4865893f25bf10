// The native paged-attention benchmark (driven by benchmarks/attention.bench.ts,
// runnable alone where only cmake and nvcc exist, such as the GPU machine).
//
//   pagedllm_bench_attention [--device cpu|cuda] [--case NAME]... [--reps N] [--partitions N]
//                            [--kernel auto|simt|tc] [--list]
//   (--partitions: force the CUDA decode kernel's split-K partition count, for tuning; 0: its own choice;
//    --kernel: the CUDA decode kernel (PagedAttentionArgs::decode_kernel), reported per case as
//    "decodeKernel": "tc" (tensor cores), "simt", or "none" (CPU, prefill))
//
// For each case: the bytes the kernel must read (every visible K/V element and
// scale once, the queries, plus the outputs written) over the median time, as a
// fraction of the memory bandwidth measured in the same run — on the CPU a
// multi-threaded read of a buffer far larger than the caches, on CUDA a
// device-to-device copy counted as bytes read + bytes written. On CUDA the L2
// is flushed (a write over twice its size) before every timed repetition, and
// times come from CUDA events around the launch alone. Prefill cases also give
// TFLOP/s (4 · head_size flops per visible (query, key) pair and head).
// Caches hold random values (never zeros); block tables are shuffled unless the
// case says "contiguous" (the identity table, to price the paging itself).
// Prints one JSON object.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "pagedllm/convert.h"
#include "pagedllm/device.h"
#include "pagedllm/error.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/paged_attention.h"
#include "pagedllm/tensor_ops.h"
#include "bench_util.h"

using namespace pagedllm;
using namespace pagedllm::bench;

namespace {

struct Case {
  const char* name;
  const char* device;  // "cpu", "cuda" or "any"
  int num_seqs, seq_len, q_len;  // q_len 1: decode
  int num_heads, num_kv_heads, head_size, block_size;
  DType dtype;
  KvCacheDType kv;
  bool contiguous;
};

const Case kCases[] = {
    // GPU targets (issue: paged attention), fp16, head 128, block 16.
    {"decode_mha_b64_l1024", "cuda", 64, 1024, 1, 32, 32, 128, 16, DType::Float16, KvCacheDType::Float16, false},
    {"decode_mha_b64_l1024_contiguous", "cuda", 64, 1024, 1, 32, 32, 128, 16, DType::Float16, KvCacheDType::Float16, true},
    {"decode_mha_b16_l4096", "cuda", 16, 4096, 1, 32, 32, 128, 16, DType::Float16, KvCacheDType::Float16, false},
    {"decode_gqa8_b64_l4096", "cuda", 64, 4096, 1, 32, 4, 128, 16, DType::Float16, KvCacheDType::Float16, false},
    {"decode_mha_b1_l16384", "cuda", 1, 16384, 1, 32, 32, 128, 16, DType::Float16, KvCacheDType::Float16, false},
    {"decode_mha_b64_l1024_int8", "cuda", 64, 1024, 1, 32, 32, 128, 16, DType::Float16, KvCacheDType::Int8, false},
    {"decode_mha_b64_l1024_fp8", "cuda", 64, 1024, 1, 32, 32, 128, 16, DType::Float16, KvCacheDType::Fp8E4M3, false},
    {"decode_mha_b64_l1024_bf16", "cuda", 64, 1024, 1, 32, 32, 128, 16, DType::BFloat16, KvCacheDType::BFloat16, false},
    {"prefill_mha_b8_l2048", "cuda", 8, 2048, 2048, 32, 32, 128, 16, DType::Float16, KvCacheDType::Float16, false},
    {"prefill_gqa8_b8_l2048", "cuda", 8, 2048, 2048, 32, 4, 128, 16, DType::BFloat16, KvCacheDType::BFloat16, false},
    // CPU target: batch 8 × 2048 (Llama-7B-shaped heads, float32 activations, fp16 KV).
    {"cpu_decode_mha_b8_l2048", "cpu", 8, 2048, 1, 32, 32, 128, 16, DType::Float32, KvCacheDType::Float16, false},
    {"cpu_decode_mha_b8_l2048_contiguous", "cpu", 8, 2048, 1, 32, 32, 128, 16, DType::Float32, KvCacheDType::Float16, true},
    {"cpu_decode_gqa4_b8_l2048", "cpu", 8, 2048, 1, 32, 8, 128, 16, DType::Float32, KvCacheDType::Float16, false},
    {"cpu_decode_mha_b8_l2048_int8", "cpu", 8, 2048, 1, 32, 32, 128, 16, DType::Float32, KvCacheDType::Int8, false},
    {"cpu_decode_mha_b8_l2048_f32", "cpu", 8, 2048, 1, 32, 32, 128, 16, DType::Float32, KvCacheDType::Float32, false},
    {"cpu_decode_mha_b1_l16384", "cpu", 1, 16384, 1, 32, 32, 128, 16, DType::Float32, KvCacheDType::Float16, false},
    // 8 MiB of KV: mostly cache-resident, so this one measures the tile's arithmetic, not memory.
    {"cpu_decode_incache", "cpu", 8, 256, 1, 8, 8, 128, 16, DType::Float32, KvCacheDType::Float16, false},
    // One decode step of a small GQA model (16 query heads over 4 KV heads): the tile's per-call
    // overhead and arithmetic at a short, cache-resident context.
    {"cpu_decode_gqa4_b1_l256", "cpu", 1, 256, 1, 16, 4, 128, 16, DType::Float32, KvCacheDType::Float16, false},
    {"cpu_decode_gqa4_b1_l256_f32kv", "cpu", 1, 256, 1, 16, 4, 128, 16, DType::Float32, KvCacheDType::Float32, false},
    {"cpu_decode_gqa4_b1_l1024", "cpu", 1, 1024, 1, 16, 4, 128, 16, DType::Float32, KvCacheDType::Float16, false},
    {"cpu_prefill_gqa4_b1_l512", "cpu", 1, 512, 512, 32, 8, 128, 16, DType::Float32, KvCacheDType::Float16, false},
};

// Fills `bytes` of device memory with a repeating 16 MiB pattern of random values of `kind`.
void fill_random(Buffer& b, int kind /* 0 f32, 1 f16, 2 bf16, 3 bytes, 4 scales */, uint32_t seed) {
  const size_t chunk = std::min<size_t>(b.bytes, 16u << 20);
  std::vector<unsigned char> host(chunk);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  const size_t esize = kind == 1 || kind == 2 ? 2 : kind == 3 ? 1 : 4;
  for (size_t i = 0; i + esize <= chunk; i += esize) {
    switch (kind) {
      case 0: { const float f = u(rng); std::memcpy(&host[i], &f, 4); break; }
      case 1: { const uint16_t h = from_float<half_t>(u(rng)).bits; std::memcpy(&host[i], &h, 2); break; }
      case 2: { const uint16_t h = from_float<bfloat16_t>(u(rng)).bits; std::memcpy(&host[i], &h, 2); break; }
      case 3: { uint8_t v = static_cast<uint8_t>(rng()); if ((v & 0x7f) == 0x7f) v ^= 1; host[i] = v; break; }  // no fp8 NaN
      default: { const float f = 0.01f + 0.001f * (rng() % 16); std::memcpy(&host[i], &f, 4); break; }
    }
  }
  for (size_t off = 0; off < b.bytes; off += chunk)
    upload(host.data(), static_cast<char*>(b.ptr) + off, std::min(chunk, b.bytes - off), *b.stream);
}

struct Result {
  double median_s = 0, min_s = 0, bytes = 0, flops = 0;
  const char* decode_kernel = "none";  // the CUDA decode kernel that ran
};

Result run_case(const Case& c, const std::shared_ptr<Stream>& stream, int reps, int partitions, int kernel) {
  const bool quant = kv_dtype_is_quantized(c.kv);
  const int64_t blocks_per_seq = (c.seq_len + c.block_size - 1) / c.block_size;
  const int64_t num_blocks = blocks_per_seq * c.num_seqs + 1;
  const KvCacheShape shape{num_blocks, c.num_kv_heads, c.block_size, c.head_size};
  const int64_t num_tokens = static_cast<int64_t>(c.num_seqs) * c.q_len;
  const size_t cache_bytes = shape.elements() * kv_dtype_size(c.kv);
  Buffer k(cache_bytes, stream), v(cache_bytes, stream);
  const int kind = c.kv == KvCacheDType::Float32 ? 0 : c.kv == KvCacheDType::Float16 ? 1 : c.kv == KvCacheDType::BFloat16 ? 2 : 3;
  fill_random(k, kind, 2);
  fill_random(v, kind, 3);
  std::unique_ptr<Buffer> ks, vs;
  if (quant) {
    ks = std::make_unique<Buffer>(shape.elements() / c.head_size * 4, stream);
    vs = std::make_unique<Buffer>(shape.elements() / c.head_size * 4, stream);
    fill_random(*ks, 4, 4);
    fill_random(*vs, 4, 5);
  }
  const size_t q_bytes = num_tokens * c.num_heads * c.head_size * dtype_size(c.dtype);
  Buffer q(q_bytes, stream), out(q_bytes, stream);
  fill_random(q, c.dtype == DType::Float32 ? 0 : c.dtype == DType::Float16 ? 1 : 2, 6);
  // Block tables: each sequence's blocks, shuffled over the cache unless contiguous.
  std::vector<int32_t> ids(num_blocks - 1);
  std::iota(ids.begin(), ids.end(), 1);
  if (!c.contiguous) std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
  std::vector<int32_t> tables(ids.begin(), ids.end()), lens(c.num_seqs, c.seq_len), cu(c.num_seqs + 1);
  for (int s = 0; s <= c.num_seqs; ++s) cu[s] = s * c.q_len;
  Buffer bt(tables.size() * 4, stream), sl(lens.size() * 4, stream), cq(cu.size() * 4, stream);
  upload(tables.data(), bt.ptr, tables.size() * 4, *stream);
  upload(lens.data(), sl.ptr, lens.size() * 4, *stream);
  upload(cu.data(), cq.ptr, cu.size() * 4, *stream);

  PagedAttentionArgs a{};
  a.query = q.ptr;
  a.query_stride = c.num_heads * c.head_size;
  a.out = out.ptr;
  a.dtype = c.dtype;
  a.num_tokens = num_tokens;
  a.num_heads = c.num_heads;
  a.key_cache = k.ptr;
  a.value_cache = v.ptr;
  a.key_scales = quant ? static_cast<const float*>(ks->ptr) : nullptr;
  a.value_scales = quant ? static_cast<const float*>(vs->ptr) : nullptr;
  a.decode_partitions = partitions;
  a.decode_kernel = kernel;
  a.cache_dtype = c.kv;
  a.shape = shape;
  a.block_tables = static_cast<const int32_t*>(bt.ptr);
  a.max_blocks_per_seq = blocks_per_seq;
  a.seq_lens = static_cast<const int32_t*>(sl.ptr);
  a.cu_seqlens_q = c.q_len > 1 ? static_cast<const int32_t*>(cq.ptr) : nullptr;
  a.num_seqs = c.num_seqs;
  a.max_seq_len = c.seq_len;
  a.max_query_len = c.q_len;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_size));
  stream->synchronize();

  Result r;
  if (!stream->device().is_cpu() && c.q_len <= 1) {
    // Automatic: the tensor-core kernel runs whenever it supports the call, so ask it (forced).
    r.decode_kernel = kernel == 1 ? "simt" : "tc";
    if (kernel == 0) {
      PagedAttentionArgs probe = a;
      probe.decode_kernel = 2;
      try {
        paged_attention(probe, *stream);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::Unsupported) throw;
        r.decode_kernel = "simt";
      }
      stream->synchronize();
    }
  }
  const double kv_elems = static_cast<double>(c.num_seqs) * c.seq_len * c.num_kv_heads * c.head_size;
  r.bytes = 2 * kv_elems * kv_dtype_size(c.kv) + (quant ? 2 * kv_elems / c.head_size * 4 : 0) + 2.0 * q_bytes +
            tables.size() * 4;
  // Visible (query, key) pairs per head: causal over the sequence's last q_len positions.
  const double pairs = static_cast<double>(c.q_len) * c.seq_len - static_cast<double>(c.q_len) * (c.q_len - 1) / 2;
  r.flops = 4.0 * c.head_size * pairs * c.num_heads * c.num_seqs;
  std::vector<double> times;
  if (stream->device().is_cpu()) {
    for (int i = 0; i < reps + 1; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      paged_attention(a, *stream);
      stream->synchronize();
      if (i > 0) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  } else {
#if PAGEDLLM_HAVE_CUDA
    cudaStream_t s = as_cuda_stream(*stream).handle();
    int dev = stream->device().index, l2 = 0;
    cuda_ok(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "cudaDeviceGetAttribute");
    Buffer flush(std::max(2 * static_cast<size_t>(l2), size_t(1) << 20), stream);
    cudaEvent_t e0, e1;
    cuda_ok(cudaEventCreate(&e0), "cudaEventCreate");
    cuda_ok(cudaEventCreate(&e1), "cudaEventCreate");
    for (int i = 0; i < reps + 3; ++i) {
      cuda_ok(cudaMemsetAsync(flush.ptr, i & 0xff, flush.bytes, s), "cudaMemsetAsync");
      cuda_ok(cudaEventRecord(e0, s), "cudaEventRecord");
      paged_attention(a, *stream);
      cuda_ok(cudaEventRecord(e1, s), "cudaEventRecord");
      cuda_ok(cudaEventSynchronize(e1), "cudaEventSynchronize");
      float ms = 0;
      cuda_ok(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
      if (i >= 3) times.push_back(ms / 1e3);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
#endif
  }
  r.median_s = median(times);
  r.min_s = *std::min_element(times.begin(), times.end());
  stream->synchronize();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cpu";
  std::vector<std::string> only;
  int reps = 0, partitions = 0, kernel = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--device" && i + 1 < argc) device = argv[++i];
    else if (arg == "--case" && i + 1 < argc) only.push_back(argv[++i]);
    else if (arg == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (arg == "--partitions" && i + 1 < argc) partitions = std::atoi(argv[++i]);
    else if (arg == "--kernel" && i + 1 < argc && (std::string(argv[i + 1]) == "auto" || std::string(argv[i + 1]) == "simt" ||
                                                   std::string(argv[i + 1]) == "tc")) {
      const std::string k = argv[++i];
      kernel = k == "simt" ? 1 : k == "tc" ? 2 : 0;
    }
    else if (arg == "--list") {
      for (const Case& c : kCases) std::printf("%s %s\n", c.device, c.name);
      return 0;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--device cpu|cuda] [--case NAME]... [--reps N] [--partitions N] [--kernel auto|simt|tc] "
                   "[--list]\n",
                   argv[0]);
      return 2;
    }
  }
  try {
    const bool cuda = device.rfind("cuda", 0) == 0;
    if (cuda) {
      const CudaInfo info = cuda_info();
      if (!info.available) {
        std::fprintf(stderr, "no CUDA device: %s\n", info.reason.c_str());
        return 3;
      }
    }
    if (reps <= 0) reps = cuda ? 20 : 5;
    const Device dev = cuda ? Device{DeviceKind::Cuda, device.size() > 5 ? std::atoi(device.c_str() + 5) : 0} : Device{};
    auto stream = default_stream(dev);
    const double bandwidth = measure_bandwidth(stream, cuda ? 10 : 9);
    std::string name = cuda ? "" : cpu_info().model_name;
#if PAGEDLLM_HAVE_CUDA
    if (cuda) {
      cudaDeviceProp prop{};
      cuda_ok(cudaGetDeviceProperties(&prop, dev.index), "cudaGetDeviceProperties");
      name = prop.name;
    }
#endif
    std::printf("{\n  \"device\": \"%s\",\n  \"threads\": %d,\n  \"bandwidth\": {\"what\": \"%s\", \"bytesPerSecond\": %.6e},\n  \"cases\": [",
                name.c_str(), cuda ? 0 : ThreadPool::global().size(),
                cuda ? "device-to-device copy, bytes read + written (median)" : "multi-threaded read of 1 GiB (best of 9)", bandwidth);
    bool first = true;
    for (const Case& c : kCases) {
      if (!only.empty() ? std::find(only.begin(), only.end(), c.name) == only.end() : std::string(c.device) != (cuda ? "cuda" : "cpu"))
        continue;
      const Result r = run_case(c, stream, reps, partitions, kernel);
      std::printf("%s\n    {\"name\": \"%s\", \"numSeqs\": %d, \"seqLen\": %d, \"qLen\": %d, \"numHeads\": %d, \"numKvHeads\": %d, "
                  "\"headSize\": %d, \"blockSize\": %d, \"dtype\": \"%s\", \"kvDtype\": \"%s\", \"contiguous\": %s, "
                  "\"bytes\": %.0f, \"medianUs\": %.3f, \"minUs\": %.3f, \"bytesPerSecond\": %.6e, \"fractionOfBandwidth\": %.4f, "
                  "\"tflops\": %.4f, \"decodePartitions\": %d, \"decodeKernel\": \"%s\"}",
                  first ? "" : ",", c.name, c.num_seqs, c.seq_len, c.q_len, c.num_heads, c.num_kv_heads, c.head_size,
                  c.block_size, dtype_name(c.dtype), kv_dtype_name(c.kv), c.contiguous ? "true" : "false", r.bytes,
                  r.median_s * 1e6, r.min_s * 1e6, r.bytes / r.median_s, r.bytes / r.median_s / bandwidth,
                  r.flops / r.median_s / 1e12, partitions, r.decode_kernel);
      std::fflush(stdout);
      first = false;
    }
    std::printf("\n  ]\n}\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
