// The CUDA model ops against the float64 references of model_ops_reference.h
// (the same cases as the CPU tests), with extra linear shapes for each CUDA
// path: the GEMV kernel (M ≤ 8), the tensor-core GEMM (sm_80+, 16-bit x and
// weight; aligned cp.async and unaligned element loads; all three tile sizes)
// and the SIMT GEMM (float32 or mixed dtypes), and embedding's zero rows for
// ids outside the vocabulary. Each test skips, with the reason, where no usable
// CUDA device exists.
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test.h"
#include "harness.h"
#include "model_ops_reference.h"
#include "pagedllm/device.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/tensor_ops.h"

using namespace pagedllm;
using test::HostTensor;

namespace {

using test::gpu;
using test::require_cuda;

// A device copy of a host tensor (or of raw bytes), freed stream-ordered.
struct DeviceCopy : test::DeviceBuffer {
  using DeviceBuffer::DeviceBuffer;
  explicit DeviceCopy(const HostTensor& t) : DeviceBuffer(t.data(), t.bytes.size()) {}
  // Downloads into `t` (same size) after all queued work.
  void read(HostTensor& t) const { DeviceBuffer::read(t.data(), t.bytes.size()); }
};

constexpr DType kFloats[] = {DType::Float32, DType::Float16, DType::BFloat16};

void run_linear_case(const test::LinearCase& c) {
  DeviceCopy x(c.x), w(c.weight), b(c.bias);
  HostTensor out = c.make_out();
  DeviceCopy o(out);
  linear(c.args(x.ptr, w.ptr, b.ptr, o.ptr), *gpu());
  o.read(out);
  c.check(out, "cuda");
}

}  // namespace

TEST(cuda_embedding_grid_and_zero_rows_for_bad_ids) {
  require_cuda();
  uint32_t seed = 1;
  for (DType w : kFloats)
    for (DType o : kFloats)
      for (int64_t hidden : {64, 100, 4096}) {
        const test::EmbeddingCase c(w, o, 33, 300, hidden, seed++);
        DeviceCopy ids(c.ids), weight(c.weight);
        HostTensor out = c.make_out();
        DeviceCopy d(out);
        EmbeddingArgs a = c.args(d.ptr);
        a.ids = static_cast<const int32_t*>(ids.ptr);
        a.weight = weight.ptr;
        embedding(a, *gpu());
        d.read(out);
        c.check(out, "cuda");
      }
  // Ids outside [0, vocab): rows of zeros, the others as usual.
  test::EmbeddingCase c(DType::Float16, DType::Float32, 4, 300, 64, 99);
  c.ids.set(1, 300);
  c.ids.set(3, -5);
  DeviceCopy ids(c.ids), weight(c.weight);
  HostTensor out = c.make_out();
  DeviceCopy d(out);
  EmbeddingArgs a = c.args(d.ptr);
  a.ids = static_cast<const int32_t*>(ids.ptr);
  a.weight = weight.ptr;
  embedding(a, *gpu());
  d.read(out);
  for (int64_t i = 0; i < 64; ++i) {
    CHECK(out.get(64 + i) == 0.0 && out.get(3 * 64 + i) == 0.0, "bad ids give zero rows");
    CHECK(out.get(i) == c.weight.get(static_cast<int64_t>(c.ids.get(0)) * 64 + i), "good ids still copied");
  }
}

TEST(cuda_rms_norm_grid) {
  require_cuda();
  uint32_t seed = 100;
  int combo = 0;
  for (DType x : kFloats)
    for (DType o : kFloats)
      for (bool fused : {false, true})
        for (int64_t hidden : {64, 100, 127, 1024, 4096, 8192}) {
          const DType w = kFloats[combo % 3], r = kFloats[(combo / 3) % 3];
          const int64_t tokens = combo % 3 == 0 ? 1 : combo % 3 == 1 ? 3 : 17;
          const test::RmsNormCase c(x, w, o, fused, r, tokens, hidden, combo % 2 == 1, 1e-5f, seed++);
          DeviceCopy dx(c.x), dw(c.weight), dr(c.residual);
          HostTensor out = c.make_out(), residual = c.residual;
          DeviceCopy dout(out);
          RmsNormArgs a = c.args(dout.ptr, dr.ptr);
          a.x = dx.ptr;
          a.weight = dw.ptr;
          rms_norm(a, *gpu());
          dout.read(out);
          if (fused) dr.read(residual);
          c.check(out, &residual, "cuda");
          ++combo;
        }
}

