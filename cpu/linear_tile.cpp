// The portable build of the CPU linear kernels (linear_tile.h).
#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 0
#define PAGEDLLM_TILE_NAMESPACE portable
#include "linear_tile.h"

namespace pagedllm::linear_kernels {

void gemv_portable(const GemvJob& job) { portable::gemv(job); }
void pack_x_portable(const PackXJob& job) { portable::pack_x(job); }
void gemm_block_portable(const GemmJob& job) { portable::gemm_block(job); }

}  // namespace pagedllm::linear_kernels
