// DecoderGraphRunner (include/pagedllm/decoder.h, cuda/decoder_graph.cpp) on a tiny random float16
// Llama (2 layers, hidden 128, 2 query heads / 1 KV head of 64, intermediate 192, vocab 300):
// decode steps replayed from graphs give the logits of the same padded steps run op by op, bit for
// bit, for batches 1, 3 and 8 over contexts 251-262 (two context buckets: two captures, ten
// replays); they agree with decoder_forward's plain steps within float16 tolerance; bad steps are
// refused. The CUDA tests skip, with the reason, where no usable device exists (they were written
// without one, 2026-12-04); the CPU-stream refusal runs everywhere.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_test.h"
#include "harness.h"
#include "pagedllm/decoder.h"
#include "pagedllm/error.h"
#include "pagedllm/half.h"

using namespace pagedllm;
using test::DeviceBuffer;
using test::gpu;
using test::require_cuda;

namespace {

constexpr int64_t kH = 128, kHeads = 2, kKvHeads = 1, kD = 64, kI = 192, kV = 300, kLayers = 2;
constexpr int64_t kBlock = 16, kBlocksPerSeq = 32, kPrompt = 250, kSteps = 12;

// Random float16 values ~ U(-scale, scale), uploaded.
std::unique_ptr<DeviceBuffer> random_half(int64_t n, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<uint16_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = float_to_half_bits(u(rng));
  return std::make_unique<DeviceBuffer>(v);
}

std::unique_ptr<DeviceBuffer> ones_half(int64_t n) {
  std::vector<uint16_t> v(static_cast<size_t>(n), float_to_half_bits(1.0f));
  return std::make_unique<DeviceBuffer>(v);
}

struct TinyModel {
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  DecoderModel m{};

