// CUDA prefill / mixed-batch paged attention (paged_attention_prefill_cuda)
// against the float64 reference of attention_case.h: ragged batches mixing
// whole prompts, chunks with earlier context, decode rows and sequences with
// no new tokens, over head sizes × block sizes × query dtypes × KV dtypes,
// GQA ratios 1/4/8 and MQA, sliding windows; a long prompt; ALiBi + softcap;
// windows whose edge falls inside a KV tile; GQA groups that do not divide
// the 64-row query tile; a block id far outside the cache. NaN-poisoned
// unused cache slots and a NaN-filled output catch reads past a sequence and
// rows left unwritten. Float32 queries (and sm_75) take the SIMT path,
// float16 / bfloat16 on sm_80+ the tensor-core path. Each test skips, with
// the reason, where no usable CUDA device exists.
#include <algorithm>
#include <cmath>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "attention_case.h"
#include "harness.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/paged_attention.h"
#include "pagedllm/tensor_ops.h"
#include "cuda_test.h"

using namespace pagedllm;
using test::AttentionCase;
using test::AttentionSpec;

namespace {

using test::DeviceBuffer;
using test::gpu;
using test::require_cuda;

// Runs the kernel on device copies of the case; the output starts as 0xff bytes (NaN in every dtype).
std::vector<unsigned char> run_cuda(const AttentionCase& c) {
  auto s = gpu();
  std::vector<unsigned char> out(c.out_bytes(), 0xff);
  DeviceBuffer query(c.query), key_cache(c.key_cache), value_cache(c.value_cache), key_scales(c.key_scales),
      value_scales(c.value_scales), block_tables(c.block_tables), seq_lens(c.seq_lens), cu_seqlens_q(c.cu_seqlens_q),
      alibi_slopes(c.alibi_slopes), d_out(out);
  PagedAttentionArgs a = c.args(nullptr);
  a.query = query.get<void>();
  a.out = d_out.get<void>();
  a.key_cache = key_cache.get<void>();
  a.value_cache = value_cache.get<void>();
  a.key_scales = key_scales.get<float>();
  a.value_scales = value_scales.get<float>();
  a.block_tables = block_tables.get<int32_t>();
  a.seq_lens = seq_lens.get<int32_t>();
  a.cu_seqlens_q = cu_seqlens_q.get<int32_t>();
  a.alibi_slopes = alibi_slopes.get<float>();
  paged_attention_prefill_cuda(a, *s);
  download(d_out.ptr, out.data(), out.size(), *s, [] {});
  s->synchronize();
  return out;
}

struct Prepared {
  AttentionCase c;
  std::vector<double> ref;
};

Prepared prepare(const AttentionSpec& spec) {
  Prepared p{test::make_attention_case(spec), {}};
  p.ref = test::attention_reference(p.c);
  return p;
}

// Builds the cases and their float64 references on host threads (the slow part), a batch at a
// time, and checks each on the GPU in order.
void check_all(const std::vector<AttentionSpec>& specs) {
  const size_t batch = std::max(2u, std::thread::hardware_concurrency());
  for (size_t first = 0; first < specs.size(); first += batch) {
    std::vector<std::future<Prepared>> ready;
    for (size_t i = first; i < std::min(specs.size(), first + batch); ++i)
      ready.push_back(std::async(std::launch::async, prepare, specs[i]));
    for (auto& f : ready) {
      const Prepared p = f.get();
      test::check_attention(p.c, p.ref, run_cuda(p.c).data(), "paged_attention_prefill_cuda");
    }
  }
}

// (num_heads, num_kv_heads): GQA ratios 1, 4, 8 and MQA (a group of 12: 64-row tiles hold 5⅓ tokens).
constexpr int kHeads[4][2] = {{4, 4}, {8, 2}, {16, 2}, {12, 1}};
constexpr DType kDtypes[] = {DType::Float32, DType::Float16, DType::BFloat16};
constexpr KvCacheDType kKvDtypes[] = {KvCacheDType::Float32, KvCacheDType::Float16, KvCacheDType::BFloat16,
                                      KvCacheDType::Int8, KvCacheDType::Fp8E4M3};

}  // namespace

TEST(cuda_attention_prefill_grid) {
  require_cuda();
  std::vector<AttentionSpec> specs;
  int combo = 0;
  for (int head_size : kAttentionHeadSizes)
    for (int block : kAttentionBlockSizes)
      for (DType dtype : kDtypes)
        for (KvCacheDType kv : kKvDtypes) {
          AttentionSpec spec;
          spec.num_heads = kHeads[combo % 4][0];
          spec.num_kv_heads = kHeads[combo % 4][1];
          spec.head_size = head_size;
          spec.block_size = block;
          spec.dtype = dtype;
          spec.cache_dtype = kv;
          // A one-token prompt, whole prompts around a block, a chunk with earlier context, a decode
          // row and a sequence with no new tokens.
          spec.seq_lens = {1, block - 1, block + 1, 300, 1030, 40};
          spec.q_lens = {1, block - 1, block + 1, 77, 1, 0};
          spec.sliding_window = (combo / 4) % 2 ? 0 : 50 + combo % 3;
          spec.seed = 7000 + combo;
          specs.push_back(spec);
          ++combo;
        }
  check_all(specs);
}

