// paged_attention_decode_cuda against the float64 reference of attention_case.h: a grid of head
// sizes × block sizes × query dtypes × cache dtypes (each one mixed decode batch, GQA ratio and
// sliding window varying), then split-K (a long sequence, partition boundaries, forced partition
// counts), a batch of many short sequences, group sizes that need several CTAs per KV head, alibi +
// softcap, cu_seqlens_q with empty sequences, a padded query stride, seq_len 0 and block ids
// outside the cache. The cases' unused cache slots and table entries hold NaN, so a read past a
// sequence shows.
// Each test skips, with the reason, where no usable CUDA device exists.
#include <algorithm>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

#include "attention_case.h"
#include "harness.h"
#include "pagedllm/error.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/paged_attention.h"
#include "pagedllm/tensor_ops.h"
#include "cuda_test.h"

using namespace pagedllm;

namespace {

using test::DeviceBuffer;
using test::gpu;
using test::require_cuda;

// Device copies of host arrays, alive as long as this object.
struct DeviceArrays {
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  template <typename T>
  T* put(const std::vector<T>& host) {
    if (host.empty()) return nullptr;
    const size_t bytes = host.size() * sizeof(T);
    buffers.push_back(std::make_unique<DeviceBuffer>(bytes, gpu()));
    upload(host.data(), buffers.back()->ptr, bytes, *gpu());
    return static_cast<T*>(buffers.back()->ptr);
  }
};

using EditArgs = std::function<void(PagedAttentionArgs&, DeviceArrays&)>;

// Runs the CUDA decode kernel on the case (after `edit` of the device arguments, if given) and
// returns `out`. `out` starts as all-ones bytes (NaN in every dtype), so a row left unwritten shows.
// kernel: PagedAttentionArgs::decode_kernel (0 automatic, 1 SIMT, 2 tensor cores).
std::vector<unsigned char> run_decode(const test::AttentionCase& c, const EditArgs& edit = {}, int kernel = 0) {
  DeviceArrays d;
  DeviceBuffer out(c.out_bytes(), gpu());
  const std::vector<unsigned char> poison(c.out_bytes(), 0xff);
  upload(poison.data(), out.ptr, out.bytes, *gpu());
  PagedAttentionArgs a = c.args(out.ptr);
  a.query = d.put(c.query);
  a.key_cache = d.put(c.key_cache);
  a.value_cache = d.put(c.value_cache);
  a.key_scales = d.put(c.key_scales);
  a.value_scales = d.put(c.value_scales);
  a.block_tables = d.put(c.block_tables);
  a.seq_lens = d.put(c.seq_lens);
  a.cu_seqlens_q = d.put(c.cu_seqlens_q);
  a.alibi_slopes = d.put(c.alibi_slopes);
  a.decode_kernel = kernel;
  if (edit) edit(a, d);
  paged_attention_decode_cuda(a, *gpu());
  std::vector<unsigned char> host(out.bytes);
  download(out.ptr, host.data(), host.size(), *gpu(), [] {});
  gpu()->synchronize();
  return host;
}

// Checks each spec against the reference. The float64 reference dominates the test's time, so
// cases and references are built on all cores, a batch at a time; the GPU runs them one by one.
void check_decode(const std::vector<test::AttentionSpec>& specs, const char* what, std::initializer_list<int> kernels = {0}) {
  const size_t workers = std::max(1u, std::thread::hardware_concurrency());
  for (size_t first = 0; first < specs.size(); first += workers) {
    const size_t n = std::min(workers, specs.size() - first);
    std::vector<test::AttentionCase> cases(n);
    std::vector<std::vector<double>> refs(n);
    std::vector<std::thread> threads;
    for (size_t i = 0; i < n; ++i)
      threads.emplace_back([&, i] {
        cases[i] = test::make_attention_case(specs[first + i]);
        refs[i] = test::attention_reference(cases[i]);
      });
    for (std::thread& t : threads) t.join();
    for (size_t i = 0; i < n; ++i)
      for (int kernel : kernels) {
        const std::vector<unsigned char> got = run_decode(cases[i], {}, kernel);
        test::check_attention(cases[i], refs[i], got.data(), test::str(what, ", decode_kernel ", kernel).c_str());
      }
  }
}

constexpr DType kQueryDTypes[] = {DType::Float32, DType::Float16, DType::BFloat16};
constexpr KvCacheDType kCacheDTypes[] = {KvCacheDType::Float32, KvCacheDType::Float16, KvCacheDType::BFloat16,
                                         KvCacheDType::Int8, KvCacheDType::Fp8E4M3};

// Skips unless the tensor-core decode kernel runs on this device (sm_80+ code in the build).
void require_tensor_core_decode() {
  test::AttentionSpec s;
  s.num_heads = 2;
  s.num_kv_heads = 1;
  s.dtype = DType::Float16;
  s.cache_dtype = KvCacheDType::Float16;
  s.seq_lens = {3};
  try {
    run_decode(test::make_attention_case(s), {}, 2);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::Unsupported) SKIP("no tensor-core decode kernel on this device: ", e.what());
    throw;
  }
}

}  // namespace

