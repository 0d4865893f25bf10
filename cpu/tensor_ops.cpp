// Backend dispatch of tensor_ops.h by the stream's device, and the CPU half of
// the transfers.
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cpu_stream.h"
#include "pagedllm/error.h"
#include "pagedllm/tensor_ops.h"

namespace pagedllm {

namespace {
void check_layout(const StridedLayout& layout) {
  PAGEDLLM_CHECK(layout.ndim >= 0 && layout.ndim <= kMaxDims, InvalidArgument, "copy_strided: ndim ", layout.ndim,
                 " is out of range (0..", kMaxDims, ")");
  for (int d = 0; d < layout.ndim; ++d)
    PAGEDLLM_CHECK(layout.shape[d] >= 0 && layout.strides[d] >= 0, InvalidArgument,
                   "copy_strided: negative shape or stride in dimension ", d);
}
}  // namespace

void fill(void* dst, DType dtype, size_t n, double value, Stream& stream) {
  if (n == 0) return;
  if (stream.device().is_cpu()) fill_cpu(dst, dtype, n, value, stream);
  else fill_cuda(dst, dtype, n, value, stream);
}

void cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n, Stream& stream) {
  if (n == 0) return;
  if (stream.device().is_cpu()) cast_cpu(src, src_dtype, dst, dst_dtype, n, stream);
  else cast_cuda(src, src_dtype, dst, dst_dtype, n, stream);
}

void copy_strided(const void* src, const StridedLayout& layout, size_t elem_size, void* dst, Stream& stream) {
  check_layout(layout);
  if (stream.device().is_cpu()) copy_strided_cpu(src, layout, elem_size, dst, stream);
  else copy_strided_cuda(src, layout, elem_size, dst, stream);
}

void copy_bytes(const void* src, Stream& src_stream, void* dst, Stream& dst_stream, size_t bytes) {
  if (bytes == 0) return;
  if (src_stream.device().is_cpu() && dst_stream.device().is_cpu()) {
    if (&src_stream == &dst_stream) {
      as_cpu_stream(dst_stream).enqueue([src, dst, bytes] { std::memmove(dst, src, bytes); });
      return;
    }
    dst_stream.wait(src_stream.record());
    as_cpu_stream(dst_stream).enqueue([src, dst, bytes] { std::memmove(dst, src, bytes); });
    // The source's memory is freed in its own stream's order: keep that after the copy.
    src_stream.wait(dst_stream.record());
    return;
  }
  copy_bytes_cuda(src, src_stream, dst, dst_stream, bytes);
}

void upload(const void* host, void* dst, size_t bytes, Stream& stream) {
  if (bytes == 0) return;
  if (!stream.device().is_cpu()) return upload_cuda(host, dst, bytes, stream);
  // The caller's bytes may change after we return, and `dst` may still be read
  // by queued work: copy them now into a private buffer, land them in order.
  void* staging = std::malloc(bytes);
  PAGEDLLM_CHECK(staging != nullptr, OutOfMemory, "out of memory: cannot stage ", bytes, " bytes for an upload");
  std::memcpy(staging, host, bytes);
  as_cpu_stream(stream).enqueue([staging, dst, bytes] {
    std::memcpy(dst, staging, bytes);
    std::free(staging);
  });
}

void download(const void* src, void* host, size_t bytes, Stream& stream, std::function<void()> done) {
  if (!stream.device().is_cpu()) return download_cuda(src, host, bytes, stream, std::move(done));
  as_cpu_stream(stream).enqueue([src, host, bytes, done = std::move(done)] {
    if (bytes) std::memcpy(host, src, bytes);
    done();
  });
}

}  // namespace pagedllm
