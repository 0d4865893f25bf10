// DecoderGraphRunner (include/pagedllm/decoder.h): decode steps captured as CUDA graphs and
// replayed. Written without a GPU (2026-12-04): its tests (test/lib/model.test.ts, "CUDA graphs")
// skip where no device exists, so the Engine uses it only when asked (cudaGraphs: true).
//
// A step's launches depend on host values: the batch (grids, GEMV/GEMM choice, split-K), the
// context length (attention partitions) and every buffer address. So inputs are copied into fixed
// buffers padded to a batch bucket, attention is launched for a context bucket, and a graph is
// kept per (batch, context) bucket. The ops' temporary workspace would come from the pool, whose
// blocks go back to it when the op returns — during capture that would leave the graph writing
// memory the pool hands to the next owner — so while capturing, workspace comes from an arena owned
// here (a stack over one pool block, sized by the peak of the eager run that precedes each capture).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "cuda_stream.h"
#include "pagedllm/decoder.h"
#include "pagedllm/memory_resource.h"

namespace pagedllm {

namespace {

constexpr size_t kAlign = 256;
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Offsets of a stack of blocks freed in any order (a block's space is reused once every block
// above it is freed too); `peak` is the most the stack ever spanned.
class StackLayout {
 public:
  size_t top() const { return entries_.empty() ? 0 : entries_.back().offset + entries_.back().size; }
  size_t push(size_t size, void* ptr) {
    const size_t offset = top();
    entries_.push_back({offset, size, ptr, false});
    peak_ = std::max(peak_, offset + size);
    return offset;
  }
  void pop(void* ptr) {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      if (it->ptr == ptr && !it->freed) {
        it->freed = true;
        break;
      }
    }
    while (!entries_.empty() && entries_.back().freed) entries_.pop_back();
  }
  size_t peak() const { return peak_; }
  bool empty() const { return entries_.empty(); }

 private:
  struct Entry {
    size_t offset, size;
    void* ptr;
    bool freed;
  };
  std::vector<Entry> entries_;
  size_t peak_ = 0;
};

// Workspace of an eager step: from the pool as usual; the arena it would need is recorded.
class PeakTracker final : public WorkspaceOverride {
 public:
  void* allocate(size_t bytes, Stream& stream) override {
    void* p = default_memory_resource(stream.device())->allocate(bytes, stream, Category::Workspace);
    layout_.push(aligned(bytes), p);
    return p;
  }
  void deallocate(void* ptr, size_t bytes, Stream& stream) override {
    layout_.pop(ptr);
    default_memory_resource(stream.device())->deallocate(ptr, bytes, stream, Category::Workspace);
  }
  size_t peak() const { return layout_.peak(); }

 private:
  StackLayout layout_;
};

// Workspace while capturing: the same stack, over the runner's arena.
class Arena final : public WorkspaceOverride {
 public:
  void reset(char* base, size_t capacity) {
    base_ = base;
    capacity_ = capacity;
    layout_ = StackLayout();
  }
  void* allocate(size_t bytes, Stream&) override {
    const size_t size = aligned(bytes), offset = layout_.top();
    PAGEDLLM_CHECK(offset + size <= capacity_, OutOfMemory, "decoder graph: the workspace arena (",
                   format_bytes(capacity_), ") cannot hold ", format_bytes(offset + size));
    char* p = base_ + offset;
    layout_.push(size, p);
    return p;
  }
  void deallocate(void* ptr, size_t, Stream&) override { layout_.pop(ptr); }

 private:
  char* base_ = nullptr;
  size_t capacity_ = 0;
  StackLayout layout_;
};

// Installs a workspace override for one stream on this thread, restoring the previous one.
class OverrideScope {
 public:
  OverrideScope(const Stream& stream, WorkspaceOverride& o) : previous_(set_workspace_override(&stream, &o)) {}
  ~OverrideScope() { set_workspace_override(previous_.first, previous_.second); }
  OverrideScope(const OverrideScope&) = delete;
  OverrideScope& operator=(const OverrideScope&) = delete;