// 5 head sizes × 3 block sizes × 3 query dtypes × 5 cache dtypes, each one batch of lengths
// {1, B−1, B, B+1, 1031} with 16 query heads over 16 / 4 / 2 / 1 KV heads (GQA 1, 4, 8, MQA 16)
// and a sliding window on for every other group of four.
TEST(cuda_attention_decode_grid) {
  require_cuda();
  const int kv_heads[] = {16, 4, 2, 1};
  std::vector<test::AttentionSpec> specs;
  int n = 0;
  for (int head_size : kAttentionHeadSizes)
    for (int block_size : kAttentionBlockSizes)
      for (DType dtype : kQueryDTypes)
        for (KvCacheDType cache_dtype : kCacheDTypes) {
          test::AttentionSpec s;
          s.num_heads = 16;
          s.num_kv_heads = kv_heads[n % 4];
          s.head_size = head_size;
          s.block_size = block_size;
          s.dtype = dtype;
          s.cache_dtype = cache_dtype;
          s.seq_lens = {1, block_size - 1, block_size, block_size + 1, 1031};
          s.sliding_window = (n / 4) % 2 ? (n % 3 == 0 ? 5 : 100 + n % 37) : 0;
          s.seed = 1000 + n;
          specs.push_back(s);
          ++n;
        }
  check_decode(specs, "decode grid");
}

// One sequence of 20000 tokens over few KV heads: the launcher splits it into many partitions
// (merge pass), with and without a sliding window, in several dtype pairs.
TEST(cuda_attention_decode_long_sequence_split_k) {
  require_cuda();
  const struct {
    DType dtype;
    KvCacheDType cache_dtype;
    int window;
  } runs[] = {{DType::Float32, KvCacheDType::Float32, 0},
              {DType::Float16, KvCacheDType::Float16, 0},
              {DType::BFloat16, KvCacheDType::Fp8E4M3, 0},
              {DType::Float16, KvCacheDType::Int8, 4096},
              {DType::Float32, KvCacheDType::BFloat16, 777}};
  std::vector<test::AttentionSpec> specs;
  uint32_t seed = 1;
  for (const auto& r : runs) {
    test::AttentionSpec s;
    s.num_heads = 8;
    s.num_kv_heads = 2;
    s.head_size = 128;
    s.block_size = 16;
    s.dtype = r.dtype;
    s.cache_dtype = r.cache_dtype;
    s.seq_lens = {20000};
    s.sliding_window = r.window;
    s.seed = seed++;
    specs.push_back(s);
  }
  check_decode(specs, "long sequence");
}

// Many short sequences over many KV heads fill the GPU: one partition, `out` written directly.
// One 4500-token sequence among them makes a single partition stage its block table in several
// 2048-token chunks.
TEST(cuda_attention_decode_many_short_sequences) {
  require_cuda();
  std::vector<test::AttentionSpec> specs;
  for (int block_size : {8, 32}) {
    test::AttentionSpec s;
    s.num_heads = 32;
    s.num_kv_heads = 8;
    s.head_size = 128;
    s.block_size = block_size;
    s.dtype = DType::Float16;
    s.cache_dtype = KvCacheDType::Float16;
    for (int i = 0; i < 96; ++i) s.seq_lens.push_back(1 + (i * 37) % 300);
    s.seq_lens[40] = 4500;
    s.seed = 77 + block_size;
    specs.push_back(s);
  }
  check_decode(specs, "many short sequences");
}