  TinyModel() {
    std::mt19937 rng(17);
    auto keep = [&](std::unique_ptr<DeviceBuffer> b) {
      buffers.push_back(std::move(b));
      return buffers.back()->ptr;
    };
    m.hidden_size = kH, m.num_heads = kHeads, m.num_kv_heads = kKvHeads, m.head_size = kD, m.intermediate_size = kI;
    m.vocab_size = kV, m.rms_norm_eps = 1e-5f, m.dtype = DType::Float16;
    m.embed = keep(random_half(kV * kH, 0.5f, rng)), m.embed_dtype = DType::Float16;
    m.final_norm = keep(ones_half(kH)), m.final_norm_dtype = DType::Float16;
    m.lm_head = keep(random_half(kV * kH, 0.1f, rng)), m.lm_head_dtype = DType::Float16;
    std::vector<float> inv_freq(kD / 2);
    for (int64_t i = 0; i < kD / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / kD);
    m.inv_freq = static_cast<const float*>(keep(std::make_unique<DeviceBuffer>(inv_freq)));
    m.rotary_dim = kD, m.attention_scale = 1.0f / std::sqrt(static_cast<float>(kD)), m.sliding_window = 0;
    auto projection = [&](int64_t n, int64_t k) {
      DecoderProjection p;
      p.weight = keep(random_half(n * k, 0.09f, rng));
      p.weight_dtype = DType::Float16;
      return p;
    };
    for (int64_t l = 0; l < kLayers; ++l) {
      DecoderLayer w{};
      w.input_norm = keep(ones_half(kH)), w.post_norm = keep(ones_half(kH)), w.norm_dtype = DType::Float16;
      w.q = projection(kHeads * kD, kH), w.k = projection(kKvHeads * kD, kH), w.v = projection(kKvHeads * kD, kH);
      w.o = projection(kH, kHeads * kD), w.gate = projection(kI, kH), w.up = projection(kI, kH), w.down = projection(kH, kI);
      m.layers.push_back(w);
    }
  }
};

// A float16 KV cache with `seqs` sequences' blocks: sequence s owns blocks 1 + s·kBlocksPerSeq onward.
struct Cache {
  explicit Cache(int64_t seqs) {
    shape.num_blocks = 1 + seqs * kBlocksPerSeq, shape.num_kv_heads = kKvHeads, shape.block_size = kBlock, shape.head_size = kD;
    const size_t bytes = static_cast<size_t>(shape.elements()) * 2;
    for (int64_t l = 0; l < kLayers; ++l) {
      std::vector<uint16_t> zeros(bytes / 2, 0);
      keys.push_back(std::make_unique<DeviceBuffer>(zeros));
      values.push_back(std::make_unique<DeviceBuffer>(zeros));
      layers.push_back(DecoderCacheLayer{keys.back()->ptr, values.back()->ptr, nullptr, nullptr});
    }
  }
  static int32_t block(int64_t s, int64_t j) { return static_cast<int32_t>(1 + s * kBlocksPerSeq + j); }
  static int32_t slot(int64_t s, int64_t p) { return block(s, p / kBlock) * kBlock + static_cast<int32_t>(p % kBlock); }
  KvCacheShape shape{};
  std::vector<std::unique_ptr<DeviceBuffer>> keys, values;
  std::vector<DecoderCacheLayer> layers;
};

DecoderStep base_step(const Cache& cache) {
  DecoderStep s{};
  s.cache_dtype = KvCacheDType::Float16;
  s.cache_shape = cache.shape;
  s.cache = cache.layers;
  return s;
}

// Each sequence's prompt through decoder_forward (a prefill step that samples nothing).
void prefill(const TinyModel& t, const Cache& cache, int64_t seqs) {
  for (int64_t s = 0; s < seqs; ++s) {
    std::vector<int32_t> ids(kPrompt), positions(kPrompt), slots(kPrompt), table(kBlocksPerSeq);
    for (int64_t j = 0; j < kPrompt; ++j) ids[j] = static_cast<int32_t>(3 + (s * 31 + j * 7) % 290), positions[j] = static_cast<int32_t>(j), slots[j] = Cache::slot(s, j);
    for (int64_t j = 0; j < kBlocksPerSeq; ++j) table[j] = Cache::block(s, j);
    const std::vector<int32_t> lens{static_cast<int32_t>(kPrompt)}, cu{0, static_cast<int32_t>(kPrompt)}, none{0};
    DeviceBuffer d_ids(ids), d_pos(positions), d_slots(slots), d_table(table), d_lens(lens), d_cu(cu), d_rows(none);
    DeviceBuffer workspace(decoder_workspace_bytes(t.m, kPrompt, 0));
    DecoderStep st = base_step(cache);
    st.num_tokens = kPrompt, st.token_ids = d_ids.get<int32_t>(), st.positions = d_pos.get<int32_t>(), st.slot_mapping = d_slots.get<int32_t>();
    st.block_tables = d_table.get<int32_t>(), st.max_blocks_per_seq = kBlocksPerSeq, st.seq_lens = d_lens.get<int32_t>();
    st.cu_seqlens_q = d_cu.get<int32_t>(), st.num_seqs = 1, st.max_seq_len = kPrompt, st.max_query_len = kPrompt;
    st.logit_rows = d_rows.get<int32_t>(), st.num_logit_rows = 0, st.workspace = workspace.ptr, st.logits = nullptr;
    decoder_forward(t.m, st, *gpu());
  }
}

// kSteps decode steps of `seqs` sequences after their prompts; `runner` null: decoder_forward.
std::vector<std::vector<float>> decode(const TinyModel& t, int64_t seqs, DecoderGraphRunner* runner) {
  Cache cache(seqs);
  prefill(t, cache, seqs);
  std::vector<std::vector<float>> out;
  for (int64_t step = 0; step < kSteps; ++step) {
    const int64_t len = kPrompt + step + 1, width = (len + kBlock - 1) / kBlock;
    std::vector<int32_t> ids(seqs), positions(seqs), slots(seqs), lens(seqs), table(seqs * width);
    for (int64_t s = 0; s < seqs; ++s) {
      ids[s] = static_cast<int32_t>(5 + (s + step) % 200), positions[s] = static_cast<int32_t>(len - 1);
      slots[s] = Cache::slot(s, len - 1), lens[s] = static_cast<int32_t>(len);
      for (int64_t j = 0; j < width; ++j) table[s * width + j] = Cache::block(s, j);
    }
    DeviceBuffer d_ids(ids), d_pos(positions), d_slots(slots), d_table(table), d_lens(lens);
    DeviceBuffer workspace(decoder_workspace_bytes(t.m, seqs, seqs)), logits(static_cast<size_t>(seqs * kV) * 4);
    DecoderStep st = base_step(cache);
    st.num_tokens = seqs, st.token_ids = d_ids.get<int32_t>(), st.positions = d_pos.get<int32_t>(), st.slot_mapping = d_slots.get<int32_t>();
    st.block_tables = d_table.get<int32_t>(), st.max_blocks_per_seq = width, st.seq_lens = d_lens.get<int32_t>();
    st.num_seqs = seqs, st.max_seq_len = len, st.max_query_len = 1, st.num_logit_rows = seqs;
    st.workspace = workspace.ptr, st.logits = logits.get<float>();
    if (runner) runner->forward(st);
    else decoder_forward(t.m, st, *gpu());
    std::vector<float> host(static_cast<size_t>(seqs * kV));
    logits.read(host.data(), host.size() * 4);
    out.push_back(std::move(host));
  }
  return out;
}

}  // namespace

