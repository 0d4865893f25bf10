// KV-cache ops: fp8 e4m3 conversions against their definition, write_kv and
// copy_blocks and swap_blocks on the CPU against plain references (with the quantization
// error of int8 / fp8 on random data reported), and the CUDA ops against the
// CPU ones (skipped, with the reason, without a GPU).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <chrono>
#include <random>
#include <string>
#include <thread>
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

namespace {

// Two caches' worth of regions (K, V and scales of two layers), every byte distinct.
struct SwapSet {
  SwapSet(int64_t src_blocks, int64_t dst_blocks, const std::vector<int64_t>& block_bytes) : block_bytes(block_bytes) {
    for (size_t r = 0; r < block_bytes.size(); ++r) {
      src.emplace_back(src_blocks * block_bytes[r]);
      dst.emplace_back(dst_blocks * block_bytes[r], static_cast<uint8_t>(0xEE));
      for (size_t i = 0; i < src[r].size(); ++i) src[r][i] = static_cast<uint8_t>(i * 31 + r * 7 + i / 251);
    }
  }
  std::vector<SwapRegion> regions() {
    std::vector<SwapRegion> out;
    for (size_t r = 0; r < src.size(); ++r) out.push_back({src[r].data(), dst[r].data(), block_bytes[r]});
    return out;
  }
  // dst as the pairs say, by a plain loop over single blocks.
  std::vector<std::vector<uint8_t>> expected(const std::vector<int32_t>& pairs) const {
    std::vector<std::vector<uint8_t>> want;
    for (size_t r = 0; r < src.size(); ++r) {
      want.emplace_back(dst[r].size(), static_cast<uint8_t>(0xEE));
      for (size_t i = 0; i < pairs.size(); i += 2)
        std::memcpy(want[r].data() + pairs[i + 1] * block_bytes[r], src[r].data() + pairs[i] * block_bytes[r], block_bytes[r]);
    }
    return want;
  }
  std::vector<int64_t> block_bytes;
  std::vector<std::vector<uint8_t>> src, dst;
};

const std::vector<int64_t> kSwapBlockBytes = {2 * 16 * 64 * 2, 2 * 16 * 64 * 2, 2 * 16 * 4, 2 * 16 * 4, 4096, 4096};

// "none", or the error's code and message.
std::string swap_error(const std::vector<SwapRegion>& regions, const std::vector<int32_t>& pairs, int64_t src_blocks,
                       int64_t dst_blocks) {
  auto s = cpu();
  try {
    swap_blocks(SwapBlocksArgs{regions.data(), static_cast<int64_t>(regions.size()), pairs.data(),
                               static_cast<int64_t>(pairs.size() / 2), src_blocks, dst_blocks},
                *s, *s);
  } catch (const Error& e) {
    return std::string(error_code_name(e.code())) + ": " + e.what();
  }
  return "none";
}

}  // namespace

TEST(swap_blocks_runs_merge_consecutive_pairs_only) {
  const std::vector<int32_t> pairs = {3, 0, 4, 1, 5, 2, 9, 3, 8, 4, 0, 7, 1, 8};
  SwapSet set(10, 10, {16});
  const std::vector<SwapRegion> regions = set.regions();
  const std::vector<BlockRun> runs = swap_block_runs(SwapBlocksArgs{regions.data(), 1, pairs.data(), 7, 10, 10});
  CHECK(runs.size() == 4, "runs: ", runs.size());
  CHECK(runs[0].src == 3 && runs[0].dst == 0 && runs[0].count == 3);
  CHECK(runs[1].src == 9 && runs[1].dst == 3 && runs[1].count == 1);  // 9 -> 3 then 8 -> 4: not consecutive
  CHECK(runs[2].src == 8 && runs[2].dst == 4 && runs[2].count == 1);
  CHECK(runs[3].src == 0 && runs[3].dst == 7 && runs[3].count == 2);
}

