// Element-wise tensor ops behind Tensor (fill, cast, strided copy, transfers).
// One op, one file pair: cpu/<op>.cpp <-> cuda/<op>.cu with the same
// arguments; the dispatching entry point picks by the stream's device.
// All pointers are to device memory of the stream's device unless noted; all
// calls enqueue and return at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "pagedllm/dtype.h"
#include "pagedllm/stream.h"

namespace pagedllm {

constexpr int kMaxDims = 8;

// dst[i] = value for i < n; `value` is converted as cast() converts a float64.
void fill(void* dst, DType dtype, size_t n, double value, Stream& stream);
void fill_cpu(void* dst, DType dtype, size_t n, double value, Stream& stream);
void fill_cuda(void* dst, DType dtype, size_t n, double value, Stream& stream);

// dst[i] = convert(src[i]) for i < n (contiguous). Float conversions round to
// nearest even (half.h); float -> integer truncates toward zero and saturates,
// NaN -> 0; integer -> float16/bfloat16 goes through float32.
void cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n, Stream& stream);
void cast_cpu(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n, Stream& stream);
void cast_cuda(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n, Stream& stream);

// Gathers a strided view into contiguous dst (row-major over `shape`).
// shape/src_strides: [ndim] (strides in elements, >= 0), ndim <= kMaxDims.
struct StridedLayout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
};
void copy_strided(const void* src, const StridedLayout& layout, size_t elem_size, void* dst, Stream& stream);
void copy_strided_cpu(const void* src, const StridedLayout& layout, size_t elem_size, void* dst, Stream& stream);
void copy_strided_cuda(const void* src, const StridedLayout& layout, size_t elem_size, void* dst, Stream& stream);

// Copies `bytes` between any two devices. Ordered after prior work on
// src_stream and dst_stream; the copy runs on dst_stream's device side when
// either end is a GPU (see cuda/transfer.cpp for the staging protocol).
void copy_bytes(const void* src, Stream& src_stream, void* dst, Stream& dst_stream, size_t bytes);

// Host (caller-owned, pageable) <-> device memory of `stream`. The host bytes
// of `upload` are copied before it returns; `download` writes `host` from a
// host thread and then calls `done()` there (done must not throw).
void upload(const void* host, void* dst, size_t bytes, Stream& stream);
void download(const void* src, void* host, size_t bytes, Stream& stream, std::function<void()> done);

}  // namespace pagedllm

namespace pagedllm {
// The CUDA halves of copy_bytes / upload / download (cuda/transfer.cpp).
void copy_bytes_cuda(const void* src, Stream& src_stream, void* dst, Stream& dst_stream, size_t bytes);
void upload_cuda(const void* host, void* dst, size_t bytes, Stream& stream);
void download_cuda(const void* src, void* host, size_t bytes, Stream& stream, std::function<void()> done);
}  // namespace pagedllm
