// Element types shared by every layer. The numeric values are part of the
// binding (lib/native.ts mirrors them); never renumber.
#pragma once

#include <cstddef>
#include <cstdint>

#include "pagedllm/error.h"

namespace pagedllm {

enum class DType : int32_t {
  Float32 = 0,
  Float16 = 1,
  BFloat16 = 2,
  Int32 = 3,  // also carries packed int4 (8 nibbles per int32, AWQ order: awq.h)
  Int8 = 4,
  UInt8 = 5,
};

constexpr int kNumDTypes = 6;

inline size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float16: return 2;
    case DType::BFloat16: return 2;
    case DType::Int32: return 4;
    case DType::Int8: return 1;
    case DType::UInt8: return 1;
  }
  PAGEDLLM_FAIL(InvalidArgument, "unknown dtype ", static_cast<int>(dtype));
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int32: return "int32";
    case DType::Int8: return "int8";
    case DType::UInt8: return "uint8";
  }
  return "unknown";
}

inline DType dtype_from_int(int32_t value) {
  PAGEDLLM_CHECK(value >= 0 && value < kNumDTypes, InvalidArgument, "unknown dtype ", value);
  return static_cast<DType>(value);
}

inline bool dtype_is_float(DType dtype) {
  return dtype == DType::Float32 || dtype == DType::Float16 || dtype == DType::BFloat16;
}

}  // namespace pagedllm
