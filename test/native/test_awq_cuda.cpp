// The CUDA AWQ int4 ops against the same references as the CPU tests
// (awq_reference.h): awq_dequantize bit for bit (float16 and float32), and
// awq_linear over M × shapes × every group size through the dispatch and
// through each kernel (GEMV, tensor cores, SIMT, dequantize + dense GEMM), on
// aligned and unaligned buffers. Both GEMVs are run: AwqCudaKernel::Gemv (the
// newer one, M ≤ 8, which the dispatch uses only with PAGEDLLM_AWQ_GEMV=new)
// and GemvLegacy (the dispatch's default). Each test skips, with the reason, where
// no usable CUDA device exists.
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
  if (x == DType::BFloat16 && kernel != AwqCudaKernel::Gemv && kernel != AwqCudaKernel::GemvLegacy &&
      kernel != AwqCudaKernel::Simt)
    return 1.0 / 256;
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
      for (AwqCudaKernel kernel : {AwqCudaKernel::Auto, AwqCudaKernel::Gemv, AwqCudaKernel::GemvLegacy, AwqCudaKernel::TensorCore,
                                   AwqCudaKernel::Simt, AwqCudaKernel::DequantGemm}) {
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

// The GEMVs (M ≤ 8) on shapes that reach every path of the current one: 16-byte words (N/8 a
// multiple of 4), 8-byte (N/8 even), 4-byte (odd), qweight and qzeros off 16-byte alignment (the
// 4-byte kernels), K splits from 1 to many (K up to 4096, ragged K with one group), column tiles cut
// short, strided x and out, a bias; each M of 1 … 8 and each x dtype.
TEST(cuda_awq_gemv_current_and_legacy) {
  require_cuda();
  struct Shape {
    int64_t K, N, G;
  };
  // N/8: 64, 33, 130, 1, 5, 32, 12, 3, 97, 514, 1376 (multiples of 4, even, odd); the last shape is
  // a llama MLP's, big enough for long runs and several load batches per thread.
  const Shape shapes[] = {{4096, 512, 128}, {2048, 264, 64}, {1024, 1040, 32}, {512, 8, 32},     {96, 40, 32},  {4096, 256, 4096},
                          {1000, 96, 1000}, {77, 24, 77},    {3072, 776, 128}, {256, 4112, 64}, {4096, 11008, 128}};
  uint32_t seed = 500;
  int combo = 0;
  for (const Shape& shape : shapes)
    for (int64_t M = 1; M <= 8; ++M) {
      if (shape.N == 11008 && M != 1 && M != 2 && M != 5 && M != 8) continue;  // (the float64 reference's time)
      const int k = combo++;
      const DType x = kFloats[k % 3], o = kFloats[(k / 3) % 3];
      const test::AwqLinearCase c(x, o, k % 2 == 1, M, shape.K, shape.N, shape.G, k % 4 == 2, seed++);
      for (AwqCudaKernel kernel : {AwqCudaKernel::Gemv, AwqCudaKernel::GemvLegacy}) run_case(c, kernel);
      if (M == 1 || M == 3 || M == 8) {  // qweight and qzeros 4 bytes off 16-byte alignment
        const test::AwqTensors& t = c.w;
        std::vector<int32_t> q(t.qweight.size() + 1), z(t.qzeros.size() + 1);
        std::memcpy(q.data() + 1, t.qweight.data(), t.qweight.size() * 4);
        std::memcpy(z.data() + 1, t.qzeros.data(), t.qzeros.size() * 4);
        test::DeviceBuffer qd(q.data(), q.size() * 4), zd(z.data(), z.size() * 4), sd(t.scales.data(), t.scales.size() * 2);
        const AwqWeight w = t.weight(qd.get<int32_t>() + 1, zd.get<int32_t>() + 1, sd.ptr);
        test::DeviceBuffer xd(c.x.data(), c.x.bytes.size()), b(c.bias.data(), c.bias.bytes.size());
        for (AwqCudaKernel kernel : {AwqCudaKernel::Gemv, AwqCudaKernel::GemvLegacy}) {
          HostTensor out = c.make_out();
          test::DeviceBuffer od(out.data(), out.bytes.size());
          awq_linear_cuda(c.args(xd.ptr, w, b.get<void>(), od.ptr), *gpu(), kernel);
          od.read(out.data(), out.bytes.size());
          c.check(out, weight_error(kernel, x), test::str("cuda ", awq_cuda_kernel_name(kernel), " unaligned qweight"));
        }
      }
    }
}
