// The AVX-512 build of the CPU AWQ kernels (awq_tile.h): the AVX2 code, compiled for AVX-512
// F/BW/VL + VNNI (and AVX2 + FMA + F16C), with vpdpbusd for the int8 dot products and the 512-bit
// GEMM tile. Called only when the CPU reports all of them (cpu/awq.cpp), so one binary runs
// everywhere.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "simd_target.h"
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// Everything shared with other files is included before the target switch (see simd_target.h).
#include "pagedllm/awq.h"
#include "pagedllm/convert.h"
#include "pagedllm/dtype.h"

PAGEDLLM_AVX512_BEGIN

#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 1
#define PAGEDLLM_TILE_AVX512 1
#define PAGEDLLM_TILE_NAMESPACE avx512
#include "awq_tile.h"

namespace pagedllm::awq_kernels {
void gemv_avx512(const AwqGemvJob& job) { avx512::gemv(job); }
void gemm_block_avx512(const AwqGemmJob& job) { avx512::gemm_block(job); }
void gemv_i8_avx512(const AwqGemvI8Job& job) { avx512::gemv_i8(job); }
void gemm_i8_avx512(const AwqGemmI8Job& job) { avx512::gemm_i8(job); }
}  // namespace pagedllm::awq_kernels

PAGEDLLM_AVX512_END

#else
#include "awq_tile.h"
namespace pagedllm::awq_kernels {
void gemv_avx512(const AwqGemvJob& job) { gemv_portable(job); }  // never chosen off x86-64
void gemm_block_avx512(const AwqGemmJob& job) { gemm_block_portable(job); }
void gemv_i8_avx512(const AwqGemvI8Job&) { PAGEDLLM_FAIL(Unsupported, "awq_linear: a slab8 weight needs AVX2"); }
void gemm_i8_avx512(const AwqGemmI8Job&) { PAGEDLLM_FAIL(Unsupported, "awq_linear: a slab8 weight needs AVX2"); }
}  // namespace pagedllm::awq_kernels
#endif
