// KV-cache ops: fp8 e4m3 conversions against their definition, write_kv and
// copy_blocks on the CPU against plain references (with the quantization
// error of int8 / fp8 on random data reported), and the CUDA ops against the
// CPU ones (skipped, with the reason, without a GPU).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "harness.h"
#include "pagedllm/convert.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/paged_kv.h"
#include "pagedllm/tensor_ops.h"
#include "reference.h"

using namespace pagedllm;

namespace {

double fp8_value(uint8_t v) {  // by definition
  const int sign = (v & 0x80) ? -1 : 1, e = (v >> 3) & 15, m = v & 7;
  if (e == 15 && m == 7) return NAN;
  if (e == 0) return sign * std::ldexp(m, -9);
  return sign * std::ldexp(8 + m, e - 10);
}

uint8_t reference_to_fp8(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 448.0) return sign | 0x7e;
  uint8_t best = 0;
  for (uint8_t b = 1; b <= 0x7e; ++b) {
    const double d = std::fabs(fp8_value(b) - a), bd = std::fabs(fp8_value(best) - a);
    if (d < bd || (d == bd && (b % 2 == 0))) best = b;
  }
  return sign | best;
}

std::shared_ptr<Stream> cpu() { return create_stream(Device{DeviceKind::Cpu, 0}); }

struct Cache {  // one layer's K and V (+ scales), poisoned
  Cache(const KvCacheShape& s, KvCacheDType t)
      : shape(s), dtype(t), k(s.elements() * kv_dtype_size(t), 0xA5), v(k.size(), 0x5A),
        ks(kv_dtype_is_quantized(t) ? s.num_blocks * s.num_kv_heads * s.block_size : 0, -7.0f), vs(ks.size(), -9.0f) {}
  KvCacheShape shape;
  KvCacheDType dtype;
  std::vector<uint8_t> k, v;
  std::vector<float> ks, vs;
};

void write(Cache& c, const void* key, const void* value, DType in, const std::vector<int32_t>& slots, Stream& s) {
  WriteKvArgs a{key, value, in, slots.data(), static_cast<int64_t>(slots.size()), c.k.data(), c.v.data(),
                c.ks.empty() ? nullptr : c.ks.data(), c.vs.empty() ? nullptr : c.vs.data(), c.dtype, c.shape};
  write_kv(a, s);
  s.synchronize();
}

float cache_value(const Cache& c, bool value_side, int64_t at) {
  const std::vector<uint8_t>& bytes = value_side ? c.v : c.k;
  switch (c.dtype) {
    case KvCacheDType::Float32: {
      float f;
      std::memcpy(&f, bytes.data() + at * 4, 4);
      return f;
    }
    case KvCacheDType::Float16: return half_bits_to_float(reinterpret_cast<const uint16_t*>(bytes.data())[at]);
    case KvCacheDType::BFloat16: return bfloat16_bits_to_float(reinterpret_cast<const uint16_t*>(bytes.data())[at]);
    default: {
      const float scale = (value_side ? c.vs : c.ks)[at / c.shape.head_size];
      return kv_dequantize(bytes[at], scale, c.dtype);
    }
  }
}

const KvCacheDType kAllKv[] = {KvCacheDType::Float32, KvCacheDType::Float16, KvCacheDType::BFloat16, KvCacheDType::Int8,
                               KvCacheDType::Fp8E4M3};

}  // namespace

TEST(fp8_e4m3_decodes_every_pattern_by_definition) {
  for (int b = 0; b < 256; ++b) {
    const double want = fp8_value(static_cast<uint8_t>(b));
    const float got = fp8_e4m3_to_float(static_cast<uint8_t>(b));
    if (std::isnan(want)) CHECK(std::isnan(got), "bits ", b);
    else CHECK(static_cast<double>(got) == want, "bits ", b, " got ", got, " want ", want);
  }
}

