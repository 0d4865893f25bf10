// The AVX2 + FMA + F16C build of the CPU AWQ kernels (awq_tile.h). Compiled for
// those instructions whatever the build's target, and called only when the CPU
// reports all three (cpu/awq.cpp), so one binary runs everywhere.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "simd_target.h"
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// Everything shared with other files is included before the target switch, so
// that no inline function or template instance they share is compiled for AVX2.
#include "pagedllm/awq.h"
#include "pagedllm/convert.h"
#include "pagedllm/dtype.h"

PAGEDLLM_AVX2_BEGIN

#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 1
#define PAGEDLLM_TILE_NAMESPACE avx2
#include "awq_tile.h"

namespace pagedllm::awq_kernels {
void gemv_avx2(const AwqGemvJob& job) { avx2::gemv(job); }
void gemm_block_avx2(const AwqGemmJob& job) { avx2::gemm_block(job); }
void gemv_i8_avx2(const AwqGemvI8Job& job) { avx2::gemv_i8(job); }
void gemm_i8_avx2(const AwqGemmI8Job& job) { avx2::gemm_i8(job); }
void quantize_activations_avx2(const float* x, int64_t n, int8_t* codes, float* scales, float* sums) {
  avx2::quantize_activations(x, n, codes, scales, sums);
}
}  // namespace pagedllm::awq_kernels

PAGEDLLM_AVX2_END

#else
#include "awq_tile.h"
namespace pagedllm::awq_kernels {
void gemv_avx2(const AwqGemvJob& job) { gemv_portable(job); }  // never chosen off x86-64
void gemm_block_avx2(const AwqGemmJob& job) { gemm_block_portable(job); }
// Never chosen off x86-64 (awq.cpp takes the int8 gemv, over slab8 weights, only on the AVX2 path).
void gemv_i8_avx2(const AwqGemvI8Job&) { PAGEDLLM_FAIL(Unsupported, "awq_linear: a slab8 weight needs AVX2"); }
void gemm_i8_avx2(const AwqGemmI8Job&) { PAGEDLLM_FAIL(Unsupported, "awq_linear: a slab8 weight needs AVX2"); }
void quantize_activations_avx2(const float*, int64_t, int8_t*, float*, float*) {
  PAGEDLLM_FAIL(Unsupported, "awq_linear: int8 activations need AVX2");
}
}  // namespace pagedllm::awq_kernels
#endif
