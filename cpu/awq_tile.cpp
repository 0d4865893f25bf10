// The portable build of the CPU AWQ kernels (awq_tile.h).
#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 0
#define PAGEDLLM_TILE_NAMESPACE portable
#include "awq_tile.h"

namespace pagedllm::awq_kernels {

void gemv_portable(const AwqGemvJob& job) { portable::gemv(job); }
void gemm_block_portable(const AwqGemmJob& job) { portable::gemm_block(job); }

}  // namespace pagedllm::awq_kernels