TEST(fp8_e4m3_rounds_to_nearest_even_and_saturates) {
  std::vector<float> xs = test::interesting_floats(20000, 9);
  for (int b = 0; b < 0x7e; ++b) {  // every midpoint between neighbours, and one float step either side
    const float mid = static_cast<float>((fp8_value(b) + fp8_value(b + 1)) / 2);
    xs.push_back(mid), xs.push_back(std::nextafter(mid, 0.0f)), xs.push_back(std::nextafter(mid, 1e9f));
    xs.push_back(-mid);
  }
  for (float x : xs) {
    const uint8_t got = float_to_fp8_e4m3(x);
    if (std::isnan(x)) {
      CHECK(std::isnan(fp8_e4m3_to_float(got)));
      continue;
    }
    CHECK(got == reference_to_fp8(x), "x=", x, " got ", int(got), " want ", int(reference_to_fp8(x)));
  }
  CHECK(float_to_fp8_e4m3(INFINITY) == 0x7e && float_to_fp8_e4m3(-1e30f) == 0xfe);
}

TEST(write_kv_cpu_stores_every_dtype_and_skips_minus_one) {
  const KvCacheShape shape{6, 2, 4, 64};  // blocks, kv heads, block size, head size
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const std::vector<int32_t> slots = {5, -1, 0, 23, 9};  // token 1 is skipped
  const int64_t n = static_cast<int64_t>(slots.size()) * shape.num_kv_heads * shape.head_size;
  std::vector<float> key(n), value(n);
  for (auto& x : key) x = normal(rng);
  for (auto& x : value) x = normal(rng);
  auto s = cpu();
  for (KvCacheDType t : kAllKv) {
    for (DType in : {DType::Float32, DType::Float16, DType::BFloat16}) {
      // The input in its dtype, and the float values the op sees.
      std::vector<uint8_t> kin(n * dtype_size(in)), vin(n * dtype_size(in));
      cast(key.data(), DType::Float32, kin.data(), in, n, *s);
      cast(value.data(), DType::Float32, vin.data(), in, n, *s);
      std::vector<float> kf(n), vf(n);
      cast(kin.data(), in, kf.data(), DType::Float32, n, *s);
      cast(vin.data(), in, vf.data(), DType::Float32, n, *s);
      s->synchronize();
      Cache c(shape, t);
      const Cache untouched = c;
      write(c, kin.data(), vin.data(), in, slots, *s);
      double err2 = 0, ref2 = 0;
      std::vector<bool> written(shape.num_blocks * shape.block_size, false);
      for (size_t tok = 0; tok < slots.size(); ++tok) {
        if (slots[tok] < 0) continue;
        written[slots[tok]] = true;
        const int64_t block = slots[tok] / shape.block_size, offset = slots[tok] % shape.block_size;
        for (int64_t h = 0; h < shape.num_kv_heads; ++h) {
          const int64_t at = shape.index(block, h, offset);
          float kmax = 0, vmax = 0;
          for (int64_t d = 0; d < shape.head_size; ++d) {
            const int64_t i = (tok * shape.num_kv_heads + h) * shape.head_size + d;
            kmax = std::max(kmax, std::fabs(kf[i])), vmax = std::max(vmax, std::fabs(vf[i]));
          }
          for (int64_t d = 0; d < shape.head_size; ++d) {
            const int64_t i = (tok * shape.num_kv_heads + h) * shape.head_size + d;
            for (int side = 0; side < 2; ++side) {
              const float x = side ? vf[i] : kf[i], got = cache_value(c, side, at + d);
              if (!kv_dtype_is_quantized(t)) {
                // Float caches hold the input rounded once to the cache dtype.
                const float want = t == KvCacheDType::Float32 ? x
                                   : t == KvCacheDType::Float16 ? static_cast<float>(test::half_value(test::reference_to_half(x)))
                                                                : static_cast<float>(test::bfloat16_value(test::reference_to_bfloat16(x)));
                CHECK(got == want, kv_dtype_name(t), " <- ", dtype_name(in), " token ", tok, " head ", h, " d ", d, ": ", got, " vs ", want);
              } else {
                // int8: within half a step of the scale; fp8: within half an ulp of 3 mantissa bits (relative 2^-4).
                const float amax = side ? vmax : kmax;
                const double bound = t == KvCacheDType::Int8 ? amax / 127.0 * 0.5001 : std::fabs(x) / 16.0 + amax / 448.0 * std::ldexp(1.0, -9);
                CHECK(std::fabs(got - x) <= bound, kv_dtype_name(t), " token ", tok, " head ", h, " d ", d, ": ", got, " vs ", x);
                err2 += (got - x) * (got - x), ref2 += static_cast<double>(x) * x;
              }
            }
          }
        }
      }
      // Slots not written (and the skipped token's nowhere) keep their poison.
      for (int64_t slot = 0; slot < shape.num_blocks * shape.block_size; ++slot) {
        if (written[slot]) continue;
        const int64_t block = slot / shape.block_size, offset = slot % shape.block_size;
        for (int64_t h = 0; h < shape.num_kv_heads; ++h) {
          const int64_t at = shape.index(block, h, offset) * kv_dtype_size(t);
          CHECK(std::memcmp(c.k.data() + at, untouched.k.data() + at, shape.head_size * kv_dtype_size(t)) == 0, "slot ", slot);
          CHECK(std::memcmp(c.v.data() + at, untouched.v.data() + at, shape.head_size * kv_dtype_size(t)) == 0, "slot ", slot);
        }
      }
      if (kv_dtype_is_quantized(t) && in == DType::Float32)
        std::printf("  %s KV reconstruction on N(0, 2) data: relative RMS error %.4f\n", kv_dtype_name(t), std::sqrt(err2 / ref2));
    }
  }
}

