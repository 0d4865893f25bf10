// What the CPU tiles (paged_attention_tile.h, linear_tile.h) share: the vector
// helpers and the element sources — values of a cache or weight dtype read as
// float32, 8 lanes at a time (AVX2), 4 (GCC/Clang vector extensions: SSE2 or
// NEON) or one. Included by a tile's implementation section only, after it has
// defined PAGEDLLM_TILE_AVX2 and PAGEDLLM_TILE_NAMESPACE (portable / avx2): each
// build gets its own namespace, so nothing compiled for AVX2 is shared with a
// portable file.
#pragma once

#include <cstdint>
#include <cstring>

#include "pagedllm/convert.h"
#if PAGEDLLM_TILE_AVX2
#include <immintrin.h>
#endif

// The portable build uses GCC/Clang vector extensions where it can (SSE2 on x86-64, NEON on
// AArch64: the compiler's own vectoriser picks the wrong loop of the register tile), and plain
// loops elsewhere.
#if !PAGEDLLM_TILE_AVX2 && (defined(__GNUC__) || defined(__clang__))
#define PAGEDLLM_TILE_VEC4 1
#else
#define PAGEDLLM_TILE_VEC4 0
#endif

namespace pagedllm::simd {
namespace PAGEDLLM_TILE_NAMESPACE {

#if PAGEDLLM_TILE_VEC4
typedef float f32x4 __attribute__((vector_size(16)));
inline f32x4 load4(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, f32x4 v) { std::memcpy(p, &v, sizeof v); }
inline float hsum4(f32x4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
#endif

#if PAGEDLLM_TILE_VEC4
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint16_t u16x4 __attribute__((vector_size(8)));
inline u32x4 widen4(const uint16_t* p) {
  u16x4 h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, u32x4);
}
#endif

struct SrcF32 {
  using T = float;
#if PAGEDLLM_TILE_AVX2
  static __m256 load8(const T* p) { return _mm256_loadu_ps(p); }
#endif
#if PAGEDLLM_TILE_VEC4
  static f32x4 load4(const T* p) { return simd::PAGEDLLM_TILE_NAMESPACE::load4(p); }
#endif
  static float load1(const T* p) { return *p; }
};
struct SrcF16 {
  using T = uint16_t;
#if PAGEDLLM_TILE_AVX2
  static __m256 load8(const T* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif
  // Exact and branch-light (the portable build's hot path): the 15 magnitude bits moved into a
  // float32's place and rescaled by 2^112 give every finite value, subnormals included; an
  // all-ones exponent is widened to float32's (Inf, NaN with its payload).
  static float load1(const T* p) {
    const uint32_t h = *p;
    uint32_t u = float_bits(bits_float((h & 0x7fffu) << 13) * 0x1p112f);
    if ((h & 0x7c00u) == 0x7c00u) u |= 0x7f800000u;
    return bits_float(u | ((h & 0x8000u) << 16));
  }
#if PAGEDLLM_TILE_VEC4
  static f32x4 load4(const T* p) {  // load1, four lanes at a time
    const u32x4 h = widen4(p);
    u32x4 u = reinterpret_cast<u32x4>(reinterpret_cast<f32x4>((h & 0x7fffu) << 13) * 0x1p112f);
    u |= reinterpret_cast<u32x4>((h & 0x7c00u) == 0x7c00u) & 0x7f800000u;
    return reinterpret_cast<f32x4>(u | ((h & 0x8000u) << 16));
  }
#endif
};
struct SrcBF16 {
  using T = uint16_t;
#if PAGEDLLM_TILE_AVX2
  static __m256 load8(const T* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
#endif
  static float load1(const T* p) { return bfloat16_bits_to_float(*p); }
#if PAGEDLLM_TILE_VEC4
  static f32x4 load4(const T* p) { return reinterpret_cast<f32x4>(widen4(p) << 16); }
#endif
};

// int8 values as float32 (the caller applies the per-row scale).
struct SrcI8 {
  using T = int8_t;
#if PAGEDLLM_TILE_AVX2
  static __m256 load8(const T* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
#endif
  static float load1(const T* p) { return static_cast<float>(*p); }
};

#if PAGEDLLM_TILE_AVX2
inline float hsum(__m256 s) {
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}
#endif

}  // namespace PAGEDLLM_TILE_NAMESPACE
}  // namespace pagedllm::simd
