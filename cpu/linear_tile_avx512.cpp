// The AVX-512 build of the CPU linear kernels (linear_tile.h): the AVX2 code, compiled for AVX-512
// F/BW/VL + VNNI (and AVX2 + FMA + F16C), with the GEMM's 6 × 32 tile of 512-bit registers. Called
// only when the CPU reports all of them (cpu/linear.cpp), so one binary runs everywhere.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "simd_target.h"
#include <cstdint>
#include <cstring>

// Everything shared with other files is included before the target switch (see simd_target.h).
#include "pagedllm/convert.h"
#include "pagedllm/dtype.h"

PAGEDLLM_AVX512_BEGIN

#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 1
#define PAGEDLLM_TILE_AVX512 1
#define PAGEDLLM_TILE_NAMESPACE avx512
#include "linear_tile.h"

namespace pagedllm::linear_kernels {
void gemv_avx512(const GemvJob& job) { avx512::gemv(job); }
void pack_x_avx512(const PackXJob& job) { avx512::pack_x(job); }
void gemm_block_avx512(const GemmJob& job) { avx512::gemm_block(job); }
}  // namespace pagedllm::linear_kernels

PAGEDLLM_AVX512_END

#else
#include "linear_tile.h"
namespace pagedllm::linear_kernels {
void gemv_avx512(const GemvJob& job) { gemv_portable(job); }  // never chosen off x86-64
void pack_x_avx512(const PackXJob& job) { pack_x_portable(job); }
void gemm_block_avx512(const GemmJob& job) { gemm_block_portable(job); }
}  // namespace pagedllm::linear_kernels
#endif
