// fill_cpu: dst[i] = value. Reference and fallback for cuda/fill.cu.
#include <algorithm>

#include "cpu_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

void fill_cpu(void* dst, DType dtype, size_t n, double value, Stream& stream) {
  CpuStream& cpu = as_cpu_stream(stream);
  PAGEDLLM_DISPATCH_DTYPE(dtype, T, {
    const T v = convert_fill_value<T>(value);
    T* out = static_cast<T*>(dst);  // [n]
    cpu.enqueue([out, n, v] { std::fill(out, out + n, v); });
  });
}

}  // namespace pagedllm
