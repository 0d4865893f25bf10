// CPU paged attention (the fast twin and the plain reference op) against the
// float64 reference of attention_case.h over a grid of head sizes × block
// sizes × query dtypes × KV dtypes × GQA ratios × sequence lengths × sliding
// window, with NaN-poisoned unused slots and padded block tables; decode and
// ragged prefill; and the errors bad arguments give.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "attention_case.h"
#include "harness.h"
#include "pagedllm/paged_attention.h"
#include "pagedllm/tensor_ops.h"

using namespace pagedllm;
using test::AttentionCase;
using test::AttentionSpec;

namespace {

std::shared_ptr<Stream> cpu() { return default_stream(Device{DeviceKind::Cpu, 0}); }

std::vector<unsigned char> run(const AttentionCase& c, bool reference) {
  std::vector<unsigned char> out(c.out_bytes(), 0xff);  // NaN in every dtype: unwritten outputs show
  auto s = cpu();
  const PagedAttentionArgs a = c.args(out.data());
  const std::string why = paged_attention_unsupported(a, s->device());
  CHECK(why.empty(), why);
  if (reference) paged_attention_reference_cpu(a, *s);
  else paged_attention(a, *s);
  s->synchronize();
  return out;
}

// The fast op always; the (slow, plain) reference op too when `with_reference_op`.
void check_both(const AttentionSpec& spec, bool with_reference_op = true) {
  const AttentionCase c = test::make_attention_case(spec);
  const std::vector<double> ref = test::attention_reference(c);
  test::check_attention(c, ref, run(c, false).data(), "paged_attention (CPU)");
  if (with_reference_op) test::check_attention(c, ref, run(c, true).data(), "paged_attention_reference_cpu");
}

// (num_heads, num_kv_heads): GQA ratios 1, 4, 8 and MQA.
constexpr int kHeads[4][2] = {{8, 8}, {8, 2}, {8, 1}, {16, 1}};
constexpr DType kDtypes[] = {DType::Float32, DType::Float16, DType::BFloat16};
constexpr KvCacheDType kKvDtypes[] = {KvCacheDType::Float32, KvCacheDType::Float16, KvCacheDType::BFloat16,
                                      KvCacheDType::Int8, KvCacheDType::Fp8E4M3};

template <typename F>
void expect_error(ErrorCode code, const std::string& fragment, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.code() == code, "wrong code for: ", e.what());
    CHECK(std::string(e.what()).find(fragment) != std::string::npos, "message '", e.what(), "' lacks '", fragment, "'");
    return;
  }
  CHECK(false, "expected an error mentioning '", fragment, "'");
}

}  // namespace

TEST(cpu_attention_decode_grid) {
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
          spec.seq_lens = {1, block - 1, block, block + 1, 1031};
          spec.sliding_window = (combo / 4) % 2 ? 0 : 100;
          spec.seed = 1000 + combo;
          check_both(spec, combo % 5 == 0);
          ++combo;
        }
}

TEST(cpu_attention_prefill_grid) {
  int combo = 0;
  for (int head_size : kAttentionHeadSizes)
    for (int block : kAttentionBlockSizes)
      for (KvCacheDType kv : kKvDtypes) {
        AttentionSpec spec;
        spec.num_heads = kHeads[combo % 4][0];
        spec.num_kv_heads = kHeads[combo % 4][1];
        spec.head_size = head_size;
        spec.block_size = block;
        spec.dtype = kDtypes[combo % 3];
        spec.cache_dtype = kv;
        // Whole prompts, a chunk with earlier context, a decode row and a sequence with no new tokens.
        spec.seq_lens = {1, block - 1, block + 1, 200, 700, 40};
        spec.q_lens = {1, block - 1, block + 1, 45, 1, 0};
        spec.sliding_window = (combo / 4) % 2 ? 0 : 50;
        spec.seed = 5000 + combo;
        check_both(spec, combo % 5 == 0);
        ++combo;
      }
}

TEST(cpu_attention_long_sequence_splits_keys) {
  // One sequence, one KV head: fewer work items than threads, so the keys are split into partitions.
  for (KvCacheDType kv : {KvCacheDType::Float16, KvCacheDType::Int8}) {
    AttentionSpec spec;
    spec.num_heads = 8;
    spec.num_kv_heads = 1;
    spec.cache_dtype = kv;
    spec.seq_lens = {6000};
    check_both(spec);
    spec.sliding_window = 4097;
    check_both(spec);
  }
}