TEST(cuda_rope_grid) {
  require_cuda();
  uint32_t seed = 200;
  int combo = 0;
  for (DType t : kFloats)
    for (int64_t D : {64, 80, 128, 256})
      for (bool partial : {false, true}) {
        const int64_t heads = combo % 2 ? 8 : 4, kv = combo % 3 ? 2 : heads;
        const test::RopeCase c(t, combo % 2 ? 9 : 3, heads, kv, D, partial ? D / 2 : D, combo % 2 ? 500000.0 : 10000.0,
                               combo % 5 != 4, seed++);
        DeviceCopy qkv(c.qkv), pos(c.positions), freq(c.inv_freq.data(), c.inv_freq.size() * 4);
        rope(c.args(qkv.ptr, pos.ptr, static_cast<const float*>(freq.ptr)), *gpu());
        HostTensor out = c.qkv;
        qkv.read(out);
        c.check(out, "cuda");
        ++combo;
      }
}

TEST(cuda_silu_mul_and_add) {
  require_cuda();
  uint32_t seed = 300;
  for (DType t : kFloats)
    for (int64_t I : {1, 64, 100, 11008})
      for (int64_t tokens : {1, 3, 8}) {
        const test::SiluMulCase c(t, tokens, I, tokens == 3, seed++);
        DeviceCopy x(c.x);
        HostTensor out = c.make_out();
        DeviceCopy d(out);
        SiluMulArgs a = c.args(d.ptr);
        a.x = x.ptr;
        silu_mul(a, *gpu());
        d.read(out);
        c.check(out, "cuda");
      }
  for (DType t : kFloats) {
    const int64_t n = 100003;
    const HostTensor a = test::random_tensor(t, n, 1), b = test::random_tensor(t, n, 2);
    HostTensor out(t, n);
    DeviceCopy da(a), db(b), dout(out);
    add(AddArgs{da.ptr, db.ptr, dout.ptr, t, n}, *gpu());
    dout.read(out);
    std::vector<double> want(n), tol(n);
    for (int64_t i = 0; i < n; ++i) {
      want[i] = test::round_to(t, a.get(i) + b.get(i));
      tol[i] = std::fabs(want[i]) * test::ulp(t);
    }
    test::check_close(out, want, tol, test::str("cuda add ", test::name(t)));
  }
}

TEST(cuda_linear_grid) {
  require_cuda();
  const int64_t shapes[][2] = {{1, 1}, {7, 13}, {16, 64}, {100, 37}, {257, 515}, {64, 4096}, {33, 1000}};
  const int64_t Ms[] = {1, 3, 8, 33, 128};
  uint32_t seed = 400;
  int combo = 0;
  for (const auto& nk : shapes)
    for (int64_t M : Ms)
      for (int d = 0; d < 3; ++d) {
        const int k = combo++;
        const DType x = kFloats[k % 3], w = kFloats[(k / 3) % 3], o = kFloats[(k / 9) % 3];
        run_linear_case(test::LinearCase(x, w, o, k % 2 == 0, M, nk[0], nk[1], k % 4 == 1, seed++));
      }
}

TEST(cuda_linear_tensor_core_paths) {
  require_cuda();
  // x and weight of one 16-bit dtype, M > 8: the tensor-core kernel on sm_80+ (the SIMT one on
  // sm_75). K % 8 == 0 and x rows 8-aligned: cp.async; K or the row stride odd: element loads.
  // Sizes that give each of the 64×64, 64×128 and 128×128 tiles on an H100 (132 SMs), and split K
  // (fewer tiles than two per SM: 2-16 splits summed by a second kernel), aligned or not, with the
  // last split shorter (K = 4095, 1000) — e.g. a decode batch of 64 on a 4096 × 4096 weight.
  const std::tuple<int64_t, int64_t, int64_t, bool> shapes[] = {
      {9, 40, 64, false},       {33, 100, 64, false},     {128, 257, 515, false},   {77, 130, 200, true},
      {300, 1000, 1024, false}, {1024, 2048, 128, false}, {2048, 2304, 128, false}, {4096, 2048, 64, true},
      {64, 4096, 4096, false},  {16, 1000, 4095, false},  {24, 520, 1000, true},    {200, 700, 2048, false}};
  uint32_t seed = 900;
  for (DType t : {DType::Float16, DType::BFloat16})
    for (const auto& [M, N, K, strided] : shapes)
      run_linear_case(test::LinearCase(t, t, seed % 2 ? t : DType::Float32, seed % 3 == 0, M, N, K, strided, seed++));
}

TEST(cuda_linear_decode_shapes) {
  require_cuda();
  // The GEMV kernel: 16-byte loads (K % 8 == 0), and the scalar fallback (K odd); 1000 rows of
  // 4096 take four warps per row on an H100/H200, 3000 rows two (cuda_linear_grid's K < 2048: one).
  for (DType w : kFloats)
    for (int64_t M : {1, 2, 5, 8})
      for (int64_t K : {4096, 4095})
        for (int64_t N : {1000, 3000}) {
          if (N == 3000 && M != 1 && M != 5) continue;
          const test::LinearCase c(DType::Float16, w, DType::Float16, M == 5, M, N, K, false, static_cast<uint32_t>(M * K + N));
          run_linear_case(c);
        }
}