TEST(swap_blocks_cpu_copies_every_region_between_streams_in_order) {
  // Swap out (10 blocks -> 6), then back in elsewhere (6 -> 10), on two streams, as the Engine does.
  SwapSet out(10, 6, kSwapBlockBytes);
  const std::vector<int32_t> out_pairs = {7, 2, 8, 3, 9, 4, 1, 0, 4, 5};
  const auto want = out.expected(out_pairs);
  const std::vector<std::vector<uint8_t>> src_before = out.src;
  auto device = cpu(), host = cpu();
  // Earlier work on the source stream must land before the copy reads: the last byte of block 7 of
  // region 0 is written by a slow task queued first.
  uint8_t* late = out.src[0].data() + 8 * kSwapBlockBytes[0] - 1;
  const uint8_t late_value = static_cast<uint8_t>(~*late);
  device->enqueue_host([late, late_value] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    *late = late_value;
  });
  std::vector<SwapRegion> regions = out.regions();
  swap_blocks(SwapBlocksArgs{regions.data(), static_cast<int64_t>(regions.size()), out_pairs.data(), 5, 10, 6}, *device, *host);
  // Later work on the source stream must not reach the copy: overwrite the sources after it.
  std::vector<std::vector<uint8_t>>* sources = &out.src;
  device->enqueue_host([sources] { for (auto& v : *sources) std::fill(v.begin(), v.end(), uint8_t{0}); });
  host->synchronize();
  device->synchronize();
  auto want_now = want;
  want_now[0][2 * kSwapBlockBytes[0] + kSwapBlockBytes[0] - 1] = late_value;  // block 7 -> 2
  for (size_t r = 0; r < want.size(); ++r) CHECK(out.dst[r] == want_now[r], "region ", r);

  // Back in, 6 -> 10: host blocks 2..4 to device 5..7, 0 to 9.
  SwapSet in(6, 10, kSwapBlockBytes);
  in.src = out.dst;
  const std::vector<int32_t> in_pairs = {2, 5, 3, 6, 4, 7, 0, 9};
  const auto want_in = in.expected(in_pairs);
  regions = in.regions();
  swap_blocks(SwapBlocksArgs{regions.data(), static_cast<int64_t>(regions.size()), in_pairs.data(), 4, 6, 10}, *host, *device);
  device->synchronize();
  for (size_t r = 0; r < want_in.size(); ++r) CHECK(in.dst[r] == want_in[r], "region ", r, " back in");
  CHECK(src_before[1] != out.src[1], "the sources were overwritten after the copy, as queued");
}

TEST(swap_blocks_rejects_bad_pairs_and_regions) {
  SwapSet set(4, 4, {64, 8});
  auto rejected = [](const std::string& error, const char* what) {
    return error.rfind("ERR_INVALID_ARGUMENT: ", 0) == 0 && error.find(what) != std::string::npos;
  };
  CHECK(swap_error(set.regions(), {0, 1, 3, 2}, 4, 4) == "none");
  CHECK(rejected(swap_error(set.regions(), {4, 1}, 4, 4), "source block 4 is outside"));
  CHECK(rejected(swap_error(set.regions(), {-1, 1}, 4, 4), "source block -1 is outside"));
  CHECK(rejected(swap_error(set.regions(), {0, 4}, 4, 4), "destination block 4 is outside"));
  CHECK(rejected(swap_error(set.regions(), {0, 2, 1, 2}, 4, 4), "destination block 2 appears in more than one pair"));
  std::vector<SwapRegion> regions = set.regions();
  regions[0].dst = set.src[0].data() + 64;  // the destination is the source, one block on
  CHECK(rejected(swap_error(regions, {0, 1}, 4, 3), "overlap"));
  regions = set.regions();
  regions[1].block_bytes = 0;
  CHECK(rejected(swap_error(regions, {0, 1}, 4, 4), "positive block size"));
}