TEST(write_kv_cpu_reports_a_slot_outside_the_cache) {
  const KvCacheShape shape{2, 1, 4, 64};
  Cache c(shape, KvCacheDType::Float32);
  std::vector<float> kv(64, 1.0f);
  auto s = cpu();
  bool threw = false;
  try {
    write(c, kv.data(), kv.data(), DType::Float32, {8}, *s);
  } catch (const Error& e) {
    threw = e.code() == ErrorCode::InvalidArgument;
  }
  CHECK(threw);
}

TEST(copy_blocks_cpu_copies_whole_blocks_with_their_scales) {
  const KvCacheShape shape{5, 2, 4, 64};
  for (KvCacheDType t : kAllKv) {
    Cache c(shape, t);
    for (size_t i = 0; i < c.k.size(); ++i) c.k[i] = static_cast<uint8_t>(i * 7);
    for (size_t i = 0; i < c.ks.size(); ++i) c.ks[i] = static_cast<float>(i);
    const Cache before = c;
    const std::vector<int32_t> pairs = {1, 3, 0, 4};
    auto s = cpu();
    copy_blocks(CopyBlocksArgs{c.k.data(), c.ks.empty() ? nullptr : c.ks.data(), t, shape, pairs.data(), 2}, *s);
    s->synchronize();
    const int64_t bb = shape.block_elements() * kv_dtype_size(t), sb = shape.num_kv_heads * shape.block_size;
    auto block = [&](const Cache& x, int b) { return std::vector<uint8_t>(x.k.begin() + b * bb, x.k.begin() + (b + 1) * bb); };
    CHECK(block(c, 3) == block(before, 1) && block(c, 4) == block(before, 0), kv_dtype_name(t));
    CHECK(block(c, 0) == block(before, 0) && block(c, 1) == block(before, 1) && block(c, 2) == block(before, 2));
    if (!c.ks.empty()) CHECK(c.ks[3 * sb] == before.ks[1 * sb] && c.ks[4 * sb + 5] == before.ks[5]);
    bool threw = false;
    const std::vector<int32_t> bad = {0, 5};
    try {
      copy_blocks(CopyBlocksArgs{c.k.data(), nullptr, t, shape, bad.data(), 1}, *s);
    } catch (const Error& e) {
      threw = e.code() == ErrorCode::InvalidArgument;
    }
    CHECK(threw, "a block outside the cache must be rejected");
  }
}

