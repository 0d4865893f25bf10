// CPU tensor ops against independent references: casts (every float16 and
// bfloat16 pattern, random and special floats, integer saturation), fill and
// strided copy.
#include <cmath>
#include <cstring>
#include <memory>

#include "harness.h"
#include "pagedllm/convert.h"
#include "pagedllm/stream.h"
#include "pagedllm/tensor_ops.h"
#include "reference.h"

using namespace pagedllm;

namespace {
std::shared_ptr<Stream> cpu_stream() { return create_stream(Device{DeviceKind::Cpu, 0}); }
}  // namespace

TEST(half_to_float_is_exact_for_every_pattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const double want = test::half_value(static_cast<uint16_t>(b));
    const float got = half_bits_to_float(static_cast<uint16_t>(b));
    if (std::isnan(want)) CHECK(std::isnan(got), "bits ", b);
    else CHECK(static_cast<double>(got) == want && std::signbit(got) == std::signbit(want), "bits ", b, " got ", got, " want ", want);
  }
}

TEST(bfloat16_to_float_is_exact_for_every_pattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    uint32_t u;
    const float got = bfloat16_bits_to_float(static_cast<uint16_t>(b));
    std::memcpy(&u, &got, 4);
    CHECK(u == (b << 16), "bits ", b);
  }
}

TEST(float_to_half_rounds_to_nearest_even) {
  for (float x : test::interesting_floats(200000, 1)) {
    const uint16_t got = float_to_half_bits(x);
    if (std::isnan(x)) {
      CHECK(std::isnan(half_bits_to_float(got)), "NaN must stay NaN");
      CHECK((got >> 15) == (std::signbit(x) ? 1 : 0), "NaN sign");
      continue;
    }
    const uint16_t want = test::reference_to_half(x);
    CHECK(got == want, "x=", x, " got 0x", std::hex, got, " want 0x", want);
  }
  // Every half round-trips through float exactly.
  for (uint32_t b = 0; b < 65536; ++b) {
    if ((b & 0x7c00) == 0x7c00 && (b & 0x3ff)) continue;
    CHECK(float_to_half_bits(half_bits_to_float(static_cast<uint16_t>(b))) == b, "bits ", b);
  }
}

TEST(float_to_bfloat16_rounds_to_nearest_even) {
  for (float x : test::interesting_floats(200000, 2)) {
    const uint16_t got = float_to_bfloat16_bits(x);
    if (std::isnan(x)) {
      CHECK(std::isnan(bfloat16_bits_to_float(got)), "NaN must stay NaN");
      continue;
    }
    const uint16_t want = test::reference_to_bfloat16(x);
    CHECK(got == want, "x=", x, " got 0x", std::hex, got, " want 0x", want);
  }
}

TEST(cast_cpu_matches_scalar_conversions_for_every_dtype_pair) {
  auto stream = cpu_stream();
  const std::vector<float> values = test::interesting_floats(2000, 3);
  const size_t n = values.size();
  for (int s = 0; s < kNumDTypes; ++s) {
    for (int d = 0; d < kNumDTypes; ++d) {
      const DType sd = static_cast<DType>(s), dd = static_cast<DType>(d);
      std::vector<unsigned char> src(n * dtype_size(sd)), dst(n * dtype_size(dd), 0xAB), want(n * dtype_size(dd));
      // Source: the float values converted to the source dtype.
      PAGEDLLM_DISPATCH_DTYPE(sd, S, {
        for (size_t i = 0; i < n; ++i) reinterpret_cast<S*>(src.data())[i] = convert<S>(values[i]);
        PAGEDLLM_DISPATCH_DTYPE(dd, D, {
          for (size_t i = 0; i < n; ++i)
            reinterpret_cast<D*>(want.data())[i] = convert<D>(reinterpret_cast<const S*>(src.data())[i]);
        });
      });
      cast(src.data(), sd, dst.data(), dd, n, *stream);
      stream->synchronize();
      CHECK(std::memcmp(dst.data(), want.data(), dst.size()) == 0, dtype_name(sd), " -> ", dtype_name(dd));
    }
  }
}

TEST(float_to_integer_casts_truncate_and_saturate) {
  CHECK(convert<int32_t>(2.9f) == 2);
  CHECK(convert<int32_t>(-2.9f) == -2);
  CHECK(convert<int32_t>(3e9f) == 2147483647);
  CHECK(convert<int32_t>(-3e9f) == -2147483647 - 1);
  CHECK(convert<int32_t>(NAN) == 0);
  CHECK(convert<int8_t>(200.0f) == 127);
  CHECK(convert<int8_t>(-200.0f) == -128);
  CHECK(convert<uint8_t>(-1.0f) == 0);
  CHECK(convert<uint8_t>(300) == 255);
  CHECK(convert<int8_t>(int32_t(-129)) == -128);
  CHECK(to_float(convert<half_t>(int32_t(70000))) == INFINITY);
  CHECK(to_float(convert<bfloat16_t>(int32_t(-3))) == -3.0f);
}

TEST(fill_cpu_writes_every_element) {
  auto stream = cpu_stream();
  std::vector<uint16_t> h(1001, 0);
  fill(h.data(), DType::Float16, h.size(), -1.5, *stream);
  std::vector<int8_t> i8(17, 0);
  fill(i8.data(), DType::Int8, i8.size(), 1e9, *stream);
  stream->synchronize();
  for (uint16_t v : h) CHECK(v == float_to_half_bits(-1.5f));
  for (int8_t v : i8) CHECK(v == 127);
}

TEST(copy_strided_cpu_matches_naive_gather) {
  auto stream = cpu_stream();
  // src: a [4, 5, 6] float tensor; views: permuted, sliced, broadcast (stride 0), 0-d, empty.
  std::vector<float> src(4 * 5 * 6);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i);
  struct View {
    std::vector<int64_t> shape, strides;
    int64_t offset;
  };
  const std::vector<View> views = {
      {{4, 5, 6}, {30, 6, 1}, 0}, {{6, 5, 4}, {1, 6, 30}, 0}, {{2, 3, 2}, {30, 6, 2}, 7},
      {{3, 4}, {0, 1}, 5},        {{}, {}, 11},               {{2, 0, 3}, {30, 6, 1}, 0},
      {{1, 1, 1, 1, 1, 1, 1, 5}, {0, 0, 0, 0, 0, 0, 0, 6}, 1}};
  for (const View& v : views) {
    StridedLayout layout;
    layout.ndim = static_cast<int>(v.shape.size());
    size_t total = 1;
    for (int d = 0; d < layout.ndim; ++d) {
      layout.shape[d] = v.shape[d];
      layout.strides[d] = v.strides[d];
      total *= v.shape[d];
    }
    std::vector<float> got(total + 1, -1.0f), want(total + 1, -1.0f);
    for (size_t i = 0; i < total; ++i) {  // naive: decompose every output index
      size_t rest = i;
      int64_t offset = v.offset;
      for (int d = layout.ndim - 1; d >= 0; --d) {
        offset += static_cast<int64_t>(rest % v.shape[d]) * v.strides[d];
        rest /= v.shape[d];
      }
      want[i] = src[offset];
    }
    copy_strided(src.data() + v.offset, layout, sizeof(float), got.data(), *stream);
    stream->synchronize();
    for (size_t i = 0; i <= total; ++i) CHECK(got[i] == want[i], "ndim ", layout.ndim, " element ", i);
  }
}