// Partitions are multiples of 256 tokens (counted from the window's first 256-aligned token). Two
// sequences on one KV head (2 CTAs per partition) split into 256-token partitions on any GPU with
// ≥ 18 SMs once the span reaches 512 tokens, so these lengths sit exactly on, just before and just
// after partition (and tile and block) boundaries; the second sequence of each batch has fewer
// partitions than the launch. (Spans up to 256 tokens, and 257, stay one partition.)
TEST(cuda_attention_decode_partition_boundaries) {
  require_cuda();
  std::vector<test::AttentionSpec> specs;
  int n = 0;
  for (int base : {256, 512, 768, 1024, 1280, 2048})
    for (int delta : {-1, 0, 1})
      for (int window : {0, 300}) {
        test::AttentionSpec s;
        s.num_heads = 4;
        s.num_kv_heads = 1;
        s.head_size = 64;
        s.block_size = n % 2 ? 16 : 32;
        s.seq_lens = {base + delta, 1 + n * 5};
        s.sliding_window = window;
        s.seed = 500 + n++;
        specs.push_back(s);
      }
  check_decode(specs, "partition boundary");
}

// Group sizes from 1 to 64, powers of two or not; groups above the per-CTA maximum (32 heads for
// head 64..128, 16 for head 256) take several CTAs per KV head.
TEST(cuda_attention_decode_group_sizes) {
  require_cuda();
  const struct {
    int heads, kv_heads;
  } groups[] = {{8, 8}, {8, 4}, {12, 4}, {40, 8}, {28, 4}, {14, 2}, {32, 4}, {48, 4}, {32, 1}, {48, 1}, {64, 1}};
  std::vector<test::AttentionSpec> specs;
  uint32_t seed = 900;
  for (int head_size : {64, 96, 128, 256})
    for (const auto& g : groups) {
      test::AttentionSpec s;
      s.num_heads = g.heads;
      s.num_kv_heads = g.kv_heads;
      s.head_size = head_size;
      s.block_size = 16;
      s.dtype = DType::Float32;
      s.cache_dtype = seed % 2 ? KvCacheDType::Float16 : KvCacheDType::Int8;
      s.seq_lens = {1, 300, 1500};
      s.seed = seed++;
      specs.push_back(s);
    }
  check_decode(specs, "group size");
}

TEST(cuda_attention_decode_alibi_softcap) {
  require_cuda();
  const struct {
    DType dtype;
    KvCacheDType cache_dtype;
  } runs[] = {{DType::Float32, KvCacheDType::Float32},
              {DType::Float16, KvCacheDType::Float16},
              {DType::BFloat16, KvCacheDType::Int8},
              {DType::Float16, KvCacheDType::Fp8E4M3}};
  std::vector<test::AttentionSpec> specs;
  uint32_t seed = 40;
  for (const auto& r : runs)
    for (int window : {0, 200})
      for (float softcap : {0.0f, 2.5f}) {
        test::AttentionSpec s;
        s.num_heads = 8;
        s.num_kv_heads = 2;
        s.head_size = 128;
        s.block_size = 16;
        s.dtype = r.dtype;
        s.cache_dtype = r.cache_dtype;
        s.seq_lens = {1, 17, 600, 3000};
        s.sliding_window = window;
        s.alibi = true;
        s.softcap = softcap;
        s.seed = seed++;
        specs.push_back(s);
      }
  // Softcap alone, split-K.
  test::AttentionSpec s;
  s.num_heads = 4;
  s.num_kv_heads = 1;
  s.head_size = 80;
  s.block_size = 8;
  s.seq_lens = {5000};
  s.softcap = 1.5f;
  s.seed = 3;
  specs.push_back(s);
  check_decode(specs, "alibi / softcap");
}