 private:
  std::pair<const Stream*, WorkspaceOverride*> previous_;
};

constexpr int kMaxCaptureFailures = 3;  // then every step runs eagerly

class Runner final : public DecoderGraphRunner {
 public:
  Runner(const DecoderModel& model, Stream& stream, int64_t max_batch, int64_t max_blocks_per_seq, bool capture)
      : model_(model),
        stream_(stream.shared_from_this()),
        cuda_(as_cuda_stream(stream)),
        max_batch_(max_batch),
        max_blocks_(max_blocks_per_seq),
        capture_(capture),
        resource_(default_memory_resource(stream.device())) {
    PAGEDLLM_CHECK(max_batch >= 1 && max_batch <= 65535, InvalidArgument, "decoder graph: max_batch ", max_batch,
                   " (1..65535)");
    PAGEDLLM_CHECK(max_blocks_per_seq >= 1, InvalidArgument, "decoder graph: max_blocks_per_seq ", max_blocks_per_seq);
    const size_t ints = aligned(static_cast<size_t>(max_batch) * 4 * sizeof(int32_t));
    const size_t tables = aligned(static_cast<size_t>(max_batch * max_blocks_per_seq) * sizeof(int32_t));
    const size_t workspace = aligned(decoder_workspace_bytes(model, max_batch, max_batch));
    const size_t logits = aligned(static_cast<size_t>(max_batch * model.vocab_size) * sizeof(float));
    buffer_bytes_ = ints + tables + workspace + logits;
    buffer_ = static_cast<char*>(resource_->allocate(buffer_bytes_, stream, Category::Activations));
    ids_ = reinterpret_cast<int32_t*>(buffer_);
    positions_ = ids_ + max_batch;
    slots_ = positions_ + max_batch;
    lens_ = slots_ + max_batch;
    tables_ = reinterpret_cast<int32_t*>(buffer_ + ints);
    workspace_ = buffer_ + ints + tables;
    logits_ = reinterpret_cast<float*>(buffer_ + ints + tables + workspace);
  }

  ~Runner() override {
    try {
      drop_graphs();
      release_arena();
      resource_->deallocate(buffer_, buffer_bytes_, *stream_, Category::Activations);
    } catch (...) {  // a destructor must not throw; the memory stays with the pool
    }
  }