TEST(cpu_attention_decode_odd_group_sizes) {
  // GQA groups the grid lacks: the tile runs query vectors of a KV head in groups of 4, 2 and 1
  // (2: 2; 3: 2 + 1; 6: 4 + 2; 7: 4 + 2 + 1), over head sizes that are not a multiple of 32 and
  // every block size; one long sequence also splits its keys.
  constexpr int kGroups[][2] = {{4, 2}, {6, 2}, {12, 2}, {14, 2}};
  int combo = 0;
  for (const auto& heads : kGroups)
    for (int head_size : {80, 128})
      for (int block : kAttentionBlockSizes)
        for (KvCacheDType kv : {KvCacheDType::Float32, KvCacheDType::Float16, KvCacheDType::Fp8E4M3}) {
          AttentionSpec spec;
          spec.num_heads = heads[0];
          spec.num_kv_heads = heads[1];
          spec.head_size = head_size;
          spec.block_size = block;
          spec.cache_dtype = kv;
          spec.seq_lens = {1, block - 1, block + 3, 300};
          spec.sliding_window = combo % 3 == 0 ? 37 : 0;
          spec.seed = 9000 + combo;
          check_both(spec, false);
          ++combo;
        }
  AttentionSpec spec;
  spec.num_heads = 6;
  spec.num_kv_heads = 2;
  spec.cache_dtype = KvCacheDType::Float16;
  spec.seq_lens = {3000};
  check_both(spec, false);
}

TEST(cpu_attention_alibi_softcap_and_window_edges) {
  AttentionSpec spec;
  spec.num_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_size = 64;
  spec.alibi = true;
  spec.softcap = 5.0f;
  spec.seq_lens = {33, 64, 65, 200};
  check_both(spec);
  spec.q_lens = {33, 20, 65, 130};
  for (int window : {1, 15, 16, 17, 64}) {
    spec.sliding_window = window;
    check_both(spec);
  }
}

TEST(cpu_attention_rejects_bad_arguments) {
  AttentionSpec spec;
  spec.seq_lens = {20, 5};
  AttentionCase c = test::make_attention_case(spec);
  std::vector<unsigned char> out(c.out_bytes());
  auto s = cpu();
  auto call = [&](PagedAttentionArgs a) {
    paged_attention(a, *s);
    s->synchronize();
  };
  PagedAttentionArgs a = c.args(out.data());
  a.shape.head_size = 72;
  a.query_stride = 72 * a.num_heads;
  expect_error(ErrorCode::Unsupported, "unsupported head size 72 (supported: 64, 80, 96, 128, 256)", [&] { call(a); });
  CHECK(paged_attention_unsupported(a, s->device()).find("head size 72") != std::string::npos);
  a = c.args(out.data());
  a.shape.block_size = 12;
  expect_error(ErrorCode::Unsupported, "block size 12 (supported: 8, 16, 32)", [&] { call(a); });
  a = c.args(out.data());
  a.dtype = DType::Int32;
  expect_error(ErrorCode::Unsupported, "query dtype int32", [&] { call(a); });
  a = c.args(out.data());
  a.num_heads = 12;
  expect_error(ErrorCode::InvalidArgument, "multiple of num_kv_heads", [&] { call(a); });
  a = c.args(out.data());
  a.max_seq_len = 19;  // sequence 0 has 20
  expect_error(ErrorCode::InvalidArgument, "seq_len 20", [&] { call(a); });
  a = c.args(out.data());
  c.block_tables[1] = static_cast<int32_t>(c.shape.num_blocks);  // sequence 0's second block
  expect_error(ErrorCode::InvalidArgument, "outside the cache", [&] { call(a); });
  c.block_tables[1] = 1;
  a = c.args(out.data());
  a.cache_dtype = KvCacheDType::Int8;
  a.key_scales = nullptr;
  expect_error(ErrorCode::InvalidArgument, "needs key and value scales", [&] { call(a); });
  // Prefill metadata: a sequence claiming more new tokens than its length.
  std::vector<int32_t> cu = {0, 1, 2}, lens = {0, 5};
  a = c.args(out.data());
  a.cu_seqlens_q = cu.data();
  a.seq_lens = lens.data();
  a.max_query_len = 1;
  expect_error(ErrorCode::InvalidArgument, "needs q_len 1 ≤ seq_len", [&] { call(a); });
  // The stream is usable afterwards.
  a = c.args(out.data());
  call(a);
}