// cu_seqlens_q given, some sequences with q_len 0 (no row: must be skipped, whatever their length),
// once with one partition and once with a long sequence that splits.
TEST(cuda_attention_decode_cu_seqlens_with_empty_sequences) {
  require_cuda();
  std::vector<test::AttentionSpec> specs;
  for (int long_len : {700, 9000}) {
    test::AttentionSpec s;
    s.num_heads = 8;
    s.num_kv_heads = 2;
    s.head_size = 128;
    s.block_size = 16;
    s.dtype = DType::Float16;
    s.cache_dtype = KvCacheDType::BFloat16;
    s.seq_lens = {5, 40, 1, long_len, 0, 257, 6000};
    s.q_lens = {1, 0, 1, 1, 0, 1, 0};
    s.seed = static_cast<uint32_t>(long_len);
    specs.push_back(s);
  }
  check_decode(specs, "cu_seqlens_q");
}

// Query rows further apart than num_heads · head_size (query_stride).
TEST(cuda_attention_decode_padded_query_stride) {
  require_cuda();
  test::AttentionSpec s;
  s.num_heads = 8;
  s.num_kv_heads = 4;
  s.head_size = 96;
  s.block_size = 32;
  s.dtype = DType::BFloat16;
  s.cache_dtype = KvCacheDType::Float32;
  s.seq_lens = {3, 64, 65, 2000};
  s.seed = 11;
  const test::AttentionCase c = test::make_attention_case(s);
  const size_t row_bytes = static_cast<size_t>(s.num_heads * s.head_size) * 2, stride_bytes = row_bytes + 2 * 40;
  std::vector<unsigned char> padded(stride_bytes * c.num_tokens, 0xff);
  for (int64_t t = 0; t < c.num_tokens; ++t) std::memcpy(&padded[t * stride_bytes], &c.query[t * row_bytes], row_bytes);
  const std::vector<unsigned char> got = run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays& d) {
    a.query = d.put(padded);
    a.query_stride = static_cast<int64_t>(stride_bytes / 2);
  });
  test::check_attention(c, test::attention_reference(c), got.data(), "padded query stride");
}

// decode_partitions (the benchmark's tuning knob) forces the split: every count, from one to more
// than the context has granules (clamped), gives the reference's result, with and without a window.
TEST(cuda_attention_decode_forced_partitions) {
  require_cuda();
  for (int window : {0, 700}) {
    test::AttentionSpec s;
    s.num_heads = 32;
    s.num_kv_heads = 4;
    s.head_size = 128;
    s.block_size = 16;
    s.dtype = DType::Float16;
    s.cache_dtype = KvCacheDType::Float16;
    s.seq_lens = {1, 255, 256, 257, 3000};
    s.sliding_window = window;
    s.seed = 70 + window;
    const test::AttentionCase c = test::make_attention_case(s);
    const std::vector<double> ref = test::attention_reference(c);
    for (int partitions : {1, 2, 3, 7, 12, 1000}) {
      const std::vector<unsigned char> got = run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays&) { a.decode_partitions = partitions; });
      test::check_attention(c, ref, got.data(), test::str("forced partitions ", partitions, ", window ", window).c_str());
    }
  }
}

// A row whose sequence has 0 cached tokens gets zeros; the other rows are unaffected.
TEST(cuda_attention_decode_seq_len_zero_writes_zeros) {
  require_cuda();
  for (int long_len : {500, 12000}) {  // one partition; split-K
    test::AttentionSpec s;
    s.num_heads = 4;
    s.num_kv_heads = 2;
    s.head_size = 64;
    s.block_size = 16;
    s.seq_lens = {9, 33, long_len};
    s.seed = 5;
    const test::AttentionCase c = test::make_attention_case(s);
    std::vector<double> want = test::attention_reference(c);
    const int64_t row = static_cast<int64_t>(s.num_heads) * s.head_size;
    std::fill(want.begin() + row, want.begin() + 2 * row, 0.0);
    std::vector<int32_t> lens = c.seq_lens;
    lens[1] = 0;
    const std::vector<unsigned char> got =
        run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays& d) { a.seq_lens = d.put(lens); });
    test::check_attention(c, want, got.data(), "seq_len 0");
  }
}

