// The AVX2 + FMA + F16C build of the CPU linear kernels (linear_tile.h).
// Compiled for those instructions whatever the build's target, and called only
// when the CPU reports all three (cpu/linear.cpp), so one binary runs everywhere.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "simd_target.h"
#include <cstdint>
#include <cstring>

// Everything shared with other files is included before the target switch, so
// that no inline function or template instance they share is compiled for AVX2.
#include "pagedllm/convert.h"
#include "pagedllm/dtype.h"

PAGEDLLM_AVX2_BEGIN

#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 1
#define PAGEDLLM_TILE_NAMESPACE avx2
#include "linear_tile.h"

namespace pagedllm::linear_kernels {
void gemv_avx2(const GemvJob& job) { avx2::gemv(job); }
void pack_x_avx2(const PackXJob& job) { avx2::pack_x(job); }
void gemm_block_avx2(const GemmJob& job) { avx2::gemm_block(job); }
}  // namespace pagedllm::linear_kernels

PAGEDLLM_AVX2_END

#else
#include "linear_tile.h"
namespace pagedllm::linear_kernels {
void gemv_avx2(const GemvJob& job) { gemv_portable(job); }  // never chosen off x86-64
void pack_x_avx2(const PackXJob& job) { pack_x_portable(job); }
void gemm_block_avx2(const GemmJob& job) { gemm_block_portable(job); }
}  // namespace pagedllm::linear_kernels
#endif
