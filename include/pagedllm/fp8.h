// fp8 e4m3 ("e4m3fn": 4 exponent bits, bias 7, 3 mantissa bits, no
// infinities, NaN = S.1111.111, largest finite ±448) conversions shared by
// the CPU and CUDA KV-cache writers, so both store identical bits. Rounding
// is to nearest even; values beyond ±448 (and ±Inf) saturate to ±448 (the
// "satfinite" behaviour of CUDA's __nv_cvt_float_to_fp8); NaN stays NaN.
#pragma once

#include <cstdint>

#include "pagedllm/half.h"

namespace pagedllm {

constexpr float kFp8E4M3Max = 448.0f;

PAGEDLLM_HD uint8_t float_to_fp8_e4m3(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 24) & 0x80u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);  // NaN
  if (absx >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7eu);  // >= 448 (and Inf): saturate
  if (absx < 0x3c800000u) {  // below 2^-6: an e4m3 subnormal, value / 2^-9 = m >> shift
    const uint32_t e = absx >> 23;
    if (e < 116) return static_cast<uint8_t>(sign);
    const uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 141 - e;  // 21..25
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;  // may carry into the smallest normal: still right
    return static_cast<uint8_t>(sign | q);
  }
  uint32_t h = (((absx >> 23) - 120) << 3) | ((absx & 0x7fffffu) >> 20);
  const uint32_t rem = absx & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (h & 1u))) ++h;
  if (h > 0x7eu) h = 0x7eu;  // rounding up past 448 would reach the NaN pattern
  return static_cast<uint8_t>(sign | h);
}

PAGEDLLM_HD float fp8_e4m3_to_float(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const uint32_t e = (v >> 3) & 0xfu, m = v & 0x7u;
  if (e == 0xf && m == 0x7) return bits_float(sign | 0x7fc00000u);
  if (e == 0) {  // m * 2^-9: exact in float
    if (m == 0) return bits_float(sign);
    uint32_t mm = m, ee = 127 - 9 + 3;  // normalise: value = 1.xxx * 2^(ee - 127)
    while (!(mm & 0x8u)) {
      mm <<= 1;
      --ee;
    }
    return bits_float(sign | (ee << 23) | ((mm & 0x7u) << 20));
  }
  return bits_float(sign | ((e + 120) << 23) | (m << 20));
}

}  // namespace pagedllm
