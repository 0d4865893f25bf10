// The CUDA AWQ int4 ops against the same references as the CPU tests
// (awq_reference.h): awq_dequantize bit for bit (float16 and float32), and
// awq_linear over M × shapes × every group size through the dispatch and
// through each kernel (GEMV, tensor cores, SIMT, dequantize + dense GEMM), on
// aligned and unaligned buffers. Each test skips, with the reason, where no
// usable CUDA device exists.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "awq_reference.h"
#include "cuda_test.h"
#include "harness.h"
#include "pagedllm/awq.h"
#include "pagedllm/device.h"

using namespace pagedllm;
using test::HostTensor;

namespace {

using test::gpu;
using test::require_cuda;

constexpr DType kFloats[] = {DType::Float32, DType::Float16, DType::BFloat16};

// Device copies of one weight's three tensors.
struct DeviceWeight {
  explicit DeviceWeight(const test::AwqTensors& t)
      : q(t.qweight.data(), t.qweight.size() * 4), z(t.qzeros.data(), t.qzeros.size() * 4),
        s(t.scales.data(), t.scales.size() * 2), weight(t.weight(q.ptr, z.ptr, s.ptr)) {}
  test::DeviceBuffer q, z, s;
  AwqWeight weight;
};

// W's relative error a kernel allows itself (awq.h): the GEMV's unrounded (q − z)·s, or W rounded
// to bfloat16 where tensor cores (or the dense GEMM after dequantizing) take bfloat16 x.
double weight_error(AwqCudaKernel kernel, DType x) {
  if (x == DType::BFloat16 && kernel != AwqCudaKernel::Gemv && kernel != AwqCudaKernel::Simt) return 1.0 / 256;
  return 1.0 / 2048;
}

bool tensor_cores_available() {
  const CudaInfo info = cuda_info();
  for (const auto& d : info.devices)
    if (d.index == 0) return d.major >= 8;
  return false;
}

void run_case(const test::AwqLinearCase& c, AwqCudaKernel kernel) {
  const DeviceWeight w(c.w);
  test::DeviceBuffer x(c.x.data(), c.x.bytes.size()), b(c.bias.data(), c.bias.bytes.size());
  HostTensor out = c.make_out();
  test::DeviceBuffer o(out.data(), out.bytes.size());
  awq_linear_cuda(c.args(x.ptr, w.weight, b.get<void>(), o.ptr), *gpu(), kernel);
  o.read(out.data(), out.bytes.size());
  c.check(out, weight_error(kernel == AwqCudaKernel::Auto ? AwqCudaKernel::DequantGemm : kernel, c.x.dtype),
          test::str("cuda ", awq_cuda_kernel_name(kernel)));
}

}  // namespace

TEST(cuda_awq_dequantize_bit_exact) {
  require_cuda();
  uint32_t seed = 11;
  for (const test::AwqShape& shape : test::awq_shapes()) {
    const test::AwqTensors t(shape.K, shape.N, shape.G, seed++);
    std::vector<float> ref(shape.K * shape.N);
    awq_dequantize_reference(t.weight(), ref.data());
    const DeviceWeight w(t);
    for (DType dtype : {DType::Float16, DType::Float32}) {
      HostTensor out(dtype, shape.K * shape.N);
      test::DeviceBuffer o(out.bytes.size());
      awq_dequantize({w.weight, o.ptr, dtype}, *gpu());
      o.read(out.data(), out.bytes.size());
      for (int64_t i = 0; i < shape.K * shape.N; ++i)
        CHECK(out.get(i) == ref[i], test::name(dtype), " at k ", i / shape.N, " n ", i % shape.N, " K ", shape.K, " N ",
              shape.N, " G ", shape.G, ": ", out.get(i), " vs ", ref[i]);
    }
  }
}

TEST(cuda_awq_linear_grid_every_kernel) {
  require_cuda();
  const bool tc = tensor_cores_available();
  uint32_t seed = 100;
  int combo = 0;
  for (const test::AwqShape& shape : test::awq_shapes())
    for (int64_t M : test::kAwqMs) {
      const int k = combo++;
      const DType x = kFloats[k % 3], o = kFloats[(k / 3) % 3];
      const test::AwqLinearCase c(x, o, k % 2 == 0, M, shape.K, shape.N, shape.G, k % 4 == 1, seed++);
      for (AwqCudaKernel kernel : {AwqCudaKernel::Auto, AwqCudaKernel::Gemv, AwqCudaKernel::TensorCore, AwqCudaKernel::Simt,
                                   AwqCudaKernel::DequantGemm}) {
        if (kernel == AwqCudaKernel::TensorCore && (x == DType::Float32 || !tc)) continue;
        run_case(c, kernel);
      }
    }
}

TEST(cuda_awq_linear_llama_shapes) {
  require_cuda();
  // Shapes big enough for the GEMV's split-K and every tensor-core tile size, through the dispatch.
  for (int64_t M : {1, 2, 4, 7, 16, 64, 300})
    for (DType t : {DType::Float16, DType::BFloat16}) {
      const test::AwqLinearCase c(t, t, M % 2 == 1, M, 4096, 1024, 128, false, static_cast<uint32_t>(M));
      run_case(c, AwqCudaKernel::Auto);
    }
}

TEST(cuda_awq_tensor_core_kernel_is_refused_where_it_cannot_run) {
  require_cuda();
  const test::AwqLinearCase c(DType::Float32, DType::Float32, false, 16, 128, 64, 64, false, 5);
  const DeviceWeight w(c.w);
  test::DeviceBuffer x(c.x.data(), c.x.bytes.size());
  HostTensor out = c.make_out();
  test::DeviceBuffer o(out.bytes.size());
  test::expect_error(ErrorCode::Unsupported, "tensor-core kernel needs sm_80+ code and float16/bfloat16 x",
                     [&] { awq_linear_cuda(c.args(x.ptr, w.weight, nullptr, o.ptr), *gpu(), AwqCudaKernel::TensorCore); });
}
