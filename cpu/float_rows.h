// Element and row access for the CPU ops over float32 / float16 / bfloat16
// tensors (conversions round to nearest even), the epilogue that stores a
// float32 tile of linear / awq_linear results, and an aligned scratch buffer.
// Not for the *_avx2.cpp tile files: they include nothing they share.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "pagedllm/convert.h"
#include "pagedllm/dtype.h"

namespace pagedllm {

inline bool is_float(DType t) { return t == DType::Float32 || t == DType::Float16 || t == DType::BFloat16; }

inline float load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float16: return to_float(static_cast<const half_t*>(p)[i]);
    case DType::BFloat16: return to_float(static_cast<const bfloat16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

inline void store(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::Float16: static_cast<half_t*>(p)[i] = from_float<half_t>(v); break;
    case DType::BFloat16: static_cast<bfloat16_t*>(p)[i] = from_float<bfloat16_t>(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

// n elements at element `at` of p (of t) to float32.
inline void load_row(const void* p, DType t, int64_t at, int64_t n, float* out) {
  switch (t) {
    case DType::Float16: {
      const half_t* s = static_cast<const half_t*>(p) + at;
      for (int64_t i = 0; i < n; ++i) out[i] = to_float(s[i]);
      break;
    }
    case DType::BFloat16: {
      const bfloat16_t* s = static_cast<const bfloat16_t*>(p) + at;
      for (int64_t i = 0; i < n; ++i) out[i] = to_float(s[i]);
      break;
    }
    default: std::memcpy(out, static_cast<const float*>(p) + at, n * sizeof(float));
  }
}

// n float32 values to element `at` of p (of t).
inline void store_row(void* p, DType t, int64_t at, int64_t n, const float* in) {
  switch (t) {
    case DType::Float16: {
      half_t* d = static_cast<half_t*>(p) + at;
      for (int64_t i = 0; i < n; ++i) d[i] = from_float<half_t>(in[i]);
      break;
    }
    case DType::BFloat16: {
      bfloat16_t* d = static_cast<bfloat16_t*>(p) + at;
      for (int64_t i = 0; i < n; ++i) d[i] = from_float<bfloat16_t>(in[i]);
      break;
    }
    default: std::memcpy(static_cast<float*>(p) + at, in, n * sizeof(float));
  }
}

// The output of a linear: out[m, n] (rows out_stride elements apart) = tile + bias[n].
struct LinearOut {
  void* out;
  DType out_dtype;
  int64_t out_stride;
  const void* bias;  // null: none
  DType bias_dtype;

  // out[m0 + i, n0 + j] = c[i · ldc + j] + bias[n0 + j] for i < mb, j < nb.
  void store_tile(const float* c, int64_t ldc, int64_t m0, int64_t mb, int64_t n0, int64_t nb) const {
    for (int64_t i = 0; i < mb; ++i) {
      const float* ci = c + i * ldc;
      const int64_t row = (m0 + i) * out_stride + n0;
      if (!bias) {
        store_row(out, out_dtype, row, nb, ci);
        continue;
      }
      for (int64_t j = 0; j < nb; ++j) store(out, out_dtype, row + j, ci[j] + load(bias, bias_dtype, n0 + j));
    }
  }
};

// A float buffer whose get(n) is 64-byte aligned (the tiles' aligned vector loads), kept across
// calls (as a thread_local): a fresh buffer of a few hundred KiB would be mmap-ed and
// page-faulted in on every call, a sizeable part of a sub-millisecond op.
class AlignedFloats {
 public:
  float* get(int64_t n) {
    storage_.resize(n + 16);
    float* p = storage_.data();
    return p + (16 - (reinterpret_cast<uintptr_t>(p) / sizeof(float)) % 16) % 16;
  }

 private:
  std::vector<float> storage_;
};

}  // namespace pagedllm