TEST(cuda_cache_ops_match_cpu_bit_for_bit) {
  static const CudaInfo info = cuda_info();
  if (!info.available) SKIP("no CUDA device: ", info.reason);
  const KvCacheShape shape{40, 8, 16, 128};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<int32_t> slots;
  for (int i = 0; i < 300; ++i) slots.push_back(i % 7 == 3 ? -1 : static_cast<int32_t>(rng() % (40 * 16)));
  const int64_t n = static_cast<int64_t>(slots.size()) * shape.num_kv_heads * shape.head_size;
  std::vector<float> key(n), value(n);
  for (auto& x : key) x = normal(rng);
  for (auto& x : value) x = normal(rng);
  auto host = cpu();
  auto gpu = default_stream(Device{DeviceKind::Cuda, 0});
  MemoryResourcePtr mr = default_memory_resource(gpu->device());
  std::vector<std::pair<void*, size_t>> live;
  auto dev = [&](const void* data, size_t bytes) {
    void* p = mr->allocate(bytes, *gpu);
    if (data) upload(data, p, bytes, *gpu);
    live.push_back({p, bytes});
    return p;
  };
  for (KvCacheDType t : kAllKv) {
    for (DType in : {DType::Float32, DType::Float16, DType::BFloat16}) {
      std::vector<uint8_t> kin(n * dtype_size(in)), vin(n * dtype_size(in));
      cast(key.data(), DType::Float32, kin.data(), in, n, *host);
      cast(value.data(), DType::Float32, vin.data(), in, n, *host);
      host->synchronize();
      Cache want(shape, t);
      write(want, kin.data(), vin.data(), in, slots, *host);
      Cache got(shape, t);  // same poison, uploaded
      void* dk = dev(kin.data(), kin.size());
      void* dv = dev(vin.data(), vin.size());
      void* ds = dev(slots.data(), slots.size() * 4);
      void* dkc = dev(got.k.data(), got.k.size());
      void* dvc = dev(got.v.data(), got.v.size());
      void* dks = got.ks.empty() ? nullptr : dev(got.ks.data(), got.ks.size() * 4);
      void* dvs = got.vs.empty() ? nullptr : dev(got.vs.data(), got.vs.size() * 4);
      write_kv(WriteKvArgs{dk, dv, in, static_cast<const int32_t*>(ds), static_cast<int64_t>(slots.size()), dkc, dvc,
                           static_cast<float*>(dks), static_cast<float*>(dvs), t, shape},
               *gpu);
      download(dkc, got.k.data(), got.k.size(), *gpu, [] {});
      download(dvc, got.v.data(), got.v.size(), *gpu, [] {});
      if (dks) download(dks, got.ks.data(), got.ks.size() * 4, *gpu, [] {});
      if (dvs) download(dvs, got.vs.data(), got.vs.size() * 4, *gpu, [] {});
      gpu->synchronize();
      // Later tokens with a repeated slot win on the CPU (in order); on the GPU the order of
      // blocks is unspecified, so only slots written once are compared.
      std::vector<int> writes(shape.num_blocks * shape.block_size, 0);
      for (int32_t slot : slots) if (slot >= 0) ++writes[slot];
      for (int64_t slot = 0; slot < static_cast<int64_t>(writes.size()); ++slot) {
        if (writes[slot] > 1) continue;
        for (int64_t h = 0; h < shape.num_kv_heads; ++h) {
          const int64_t at = shape.index(slot / shape.block_size, h, slot % shape.block_size);
          const size_t b = at * kv_dtype_size(t), len = shape.head_size * kv_dtype_size(t);
          CHECK(std::memcmp(got.k.data() + b, want.k.data() + b, len) == 0, kv_dtype_name(t), " <- ", dtype_name(in), " K slot ", slot, " head ", h);
          CHECK(std::memcmp(got.v.data() + b, want.v.data() + b, len) == 0, kv_dtype_name(t), " <- ", dtype_name(in), " V slot ", slot, " head ", h);
          if (!got.ks.empty()) CHECK(got.ks[at / shape.head_size] == want.ks[at / shape.head_size] && got.vs[at / shape.head_size] == want.vs[at / shape.head_size]);
        }
      }
      for (auto& [p, bytes] : live) mr->deallocate(p, bytes, *gpu);
      live.clear();
    }
  }
}