TEST(cuda_attention_prefill_long_prompt) {
  require_cuda();
  // 2048 new tokens in one sequence: 32 query tiles × up to 32 KV tiles each, causal skipping.
  AttentionSpec spec;
  spec.num_heads = 2;
  spec.num_kv_heads = 1;
  spec.head_size = 128;
  spec.dtype = DType::Float16;
  spec.cache_dtype = KvCacheDType::Float16;
  spec.seq_lens = {2048};
  spec.q_lens = {2048};
  check_all({spec});
}

TEST(cuda_attention_prefill_alibi_softcap) {
  require_cuda();
  std::vector<AttentionSpec> specs;
  for (DType dtype : kDtypes)
    for (int window : {0, 1, 15, 16, 17, 64}) {
      AttentionSpec spec;
      spec.num_heads = 8;
      spec.num_kv_heads = 2;
      spec.head_size = 64;
      spec.dtype = dtype;
      spec.cache_dtype = dtype == DType::Float32 ? KvCacheDType::Float32 : KvCacheDType::Int8;
      spec.alibi = true;
      spec.softcap = 5.0f;
      spec.seq_lens = {33, 64, 65, 200};
      spec.q_lens = {33, 20, 65, 130};
      spec.sliding_window = window;
      spec.seed = 300 + window;
      specs.push_back(spec);
    }
  check_all(specs);
}

TEST(cuda_attention_prefill_window_edges_inside_tiles) {
  require_cuda();
  // Windows that are not multiples of the KV tile (64 / 32 positions), so tiles straddle each
  // row's window edge; the first visited tile is partly below every row's window.
  std::vector<AttentionSpec> specs;
  int combo = 0;
  for (DType dtype : kDtypes)
    for (int head_size : {128, 256})
      for (int window : {37, 63, 64, 65, 100, 129}) {
        AttentionSpec spec;
        spec.num_heads = 4;
        spec.num_kv_heads = 2;
        spec.head_size = head_size;
        spec.block_size = combo % 2 ? 8 : 32;
        spec.dtype = dtype;
        spec.cache_dtype = combo % 3 == 0 ? KvCacheDType::Fp8E4M3 : KvCacheDType::BFloat16;
        spec.seq_lens = {400, 150, 97};
        spec.q_lens = {150, 150, 1};
        spec.sliding_window = window;
        spec.seed = 400 + combo++;
        specs.push_back(spec);
      }
  check_all(specs);
}

TEST(cuda_attention_prefill_gqa_groups_across_tiles) {
  require_cuda();
  // Groups that split tokens across 64-row tiles (3, 5, 48) or exceed a tile (128).
  std::vector<AttentionSpec> specs;
  const int heads[][2] = {{6, 2}, {5, 1}, {96, 2}, {128, 1}};
  int combo = 0;
  for (const auto& h : heads)
    for (DType dtype : {DType::Float32, DType::Float16}) {
      AttentionSpec spec;
      spec.num_heads = h[0];
      spec.num_kv_heads = h[1];
      spec.head_size = 64;
      spec.block_size = 16;
      spec.dtype = dtype;
      spec.cache_dtype = KvCacheDType::Float16;
      spec.seq_lens = {70, 21, 5};
      spec.q_lens = {30, 21, 1};
      spec.sliding_window = combo % 2 ? 0 : 25;
      spec.seed = 500 + combo++;
      specs.push_back(spec);
    }
  check_all(specs);
}

TEST(cuda_attention_prefill_null_cu_seqlens_is_decode) {
  require_cuda();
  std::vector<AttentionSpec> specs;
  for (DType dtype : kDtypes) {
    AttentionSpec spec;
    spec.num_heads = 8;
    spec.num_kv_heads = 2;
    spec.head_size = 96;
    spec.block_size = 16;
    spec.dtype = dtype;
    spec.cache_dtype = KvCacheDType::BFloat16;
    spec.seq_lens = {1, 17, 1000};  // q_lens empty: cu_seqlens_q is null
    specs.push_back(spec);
  }
  check_all(specs);
}

TEST(cuda_attention_prefill_skips_blocks_outside_the_cache) {
  require_cuda();
  // A block id far past the cache (a caller bug) must be skipped, not dereferenced: the call
  // completes without a CUDA error, every other sequence is exact, and the broken one is finite.
  for (DType dtype : {DType::Float32, DType::Float16}) {
    AttentionSpec spec;
    spec.num_heads = 4;
    spec.num_kv_heads = 4;
    spec.head_size = 64;
    spec.dtype = dtype;
    spec.cache_dtype = KvCacheDType::Float16;
    spec.seq_lens = {40, 50};
    spec.q_lens = {40, 10};
    AttentionCase c = test::make_attention_case(spec);
    const std::vector<double> ref = test::attention_reference(c);
    c.block_tables[c.max_blocks_per_seq + 1] = static_cast<int32_t>(c.shape.num_blocks) + (1 << 24);
    const std::vector<unsigned char> out = run_cuda(c);
    const int64_t row = spec.num_heads * spec.head_size;
    for (int64_t i = 0; i < c.num_tokens * row; ++i) {
      const double got = test::load_dtype(out.data(), dtype, i);
      CHECK(std::isfinite(got), "output ", i, " is ", got);
      if (i < 40 * row) CHECK(std::fabs(got - ref[i]) <= 2e-3 + 4e-3 * std::fabs(ref[i]), "sequence 0 changed at ", i);
    }
  }
}