// Table entries past a sequence's blocks may hold anything (here ids far outside the cache) and
// must not matter; ids outside the cache within a sequence are skipped (masked), never read.
TEST(cuda_attention_decode_out_of_range_block_ids) {
  require_cuda();
  for (int long_len : {300, 10000}) {
    test::AttentionSpec s;
    s.num_heads = 8;
    s.num_kv_heads = 2;
    s.head_size = 128;
    s.block_size = 16;
    s.dtype = DType::Float32;
    s.cache_dtype = KvCacheDType::Float16;
    s.seq_lens = {40, 10, long_len, 16};
    s.seed = 21;
    const test::AttentionCase c = test::make_attention_case(s);

    // Past the sequences' blocks: garbage ids.
    std::vector<int32_t> table = c.block_tables;
    const int32_t garbage[] = {1 << 30, -7, static_cast<int32_t>(c.shape.num_blocks), -1};
    for (int64_t q = 0; q < c.num_seqs; ++q) {
      const int64_t used = (s.seq_lens[q] + s.block_size - 1) / s.block_size;
      for (int64_t b = used; b < c.max_blocks_per_seq; ++b) table[q * c.max_blocks_per_seq + b] = garbage[(q + b) % 4];
    }
    std::vector<unsigned char> got = run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays& d) { a.block_tables = d.put(table); });
    test::check_attention(c, test::attention_reference(c), got.data(), "garbage past the table");

    // Within the sequences: sequence 0's first block (16 of 40 tokens) and sequence 1's only block
    // are outside the cache. Expected: sequence 0 attends to tokens 16..39 (the reference with a
    // 24-token window), sequence 1 has no valid token (zeros), the others are unaffected.
    table[0 * c.max_blocks_per_seq] = static_cast<int32_t>(c.shape.num_blocks) + 3;
    table[1 * c.max_blocks_per_seq] = -1;
    std::vector<double> want = test::attention_reference(c);
    test::AttentionCase windowed = c;
    windowed.spec.sliding_window = 24;
    const std::vector<double> want0 = test::attention_reference(windowed);
    const int64_t row = static_cast<int64_t>(s.num_heads) * s.head_size;
    std::copy(want0.begin(), want0.begin() + row, want.begin());
    std::fill(want.begin() + row, want.begin() + 2 * row, 0.0);
    got = run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays& d) { a.block_tables = d.put(table); });
    test::check_attention(c, want, got.data(), "block ids outside the cache");
  }
}

// ---- both decode kernels (decode_kernel 1: SIMT, 2: tensor cores), float16 / bfloat16 q with a
// cache of the same dtype: each case must match the reference with either kernel.

constexpr DType kTensorCoreDTypes[] = {DType::Float16, DType::BFloat16};
KvCacheDType same_cache_dtype(DType d) { return d == DType::Float16 ? KvCacheDType::Float16 : KvCacheDType::BFloat16; }

// 5 head sizes × 3 block sizes × 2 dtypes × group sizes 1, 4, 8, 16, 32 (2 KV heads; 32 takes two
// 16-head CTAs per KV head on the tensor-core kernel), lengths {1, B−1, B, B+1, 1031}, a sliding
// window on every other case.
TEST(cuda_attention_decode_both_kernels_grid) {
  require_cuda();
  require_tensor_core_decode();
  const int groups[] = {1, 4, 8, 16, 32};
  std::vector<test::AttentionSpec> specs;
  int n = 0;
  for (int head_size : kAttentionHeadSizes)
    for (int block_size : kAttentionBlockSizes)
      for (DType dtype : kTensorCoreDTypes)
        for (int group : groups) {
          test::AttentionSpec s;
          s.num_kv_heads = 2;
          s.num_heads = 2 * group;
          s.head_size = head_size;
          s.block_size = block_size;
          s.dtype = dtype;
          s.cache_dtype = same_cache_dtype(dtype);
          s.seq_lens = {1, block_size - 1, block_size, block_size + 1, 1031};
          s.sliding_window = n % 2 ? (n % 3 == 0 ? 5 : 100 + n % 37) : 0;
          s.seed = 3000 + n++;
          specs.push_back(s);
        }
  check_decode(specs, "both kernels grid", {1, 2});
}

