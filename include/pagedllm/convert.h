// Scalar element conversions used by cast and fill on both backends, so the
// CPU and CUDA results are bit-identical. Float <-> float rounds to nearest
// even (half.h). Float -> integer truncates toward zero and saturates to the
// integer's range; NaN -> 0. Integer -> float16/bfloat16 goes through float32.
#pragma once

#include <cstdint>

#include "pagedllm/half.h"

namespace pagedllm {

// Storage types of the 16-bit floats (bits only; arithmetic goes through float).
struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

template <typename T>
struct is_float_storage {
  static constexpr bool value = false;
};
template <>
struct is_float_storage<float> {
  static constexpr bool value = true;
};
template <>
struct is_float_storage<half_t> {
  static constexpr bool value = true;
};
template <>
struct is_float_storage<bfloat16_t> {
  static constexpr bool value = true;
};

PAGEDLLM_HD float to_float(float v) { return v; }
PAGEDLLM_HD float to_float(half_t v) { return half_bits_to_float(v.bits); }
PAGEDLLM_HD float to_float(bfloat16_t v) { return bfloat16_bits_to_float(v.bits); }

template <typename T>
PAGEDLLM_HD T from_float(float v);
template <>
PAGEDLLM_HD float from_float<float>(float v) { return v; }
template <>
PAGEDLLM_HD half_t from_float<half_t>(float v) { return half_t{float_to_half_bits(v)}; }
template <>
PAGEDLLM_HD bfloat16_t from_float<bfloat16_t>(float v) { return bfloat16_t{float_to_bfloat16_bits(v)}; }

template <typename I>
PAGEDLLM_HD I saturate_from_double(double v, double lo, double hi) {
  if (!(v == v)) return I(0);  // NaN
  if (v <= lo) return static_cast<I>(lo);
  if (v >= hi) return static_cast<I>(hi);
  return static_cast<I>(v);  // truncates toward zero
}

template <typename I>
PAGEDLLM_HD I to_int(double v);
template <>
PAGEDLLM_HD int32_t to_int<int32_t>(double v) { return saturate_from_double<int32_t>(v, -2147483648.0, 2147483647.0); }
template <>
PAGEDLLM_HD int8_t to_int<int8_t>(double v) { return saturate_from_double<int8_t>(v, -128.0, 127.0); }
template <>
PAGEDLLM_HD uint8_t to_int<uint8_t>(double v) { return saturate_from_double<uint8_t>(v, 0.0, 255.0); }

// convert<D>(s): one element of any storage type S to storage type D.
template <typename D, typename S>
PAGEDLLM_HD D convert(S s) {
  if constexpr (is_float_storage<D>::value) {
    if constexpr (is_float_storage<S>::value) {
      return from_float<D>(to_float(s));
    } else {
      return from_float<D>(static_cast<float>(s));
    }
  } else {
    if constexpr (is_float_storage<S>::value) {
      return to_int<D>(static_cast<double>(to_float(s)));
    } else {
      return to_int<D>(static_cast<double>(s));
    }
  }
}

// The value a fill of `dtype` stores: float64 -> float32 -> dtype for floats,
// float64 -> integer (truncate, saturate) for integers.
template <typename D>
PAGEDLLM_HD D convert_fill_value(double v) {
  if constexpr (is_float_storage<D>::value) {
    return from_float<D>(static_cast<float>(v));
  } else {
    return to_int<D>(v);
  }
}

}  // namespace pagedllm

// Calls MACRO(T) ... with T the storage type of `dtype` (a runtime DType).
#define PAGEDLLM_DISPATCH_DTYPE(dtype, T, ...)                                              \
  switch (dtype) {                                                                          \
    case ::pagedllm::DType::Float32: { using T = float; __VA_ARGS__; break; }               \
    case ::pagedllm::DType::Float16: { using T = ::pagedllm::half_t; __VA_ARGS__; break; }  \
    case ::pagedllm::DType::BFloat16: { using T = ::pagedllm::bfloat16_t; __VA_ARGS__; break; } \
    case ::pagedllm::DType::Int32: { using T = int32_t; __VA_ARGS__; break; }               \
    case ::pagedllm::DType::Int8: { using T = int8_t; __VA_ARGS__; break; }                 \
    case ::pagedllm::DType::UInt8: { using T = uint8_t; __VA_ARGS__; break; }               \
  }