TEST(decoder_graph_runner_refuses_a_cpu_stream) {
  DecoderModel m{};
  bool threw = false;
  try {
    create_decoder_graph_runner(m, *default_stream(Device{DeviceKind::Cpu, 0}), 4, 8);
  } catch (const Error& e) {
    threw = e.code() == ErrorCode::Unsupported;
  }
  CHECK(threw, "a CPU stream must be refused with ERR_UNSUPPORTED");
}

TEST(cuda_decoder_graph_replays_equal_the_padded_eager_steps) {
  require_cuda();
  const TinyModel t;
  for (int64_t seqs : {1, 3, 8}) {
    auto eager_runner = create_decoder_graph_runner(t.m, *gpu(), 8, kBlocksPerSeq, false);
    const auto eager = decode(t, seqs, eager_runner.get());
    auto graph_runner = create_decoder_graph_runner(t.m, *gpu(), 8, kBlocksPerSeq, true);
    const auto graphs = decode(t, seqs, graph_runner.get());
    const auto plain = decode(t, seqs, nullptr);
    const DecoderGraphStats e = eager_runner->stats(), g = graph_runner->stats();
    CHECK(e.eager_steps == kSteps && e.captures == 0 && e.replays == 0, "eager runner: ", e.eager_steps, " eager steps, ", e.captures, " captures");
    // Contexts 251-262: context buckets 256 and 512, one capture each, the other ten steps replayed.
    CHECK(g.captures == 2 && g.eager_steps == 2 && g.replays == 10 && g.failures == 0 && g.graphs == 2, "batch ", seqs,
          ": captures ", g.captures, ", eager ", g.eager_steps, ", replays ", g.replays, ", failures ", g.failures);
    for (int64_t step = 0; step < kSteps; ++step) {
      const auto &a = graphs[step], &b = eager[step], &c = plain[step];
      CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0, "batch ", seqs, ", step ", step, ": replayed logits differ from the eager padded step's");
      double num = 0, den = 0;
      for (size_t i = 0; i < a.size(); ++i) num += (a[i] - c[i]) * (a[i] - c[i]), den += c[i] * c[i];
      CHECK(std::sqrt(num / den) < 5e-3, "batch ", seqs, ", step ", step, ": relative L2 ", std::sqrt(num / den), " against the plain step");
    }
  }
}

TEST(cuda_decoder_graph_refuses_steps_it_cannot_replay) {
  require_cuda();
  const TinyModel t;
  auto runner = create_decoder_graph_runner(t.m, *gpu(), 2, kBlocksPerSeq, true);
  Cache cache(3);
  std::vector<int32_t> ints(3 * kBlocksPerSeq, 1);
  DeviceBuffer d(ints), logits(static_cast<size_t>(3 * kV) * 4);
  auto attempt = [&](auto edit) {
    DecoderStep st = base_step(cache);
    st.num_tokens = 2, st.num_seqs = 2, st.token_ids = st.positions = st.slot_mapping = st.seq_lens = d.get<int32_t>();
    st.block_tables = d.get<int32_t>(), st.max_blocks_per_seq = 1, st.max_seq_len = 1, st.max_query_len = 1, st.num_logit_rows = 2;
    st.logits = logits.get<float>();
    edit(st);
    try {
      runner->forward(st);
    } catch (const Error& e) {
      return e.code() == ErrorCode::InvalidArgument;
    }
    return false;
  };
  CHECK(attempt([](DecoderStep& st) { st.num_tokens = st.num_seqs = 3; }), "more sequences than max_batch");
  CHECK(attempt([&](DecoderStep& st) { st.cu_seqlens_q = d.get<int32_t>(); }), "cu_seqlens_q");
  CHECK(attempt([&](DecoderStep& st) { st.logit_rows = d.get<int32_t>(); }), "logit rows");
  CHECK(attempt([](DecoderStep& st) { st.max_blocks_per_seq = kBlocksPerSeq + 1; }), "a wider block table");
  CHECK(attempt([](DecoderStep& st) { st.cache.pop_back(); }), "a cache of fewer layers");
  gpu()->synchronize();
}
