// copy_strided_cpu: gathers a strided view into a contiguous buffer.
// Reference and fallback for cuda/copy_strided.cu.
#include <cstring>

#include "cpu_stream.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

namespace {
void copy_strided_loop(const char* src, const StridedLayout& layout, size_t elem_size, char* dst) {
  const int ndim = layout.ndim;
  if (ndim == 0) {
    std::memcpy(dst, src, elem_size);
    return;
  }
  int64_t total = 1;
  for (int d = 0; d < ndim; ++d) total *= layout.shape[d];
  if (total == 0) return;
  // Walk the outer dimensions with an odometer; copy the innermost row in one go
  // when it is unit-stride (the common case: a slice of a contiguous tensor).
  const int64_t inner = layout.shape[ndim - 1];
  const int64_t inner_stride = layout.strides[ndim - 1];
  int64_t index[kMaxDims] = {};
  int64_t offset = 0;  // in elements, into src
  for (int64_t row = 0, rows = total / inner; row < rows; ++row) {
    if (inner_stride == 1) {
      std::memcpy(dst, src + offset * elem_size, inner * elem_size);
      dst += inner * elem_size;
    } else {
      for (int64_t i = 0; i < inner; ++i, dst += elem_size)
        std::memcpy(dst, src + (offset + i * inner_stride) * elem_size, elem_size);
    }
    for (int d = ndim - 2; d >= 0; --d) {
      offset += layout.strides[d];
      if (++index[d] < layout.shape[d]) break;
      offset -= index[d] * layout.strides[d];
      index[d] = 0;
    }
  }
}
}  // namespace

void copy_strided_cpu(const void* src, const StridedLayout& layout, size_t elem_size, void* dst, Stream& stream) {
  CpuStream& cpu = as_cpu_stream(stream);
  cpu.enqueue([src, layout, elem_size, dst] {
    copy_strided_loop(static_cast<const char*>(src), layout, elem_size, static_cast<char*>(dst));
  });
}

}  // namespace pagedllm
