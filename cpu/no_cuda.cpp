// Compiled only into builds without CUDA (PAGEDLLM_CUDA=OFF, no nvcc, or the
// node-gyp build): the CUDA entry points report why they cannot run.
#include "pagedllm/decoder.h"
#include "pagedllm/device.h"
#include "pagedllm/error.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/paged_attention.h"
#include "pagedllm/paged_kv.h"
#include "pagedllm/sampling.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

namespace {
[[noreturn]] void no_cuda() { PAGEDLLM_FAIL(Unsupported, "pagedllm was built without CUDA"); }
}  // namespace

CudaInfo cuda_info() {
  CudaInfo info;
  info.compiled = false;
  info.available = false;
  info.reason = "pagedllm was built without CUDA (rebuild with nvcc on PATH and PAGEDLLM_CUDA not OFF)";
  return info;
}

std::shared_ptr<Stream> create_cuda_stream(int) { no_cuda(); }
std::unique_ptr<DecoderGraphRunner> create_decoder_graph_runner(const DecoderModel&, Stream&, int64_t, int64_t, bool) {
  no_cuda();
}
void sample_tokens_cuda(const SampleArgs&, Stream&) { no_cuda(); }
MemoryResourcePtr make_cuda_resource(int) { no_cuda(); }
MemoryResourcePtr make_cuda_async_resource(int, uint64_t) { no_cuda(); }
// Nothing can be pinned without CUDA: pageable host memory, reported as a fallback.
MemoryResourcePtr make_pinned_host_resource() {
  class Pageable final : public MemoryResource {
   public:
    Device device() const override { return Device{DeviceKind::Cpu, 0}; }
    std::string kind() const override { return "pinned-host"; }
    void report(MemoryReport& out) override {
      host_->report(out);
      out.kind = kind();
      out.pinned_fallback = true;
    }

   private:
    void* do_allocate(size_t bytes, Stream& stream, Category category) override {
      return host_->allocate(bytes, stream, category);
    }
    void do_deallocate(void* ptr, size_t bytes, Stream& stream, Category category) override {
      host_->deallocate(ptr, bytes, stream, category);
    }
    MemoryResourcePtr host_ = make_host_resource();
  };
  return std::make_shared<Pageable>();
}
void cuda_memory_info(int, uint64_t* free_bytes, uint64_t* total_bytes) { *free_bytes = *total_bytes = 0; }
void write_kv_cuda(const WriteKvArgs&, Stream&) { no_cuda(); }
void copy_blocks_cuda(const CopyBlocksArgs&, Stream&) { no_cuda(); }
void swap_blocks_cuda(const SwapRegion*, int64_t, const std::vector<BlockRun>&, Stream&, Stream&) { no_cuda(); }
void paged_attention_decode_cuda(const PagedAttentionArgs&, Stream&) { no_cuda(); }
void paged_attention_prefill_cuda(const PagedAttentionArgs&, Stream&) { no_cuda(); }
void fill_cuda(void*, DType, size_t, double, Stream&) { no_cuda(); }
void cast_cuda(const void*, DType, void*, DType, size_t, Stream&) { no_cuda(); }
void copy_strided_cuda(const void*, const StridedLayout&, size_t, void*, Stream&) { no_cuda(); }
void copy_bytes_cuda(const void*, Stream&, void*, Stream&, size_t) { no_cuda(); }
void upload_cuda(const void*, void*, size_t, Stream&) { no_cuda(); }
void download_cuda(const void*, void*, size_t, Stream&, std::function<void()>) { no_cuda(); }
void embedding_cuda(const EmbeddingArgs&, Stream&) { no_cuda(); }
void rms_norm_cuda(const RmsNormArgs&, Stream&) { no_cuda(); }
void rope_cuda(const RopeArgs&, Stream&) { no_cuda(); }
void silu_mul_cuda(const SiluMulArgs&, Stream&) { no_cuda(); }
void add_cuda(const AddArgs&, Stream&) { no_cuda(); }
void linear_cuda(const LinearArgs&, Stream&) { no_cuda(); }

}  // namespace pagedllm
