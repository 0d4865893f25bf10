// The AVX2 build (simd_target.h) of the sampler's exponentials (cpu/sampling.cpp): e = exp(−d) for d ≥ 0,
// four at a time, within an ulp or two of the C library's exp (2^k · a degree-13 polynomial on
// |r| ≤ ln2 / 2, Cody-Waite reduction); exp(−d) for d > 708 is 0 (the C library's would be
// subnormal: no sum or cut of the sampler can see it), +inf gives 0 and NaN stays NaN.
// Compiled for those instructions whatever the build's target, and called only when the CPU
// reports them, so one binary runs everywhere.
#include <cstdint>

namespace pagedllm::sampling_kernels {
// out[i] = exp(−d[i]) for i < n.
void exp_negative_avx2(const double* d, double* out, int64_t n);
}  // namespace pagedllm::sampling_kernels

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "simd_target.h"
#include <cmath>

PAGEDLLM_AVX2_BEGIN

#include <immintrin.h>

namespace pagedllm::sampling_kernels {

void exp_negative_avx2(const double* d, double* out, int64_t n) {
  const __m256d log2e = _mm256_set1_pd(1.4426950408889634), ln2_hi = _mm256_set1_pd(6.93147180369123816490e-01),
                ln2_lo = _mm256_set1_pd(1.90821492927058770002e-10), limit = _mm256_set1_pd(-708.0);
  // 1/j! for j = 13 … 0 (Horner from the top).
  static constexpr double c[14] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                   1.0 / 40320.0,      1.0 / 5040.0,      1.0 / 720.0,      1.0 / 120.0,     1.0 / 24.0,
                                   1.0 / 6.0,          0.5,               1.0,              1.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d x = _mm256_sub_pd(_mm256_setzero_pd(), _mm256_loadu_pd(d + i));  // −d ≤ 0 (or NaN)
    const __m256d below = _mm256_cmp_pd(x, limit, _CMP_LT_OQ);                      // exp underflows: 0
    const __m256d xc = _mm256_max_pd(x, limit);                                      // (NaN passes through: max(NaN, l) = l? see below)
    const __m256d k = _mm256_round_pd(_mm256_mul_pd(xc, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256d r = _mm256_fnmadd_pd(k, ln2_lo, _mm256_fnmadd_pd(k, ln2_hi, xc));
    __m256d p = _mm256_set1_pd(c[0]);
    for (int j = 1; j < 14; ++j) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c[j]));
    // 2^k for k ∈ [−1022, 0]: the exponent field (k + 1023) << 52.
    const __m128i k32 = _mm256_cvtpd_epi32(k);
    const __m256i bits = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(k32), _mm256_set1_epi64x(1023)), 52);
    __m256d e = _mm256_mul_pd(p, _mm256_castsi256_pd(bits));
    e = _mm256_andnot_pd(below, e);
    // NaN in, NaN out (max_pd returned the limit for a NaN first operand; put the NaN back).
    const __m256d nan = _mm256_cmp_pd(x, x, _CMP_UNORD_Q);
    e = _mm256_blendv_pd(e, x, nan);
    _mm256_storeu_pd(out + i, e);
  }
  for (; i < n; ++i) out[i] = -d[i] < -708.0 ? 0.0 : std::exp(-d[i]);
}

}  // namespace pagedllm::sampling_kernels

PAGEDLLM_AVX2_END

#else
#include <cmath>
namespace pagedllm::sampling_kernels {
void exp_negative_avx2(const double* d, double* out, int64_t n) {  // never chosen off x86-64
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(-d[i]);
}
}  // namespace pagedllm::sampling_kernels
#endif