TEST(cuda_swap_blocks_to_and_from_pinned_and_pageable_host_memory) {
  static const CudaInfo info = cuda_info();
  if (!info.available) SKIP("no CUDA device: ", info.reason);
  auto gpu = default_stream(Device{DeviceKind::Cuda, 0});
  auto host = cpu();
  MemoryResourcePtr device_memory = default_memory_resource(gpu->device());
  MemoryResourcePtr pinned = make_pinned_host_resource();
  const int64_t device_blocks = 24, host_blocks = 9;
  const std::vector<int32_t> out_pairs = {20, 0, 21, 1, 22, 2, 5, 8, 13, 4};
  const std::vector<int32_t> in_pairs = {0, 10, 1, 11, 2, 12, 8, 3, 4, 23};
  for (bool use_pinned : {true, false}) {
    // The reference: the same swaps between two CPU caches.
    SwapSet ref_out(device_blocks, host_blocks, kSwapBlockBytes);
    const auto want_host = ref_out.expected(out_pairs);
    SwapSet ref_in(host_blocks, device_blocks, kSwapBlockBytes);
    ref_in.src = want_host;
    ref_in.dst = ref_out.src;
    std::vector<std::vector<uint8_t>> want_device = ref_in.dst;
    for (size_t r = 0; r < kSwapBlockBytes.size(); ++r)
      for (size_t i = 0; i < in_pairs.size(); i += 2)
        std::memcpy(want_device[r].data() + in_pairs[i + 1] * kSwapBlockBytes[r], want_host[r].data() + in_pairs[i] * kSwapBlockBytes[r], kSwapBlockBytes[r]);
    // Device caches hold ref_out.src; host caches start as 0xEE, pinned or pageable.
    std::vector<void*> dev, hst;
    std::vector<std::vector<uint8_t>> pageable(kSwapBlockBytes.size());
    std::vector<SwapRegion> out_regions, in_regions;
    for (size_t r = 0; r < kSwapBlockBytes.size(); ++r) {
      const size_t dbytes = device_blocks * kSwapBlockBytes[r], hbytes = host_blocks * kSwapBlockBytes[r];
      dev.push_back(device_memory->allocate(dbytes, *gpu));
      upload(ref_out.src[r].data(), dev[r], dbytes, *gpu);
      if (use_pinned) hst.push_back(pinned->allocate(hbytes, *host));
      else hst.push_back((pageable[r] = std::vector<uint8_t>(hbytes)).data());
      std::memset(hst[r], 0xEE, hbytes);
      out_regions.push_back({dev[r], hst[r], kSwapBlockBytes[r]});
      in_regions.push_back({hst[r], dev[r], kSwapBlockBytes[r]});
    }
    const int64_t n = static_cast<int64_t>(kSwapBlockBytes.size());
    swap_blocks(SwapBlocksArgs{out_regions.data(), n, out_pairs.data(), 5, device_blocks, host_blocks}, *gpu, *host);
    host->synchronize();
    for (size_t r = 0; r < kSwapBlockBytes.size(); ++r)
      CHECK(std::memcmp(hst[r], want_host[r].data(), want_host[r].size()) == 0, use_pinned ? "pinned" : "pageable", " swap out, region ", r);
    swap_blocks(SwapBlocksArgs{in_regions.data(), n, in_pairs.data(), 5, host_blocks, device_blocks}, *host, *gpu);
    for (size_t r = 0; r < kSwapBlockBytes.size(); ++r) {
      std::vector<uint8_t> got(want_device[r].size());
      download(dev[r], got.data(), got.size(), *gpu, [] {});
      gpu->synchronize();
      CHECK(got == want_device[r], use_pinned ? "pinned" : "pageable", " swap in, region ", r);
    }
    for (size_t r = 0; r < kSwapBlockBytes.size(); ++r) {
      device_memory->deallocate(dev[r], device_blocks * kSwapBlockBytes[r], *gpu);
      if (use_pinned) pinned->deallocate(hst[r], host_blocks * kSwapBlockBytes[r], *host);
    }
    gpu->synchronize();
    host->synchronize();
  }
}