// Split-K on both kernels: a 20000-token sequence beside short ones, the launcher's own partition
// count and forced counts 1 … 1000 (clamped), with and without a window, group 8 and MHA.
TEST(cuda_attention_decode_both_kernels_split_k) {
  require_cuda();
  require_tensor_core_decode();
  uint32_t seed = 4000;
  for (DType dtype : kTensorCoreDTypes)
    for (int window : {0, 1500})
      for (int group : {1, 8}) {
        test::AttentionSpec s;
        s.num_heads = 4 * group;
        s.num_kv_heads = 4;
        s.head_size = 128;
        s.block_size = 16;
        s.dtype = dtype;
        s.cache_dtype = same_cache_dtype(dtype);
        s.seq_lens = {20000, 1, 255, 256, 257, 3000};
        s.sliding_window = window;
        s.seed = seed++;
        const test::AttentionCase c = test::make_attention_case(s);
        const std::vector<double> ref = test::attention_reference(c);
        for (int kernel : {1, 2})
          for (int partitions : {0, 1, 2, 3, 7, 16, 40, 1000}) {
            const std::vector<unsigned char> got =
                run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays&) { a.decode_partitions = partitions; }, kernel);
            test::check_attention(c, ref, got.data(),
                                  test::str("split-K, kernel ", kernel, ", partitions ", partitions).c_str());
          }
      }
}

// cu_seqlens_q with empty rows, seq_len 0, block ids outside the cache (within and past a
// sequence), a padded query stride that is not a multiple of 8 elements: both kernels.
TEST(cuda_attention_decode_both_kernels_edge_cases) {
  require_cuda();
  require_tensor_core_decode();
  for (DType dtype : kTensorCoreDTypes) {
    // cu_seqlens_q with empty sequences, one partition and split.
    std::vector<test::AttentionSpec> specs;
    for (int long_len : {700, 9000}) {
      test::AttentionSpec s;
      s.num_heads = 8;
      s.num_kv_heads = 2;
      s.head_size = 128;
      s.block_size = 16;
      s.dtype = dtype;
      s.cache_dtype = same_cache_dtype(dtype);
      s.seq_lens = {5, 40, 1, long_len, 0, 257, 6000};
      s.q_lens = {1, 0, 1, 1, 0, 1, 0};
      s.seed = static_cast<uint32_t>(long_len) + 1;
      specs.push_back(s);
    }
    check_decode(specs, "cu_seqlens_q, both kernels", {1, 2});

    for (int kernel : {1, 2}) {
      // seq_len 0 writes zeros.
      for (int long_len : {500, 12000}) {
        test::AttentionSpec s;
        s.num_heads = 4;
        s.num_kv_heads = 2;
        s.head_size = 64;
        s.block_size = 16;
        s.dtype = dtype;
        s.cache_dtype = same_cache_dtype(dtype);
        s.seq_lens = {9, 33, long_len};
        s.seed = 6;
        const test::AttentionCase c = test::make_attention_case(s);
        std::vector<double> want = test::attention_reference(c);
        const int64_t row = static_cast<int64_t>(s.num_heads) * s.head_size;
        std::fill(want.begin() + row, want.begin() + 2 * row, 0.0);
        std::vector<int32_t> lens = c.seq_lens;
        lens[1] = 0;
        const std::vector<unsigned char> got =
            run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays& d) { a.seq_lens = d.put(lens); }, kernel);
        test::check_attention(c, want, got.data(), test::str("seq_len 0, kernel ", kernel).c_str());
      }

      // Block ids outside the cache.
      for (int long_len : {300, 10000}) {
        test::AttentionSpec s;
        s.num_heads = 8;
        s.num_kv_heads = 2;
        s.head_size = 128;
        s.block_size = 16;
        s.dtype = dtype;
        s.cache_dtype = same_cache_dtype(dtype);
        s.seq_lens = {40, 10, long_len, 16};
        s.seed = 22;
        const test::AttentionCase c = test::make_attention_case(s);
        std::vector<int32_t> table = c.block_tables;
        const int32_t garbage[] = {1 << 30, -7, static_cast<int32_t>(c.shape.num_blocks), -1};
        for (int64_t q = 0; q < c.num_seqs; ++q) {
          const int64_t used = (s.seq_lens[q] + s.block_size - 1) / s.block_size;
          for (int64_t b = used; b < c.max_blocks_per_seq; ++b) table[q * c.max_blocks_per_seq + b] = garbage[(q + b) % 4];
        }
        std::vector<unsigned char> got =
            run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays& d) { a.block_tables = d.put(table); }, kernel);
        test::check_attention(c, test::attention_reference(c), got.data(),
                              test::str("garbage past the table, kernel ", kernel).c_str());
        table[0 * c.max_blocks_per_seq] = static_cast<int32_t>(c.shape.num_blocks) + 3;
        table[1 * c.max_blocks_per_seq] = -1;
        std::vector<double> want = test::attention_reference(c);
        test::AttentionCase windowed = c;
        windowed.spec.sliding_window = 24;
        const std::vector<double> want0 = test::attention_reference(windowed);
        const int64_t row = static_cast<int64_t>(s.num_heads) * s.head_size;
        std::copy(want0.begin(), want0.begin() + row, want.begin());
        std::fill(want.begin() + row, want.begin() + 2 * row, 0.0);
        got = run_decode(c, [&](PagedAttentionArgs& a, DeviceArrays& d) { a.block_tables = d.put(table); }, kernel);
        test::check_attention(c, want, got.data(), test::str("block ids outside the cache, kernel ", kernel).c_str());
      }

      // Padded query stride: 40 extra elements (16-byte rows), then 3 (unaligned rows).
      for (int pad : {40, 3}) {
        test::AttentionSpec s;
        s.num_heads = 8;
        s.num_kv_heads = 4;
        s.head_size = 96;
        s.block_size = 32;
        s.dtype = dtype;
        s.cache_dtype = same_cache_dtype(dtype);
        s.seq_lens = {3, 64, 65, 2000};
        s.seed = 12;
        const test::AttentionCase c = test::make_attention_case(s);
        const size_t row_bytes = static_cast<size_t>(s.num_heads * s.head_size) * 2, stride_bytes = row_bytes + 2 * pad;
        std::vector<unsigned char> padded(stride_bytes * c.num_tokens, 0xff);
        for (int64_t t = 0; t < c.num_tokens; ++t) std::memcpy(&padded[t * stride_bytes], &c.query[t * row_bytes], row_bytes);
        const std::vector<unsigned char> got = run_decode(
            c,
            [&](PagedAttentionArgs& a, DeviceArrays& d) {
              a.query = d.put(padded);
              a.query_stride = static_cast<int64_t>(stride_bytes / 2);
            },
            kernel);
        test::check_attention(c, test::attention_reference(c), got.data(),
                              test::str("padded query stride ", pad, ", kernel ", kernel).c_str());
      }
    }
  }
}