  void forward(const DecoderStep& step) override {
    const int64_t T = step.num_tokens;
    PAGEDLLM_CHECK(step.cu_seqlens_q == nullptr && step.logit_rows == nullptr && T == step.num_seqs && T >= 1 &&
                       T <= max_batch_ && step.max_query_len <= 1,
                   InvalidArgument, "decoder graph: a step of ", T, " tokens for ", step.num_seqs,
                   " sequences (a graph step decodes one token per sequence, at most ", max_batch_,
                   ", all logits rows, no cu_seqlens_q)");
    PAGEDLLM_CHECK(step.max_blocks_per_seq >= 1 && step.max_blocks_per_seq <= max_blocks_, InvalidArgument,
                   "decoder graph: ", step.max_blocks_per_seq, " blocks per sequence (the runner holds ", max_blocks_, ")");
    PAGEDLLM_CHECK(step.cache.size() == model_.layers.size(), InvalidArgument, "decoder graph: the cache has ",
                   step.cache.size(), " layers, the model ", model_.layers.size());
    cuda_.activate();
    const cudaStream_t s = cuda_.handle();
    int64_t B = 1;
    while (B < T) B *= 2;
    B = std::min(B, max_batch_);
    const int64_t table_tokens = max_blocks_ * step.cache_shape.block_size;
    int64_t L = 256;
    while (L < step.max_seq_len) L *= 2;
    L = std::min(L, table_tokens);

    const size_t row = static_cast<size_t>(T) * sizeof(int32_t), pad = static_cast<size_t>(B - T) * sizeof(int32_t);
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(ids_, step.token_ids, row, cudaMemcpyDeviceToDevice, s));
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(positions_, step.positions, row, cudaMemcpyDeviceToDevice, s));
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(slots_, step.slot_mapping, row, cudaMemcpyDeviceToDevice, s));
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(lens_, step.seq_lens, row, cudaMemcpyDeviceToDevice, s));
    if (pad > 0) {  // padding rows: token 0 at position 0, no KV write (slot −1), no context (zeros out)
      PAGEDLLM_CUDA_CHECK(cudaMemsetAsync(ids_ + T, 0, pad, s));
      PAGEDLLM_CUDA_CHECK(cudaMemsetAsync(positions_ + T, 0, pad, s));
      PAGEDLLM_CUDA_CHECK(cudaMemsetAsync(slots_ + T, 0xff, pad, s));
      PAGEDLLM_CUDA_CHECK(cudaMemsetAsync(lens_ + T, 0, pad, s));
    }
    PAGEDLLM_CUDA_CHECK(cudaMemcpy2DAsync(tables_, max_blocks_ * sizeof(int32_t), step.block_tables,
                                          step.max_blocks_per_seq * sizeof(int32_t), step.max_blocks_per_seq * sizeof(int32_t),
                                          static_cast<size_t>(T), cudaMemcpyDeviceToDevice, s));

    DecoderStep g = step;
    g.num_tokens = B;
    g.token_ids = ids_;
    g.positions = positions_;
    g.slot_mapping = slots_;
    g.block_tables = tables_;
    g.max_blocks_per_seq = max_blocks_;
    g.seq_lens = lens_;
    g.cu_seqlens_q = nullptr;
    g.num_seqs = B;
    g.max_seq_len = L;
    g.max_query_len = 1;
    g.logit_rows = nullptr;
    g.num_logit_rows = B;
    g.workspace = workspace_;
    g.logits = logits_;
    if (!same_cache(step)) {  // graphs hold the cache's addresses
      drop_graphs();
      cache_ = step.cache;
      cache_dtype_ = step.cache_dtype;
      cache_shape_ = step.cache_shape;
    }

    const auto key = std::make_pair(B, L);
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      PAGEDLLM_CUDA_CHECK(cudaGraphLaunch(it->second, s));
      ++stats_.replays;
    } else {
      PeakTracker tracker;
      {
        OverrideScope scope(*stream_, tracker);
        decoder_forward(model_, g, *stream_);
      }
      ++stats_.eager_steps;
      if (capture_ && stats_.failures < kMaxCaptureFailures) capture(key, g, tracker.peak());
    }
    PAGEDLLM_CUDA_CHECK(cudaMemcpyAsync(step.logits, logits_, static_cast<size_t>(T * model_.vocab_size) * sizeof(float),
                                        cudaMemcpyDeviceToDevice, s));
  }

  DecoderGraphStats stats() const override {
    DecoderGraphStats out = stats_;
    out.graphs = static_cast<int64_t>(graphs_.size());
    out.buffer_bytes = buffer_bytes_;
    out.arena_bytes = arena_bytes_;
    return out;
  }

 private:
  bool same_cache(const DecoderStep& step) const {
    if (step.cache_dtype != cache_dtype_ || step.cache.size() != cache_.size()) return false;
    const KvCacheShape& a = step.cache_shape;
    if (a.num_blocks != cache_shape_.num_blocks || a.num_kv_heads != cache_shape_.num_kv_heads ||
        a.block_size != cache_shape_.block_size || a.head_size != cache_shape_.head_size)
      return false;
    for (size_t l = 0; l < cache_.size(); ++l) {
      const DecoderCacheLayer &x = step.cache[l], &y = cache_[l];
      if (x.key != y.key || x.value != y.value || x.key_scales != y.key_scales || x.value_scales != y.value_scales) return false;
    }
    return true;
  }

  // Captures `g`'s ops (they ran eagerly just before, so every kernel is loaded and every launch
  // attribute cached). A failure is counted and the step stays eager; the eager run gave its result.
  void capture(std::pair<int64_t, int64_t> key, const DecoderStep& g, size_t workspace_peak) {
    const cudaStream_t s = cuda_.handle();
    if (workspace_peak > arena_bytes_) {  // a larger arena moves: graphs that point into the old one go
      drop_graphs();
      release_arena();
      arena_bytes_ = aligned(workspace_peak);
      arena_ = static_cast<char*>(resource_->allocate(arena_bytes_, *stream_, Category::Workspace));
    }
    arena_state_.reset(arena_, arena_bytes_);
    cudaGraph_t graph = nullptr;
    PAGEDLLM_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      OverrideScope scope(*stream_, arena_state_);
      decoder_forward(model_, g, *stream_);
    } catch (...) {
      cudaStreamEndCapture(s, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      ++stats_.failures;
      return;
    }
    cudaError_t status = cudaStreamEndCapture(s, &graph);
    cudaGraphExec_t exec = nullptr;
    if (status == cudaSuccess && graph) status = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (status != cudaSuccess || !exec) {
      cudaGetLastError();
      ++stats_.failures;
      return;
    }
    graphs_.emplace(key, exec);
    ++stats_.captures;
  }

  // Graph executions already launched finish first (the arena or cache they use may be freed next).
  void drop_graphs() {
    if (graphs_.empty()) return;
    cuda_.activate();
    cudaStreamSynchronize(cuda_.handle());
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
  }

  void release_arena() {
    if (!arena_) return;
    resource_->deallocate(arena_, arena_bytes_, *stream_, Category::Workspace);
    arena_ = nullptr;
    arena_bytes_ = 0;
  }

  const DecoderModel model_;  // a copy: pointers to weights the caller keeps alive
  std::shared_ptr<Stream> stream_;
  CudaStream& cuda_;
  const int64_t max_batch_, max_blocks_;
  const bool capture_;
  MemoryResourcePtr resource_;
  char* buffer_ = nullptr;
  size_t buffer_bytes_ = 0;
  int32_t *ids_ = nullptr, *positions_ = nullptr, *slots_ = nullptr, *lens_ = nullptr, *tables_ = nullptr;
  void* workspace_ = nullptr;
  float* logits_ = nullptr;
  char* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  Arena arena_state_;
  std::vector<DecoderCacheLayer> cache_;
  KvCacheDType cache_dtype_ = KvCacheDType::Float16;
  KvCacheShape cache_shape_{};
  std::map<std::pair<int64_t, int64_t>, cudaGraphExec_t> graphs_;
  DecoderGraphStats stats_;
};

}  // namespace

std::unique_ptr<DecoderGraphRunner> create_decoder_graph_runner(const DecoderModel& model, Stream& stream, int64_t max_batch,
                                                                int64_t max_blocks_per_seq, bool capture) {
  PAGEDLLM_CHECK(stream.device().kind == DeviceKind::Cuda, Unsupported, "decoder graph: CUDA graphs need a CUDA stream, not ",
                 stream.device().str());
  return std::make_unique<Runner>(model, stream, max_batch, max_blocks_per_seq, capture);
}

}  // namespace pagedllm
