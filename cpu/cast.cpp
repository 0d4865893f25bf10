// cast_cpu: dst[i] = convert<D>(src[i]) with the conversions of convert.h.
// Reference and fallback for cuda/cast.cu (bit-identical by construction).
#include <cstring>

#include "cpu_stream.h"
#include "pagedllm/convert.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

namespace {
template <typename S, typename D>
void cast_loop(const S* src, D* dst, size_t n) {  // src, dst: [n]
  for (size_t i = 0; i < n; ++i) dst[i] = convert<D>(src[i]);
}
}  // namespace

void cast_cpu(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n, Stream& stream) {
  CpuStream& cpu = as_cpu_stream(stream);
  if (src_dtype == dst_dtype) {
    const size_t bytes = n * dtype_size(src_dtype);
    cpu.enqueue([src, dst, bytes] { std::memmove(dst, src, bytes); });
    return;
  }
  PAGEDLLM_DISPATCH_DTYPE(src_dtype, S, {
    PAGEDLLM_DISPATCH_DTYPE(dst_dtype, D, {
      const S* in = static_cast<const S*>(src);
      D* out = static_cast<D*>(dst);
      cpu.enqueue([in, out, n] { cast_loop(in, out, n); });
    });
  });
}

}  // namespace pagedllm