// decode_kernel 2 on a case the tensor-core kernel does not take fails with ERR_UNSUPPORTED; the
// automatic choice runs it on the SIMT kernel instead.
TEST(cuda_attention_decode_forced_tensor_cores_unsupported) {
  require_cuda();
  require_tensor_core_decode();
  struct Run {
    DType dtype;
    KvCacheDType cache_dtype;
    bool alibi;
    float softcap;
  };
  const Run runs[] = {{DType::Float32, KvCacheDType::Float32, false, 0.0f},
                      {DType::Float16, KvCacheDType::Int8, false, 0.0f},
                      {DType::BFloat16, KvCacheDType::Float16, false, 0.0f},
                      {DType::Float16, KvCacheDType::Float16, true, 0.0f},
                      {DType::BFloat16, KvCacheDType::BFloat16, false, 3.0f}};
  for (const Run& r : runs) {
    test::AttentionSpec s;
    s.num_heads = 4;
    s.num_kv_heads = 2;
    s.head_size = 64;
    s.dtype = r.dtype;
    s.cache_dtype = r.cache_dtype;
    s.alibi = r.alibi;
    s.softcap = r.softcap;
    s.seq_lens = {5, 70};
    const test::AttentionCase c = test::make_attention_case(s);
    bool threw = false;
    try {
      run_decode(c, {}, 2);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::Unsupported, e.what());
      threw = true;
    }
    CHECK(threw, test::describe(s));
    const std::vector<unsigned char> got = run_decode(c, {}, 0);
    test::check_attention(c, test::attention_reference(c), got.data(), "automatic kernel, unsupported by tensor cores");
  }
}
