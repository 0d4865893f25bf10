// Independent references for the tests: float16/bfloat16 rounding computed by
// searching the table of every representable value in double precision (not
// by the bit tricks of half.h), and small helpers shared by the test files.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace test {

// Decodes a float16 bit pattern by its definition.
inline double half_value(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e == 31) return m ? NAN : sign * INFINITY;
  if (e == 0) return sign * std::ldexp(m, -24);
  return sign * std::ldexp(1024 + m, e - 25);
}

inline double bfloat16_value(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Nearest representable value, ties to the even bit pattern, overflow to Inf
// at `overflow` (the midpoint between the largest finite value and the next
// power of two). `values`: ascending non-negative finite values, index = bits.
inline uint16_t round_to_table(double x, const std::vector<double>& values, double overflow) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const uint16_t inf_bits = static_cast<uint16_t>(values.size());  // first pattern after the finite ones
  const double a = std::fabs(x);
  if (a >= overflow) return sign | inf_bits;
  auto it = std::lower_bound(values.begin(), values.end(), a);
  size_t hi = it - values.begin();
  if (hi == values.size()) return sign | static_cast<uint16_t>(hi - 1);
  if (values[hi] == a || hi == 0) return sign | static_cast<uint16_t>(hi);
  const size_t lo = hi - 1;
  const double dlo = a - values[lo], dhi = values[hi] - a;
  if (dlo < dhi) return sign | static_cast<uint16_t>(lo);
  if (dhi < dlo) return sign | static_cast<uint16_t>(hi);
  return sign | static_cast<uint16_t>((lo % 2 == 0) ? lo : hi);
}

inline uint16_t reference_to_half(float x) {
  static const std::vector<double> table = [] {
    std::vector<double> t;
    for (uint32_t b = 0; b < 0x7c00; ++b) t.push_back(half_value(static_cast<uint16_t>(b)));
    return t;
  }();
  return round_to_table(x, table, 65520.0);
}

inline uint16_t reference_to_bfloat16(float x) {
  static const std::vector<double> table = [] {
    std::vector<double> t;
    for (uint32_t b = 0; b < 0x7f80; ++b) t.push_back(bfloat16_value(static_cast<uint16_t>(b)));
    return t;
  }();
  return round_to_table(x, table, std::ldexp(1.0, 128) - std::ldexp(1.0, 119));
}

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Random floats over the whole exponent range plus the special values.
inline std::vector<float> interesting_floats(size_t random_count, uint32_t seed) {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 65536.0f,
                          6.1035156e-05f /* 2^-14 */, 5.9604645e-08f /* 2^-24 */, 2.9802322e-08f /* 2^-25 */,
                          2.9802326e-08f, 1e-45f, 3.4028235e38f, -3.4028235e38f, INFINITY, -INFINITY, NAN, -NAN,
                          1.00048828125f /* half tie */, 1.0009765625f, 3.3895314e38f, 3.3961775e38f};
  std::mt19937 rng(seed);
  for (size_t i = 0; i < random_count; ++i) {
    float f = bits_to_float(rng());
    v.push_back(f);
  }
  for (size_t i = 0; i < random_count; ++i) {  // concentrated near the float16 range and its subnormals
    std::uniform_real_distribution<float> mant(1.0f, 2.0f);
    std::uniform_int_distribution<int> exp(-27, 17);
    v.push_back((rng() & 1 ? -1 : 1) * std::ldexp(mant(rng), exp(rng)));
  }
  return v;
}

}  // namespace test
