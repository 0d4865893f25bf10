// paged_attention_decode_cuda: decode attention (q_len ≤ 1 per sequence) over
// the paged KV cache of paged_kv.h. Semantics: include/pagedllm/paged_attention.h;
// the CPU twin and reference: cpu/paged_attention.cpp; tests:
// test/native/test_attention_decode_cuda.cpp.
//
// Two kernels: a tensor-core kernel (paged_attention_decode_tc_kernel: sm_80+, float16 / bfloat16
// q with a cache of the same dtype, no alibi / softcap; see its section below) and the SIMT kernel
// described here, which takes everything else (float32, int8 / fp8 caches, mixed dtypes, alibi,
// softcap, sm_75). PagedAttentionArgs::decode_kernel forces either (tests, benchmarks). Both share
// the grid, the cp.async tile ring, the block-table staging, split-K and the merge pass.
// H200, head 128, block 16, fp16 (fraction of copy bandwidth): 64 × 1024 MHA-32 SIMT 617 µs (41%)
// → tensor cores 282 µs (91%); 64 × 4096 GQA 32/4 945 µs (13%) → 151 µs (85%, 1 partition);
// 1 × 16384 MHA-32 268 µs (24%) → 89 µs (71%, 8 partitions).
//
// Design (SIMT kernel)
//  - One CTA (128 threads) per (sequence, KV head, partition) computes every
//    query head of that KV head's GQA group (up to kMaxHeads per CTA: 32 for
//    head sizes 64..128, 16 for 256; larger groups are split over "head
//    chunks" that sit next to each other in the grid so their K/V reads meet
//    in L2). Each K/V byte is read from HBM once per CTA, not once per query
//    head.
//  - Decode attention is a stream over K/V: head 128, fp16, block 16 is 512
//    bytes per (token, KV head) against 2·group·128 FMAs, so MHA is purely
//    bandwidth-bound (H100: ≈3 TB/s copy) and GQA 8 needs ≈30% of the fp32
//    FMA peak at 80% of that bandwidth. Hence: K/V tiles of T tokens (T ·
//    head_size · element ≤ 8 KiB each for K and V) stream into shared memory
//    with 16-byte cp.async (sm_80+; plain loads on sm_75) through a 2- or
//    3-stage ring, so 1-2 tiles (16-32 KiB) per CTA are in flight while one
//    is computed. HND makes one head of one block a contiguous run, so
//    consecutive threads copy consecutive 16-byte chunks (coalesced whatever
//    head_size and dtype). Smem rows are padded to an odd number of 16-byte
//    units, so reading one token per lane is bank-conflict free.
//  - Logits: thread (token t, head residue r) of the tile dots its token's K
//    row (converted to float once per 16-byte chunk) with q of the heads
//    [r·hpq, (r+1)·hpq), hpq = ceil(heads / (128 / T)) (q of the group lives in
//    shared memory as float, pre-multiplied by scale; broadcast reads). The
//    T lanes of one head residue form a warp segment, so the online-softmax
//    max and sum are segment shuffles, with no extra barrier. Per tile: two
//    barriers (tile landed; logits done).
//  - P·V: thread (4 output dims, head residue, token slice) accumulates in
//    float32 registers; token slices (used when the group is smaller than
//    the rows of threads, e.g. MHA) are summed through shared memory once at
//    the end of the partition.
//  - Quantized caches: K and V bytes are converted raw and the per-(token,
//    head) scale is applied once per token (to the logit for K, to the V row
//    for V); fp8 e4m3 is converted with a bit move to float16 (value / 256,
//    the 256 folded into the scale).
//  - Split-K: partitions are multiples of 256 tokens counted from the
//    window's first 256-aligned token; each writes its max logit, exp-sum and
//    normalised partial output (float32) to a stream-ordered workspace, and
//    merge_partitions_kernel combines them by log-sum-exp. With one partition
//    the kernel writes `out` directly (no workspace, one launch). The choice
//    is made by choose_partitions() below.
//  - Block-table entries are staged in shared memory per 2048-token chunk.
//    Tokens that are masked (outside the window, at or past seq_len) or whose
//    block id is outside [0, num_blocks) are never read: their K/V rows are
//    zero-filled by cp.async and their logits are -inf.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda_stream.h"
#include "mma.cuh"
#include "pagedllm/convert.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/paged_attention.h"
#include "pagedllm/paged_kv.h"

namespace pagedllm {

namespace {

constexpr int kThreads = 128;            // per decode CTA (4 warps)
constexpr int kMergeThreads = 128;       // per merge CTA
constexpr int kPartitionGranule = 256;   // tokens; partition sizes are multiples of it
constexpr int kMaxPartitions = 1024;
constexpr int kChunkTokens = 2048;       // tokens whose block-table entries are staged at once
constexpr int kTableEntries = kChunkTokens / 8 + 1;  // block size ≥ 8; +1: a chunk may start mid-block
constexpr int kMaxHeadsPerThreadPV = 8;  // float4 accumulators per P·V thread (at most)
constexpr int kSaturatingCtasPerSm = 2;  // CTAs per SM that keep its share of HBM busy (see choose_partitions)
// 4 resident CTAs × 128 threads × ≤128 registers fill the 64K-register file (sm_75..sm_90); every
// instantiation fits in 128 registers without spills (checked with -Xptxas -v).
constexpr int kMinCtasPerSm = 4;

__host__ __device__ constexpr int pow2_floor(int x) {
  int p = 1;
  while (p * 2 <= x) p *= 2;
  return p;
}
__host__ __device__ constexpr int round_up4(int x) { return (x + 3) / 4 * 4; }
__host__ __device__ constexpr int cmin(int a, int b) { return a < b ? a : b; }
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }

// Raw converted value × raw_scale × stored scale = dequantized value (fp8 is converted as value / 256).
template <KvCacheDType KV>
__host__ __device__ constexpr float raw_scale() {
  return KV == KvCacheDType::Fp8E4M3 ? 256.0f : 1.0f;
}

template <KvCacheDType KV>
__host__ __device__ constexpr int kv_element_bytes() {
  return KV == KvCacheDType::Float32 ? 4 : (KV == KvCacheDType::Float16 || KV == KvCacheDType::BFloat16) ? 2 : 1;
}

// Compile-time shape of one instantiation (head_size D, cache dtype KV).
template <int D, KvCacheDType KV>
struct DecodeConfig {
  static constexpr int kElementBytes = kv_element_bytes<KV>();
  static constexpr bool kQuantized = KV == KvCacheDType::Int8 || KV == KvCacheDType::Fp8E4M3;
  static constexpr int kRowBytes = D * kElementBytes;  // one token of one KV head
  static constexpr int kChunksPerRow = kRowBytes / 16;
  static constexpr int kPitch = kRowBytes + (kChunksPerRow % 2 ? 32 : 16);  // odd number of 16-byte units
  static constexpr int kTile = cmin(32, cmax(8, pow2_floor(8192 / kRowBytes)));  // tokens per tile
  static constexpr int kHeadResidues = kThreads / kTile;  // logits: head residues per tile
  static constexpr int kVecK = 16 / kElementBytes;        // K elements per 16-byte chunk
  static constexpr int kDVecs = D / 4;                    // P·V: 4 output dims per thread
  static constexpr int kRows = kThreads / kDVecs;         // P·V rows of threads
  static constexpr int kMaxHeads = cmin(32, kMaxHeadsPerThreadPV * kRows);  // query heads per CTA
  static constexpr int kMaxHeadsQK = (kMaxHeads + kHeadResidues - 1) / kHeadResidues;  // per logits thread
  static constexpr int kMaxHeadsPV = (kMaxHeads + kRows - 1) / kRows;                   // per P·V thread
  static_assert(kRowBytes % 16 == 0, "a token row must be whole 16-byte chunks");
  static_assert(kTile % (2 * pow2_floor(kRows)) == 0, "token slices of P·V must be whole float2 pairs");
  static_assert(32 % kTile == 0, "the lanes of one head residue must be a warp segment");
};

// Byte offsets of the dynamic shared memory of one CTA (all 16-byte aligned).
struct DecodeSmem {
  int kv;      // [stages][K, V][kTile][kPitch] bytes: the tile ring
  int scales;  // [stages][K, V][kTile] float (quantized caches)
  int q;       // [q_rows][D + 4] float: scale · q (rows ≥ the CTA's heads are zero)
  int p;       // [heads_per_cta][kTile + 4] float: probabilities of the tile
  int stats;   // m, l, alpha: [3][round_up4(q_rows)] float
  int table;   // [kTableEntries] int32: block ids of the chunk
  int red;     // [kRows][D] float: P·V token-slice partial sums (aliases the drained tile ring)
  int total;
};

// Logits thread r takes heads [r·hpq, (r + 1)·hpq), hpq = ceil(heads / kHeadResidues): q and the
// softmax statistics have rows up to kHeadResidues · hpq (the ones past the CTA's heads are dummies).
template <int D, KvCacheDType KV>
__host__ __device__ inline int q_rows(int heads_per_cta) {
  constexpr int HR = DecodeConfig<D, KV>::kHeadResidues;
  return (heads_per_cta + HR - 1) / HR * HR;
}

template <int D, KvCacheDType KV>
__host__ __device__ inline DecodeSmem decode_smem(int heads_per_cta, int stages) {
  using C = DecodeConfig<D, KV>;
  DecodeSmem s{};
  int at = 0;
  s.kv = at, at += stages * 2 * C::kTile * C::kPitch;
  s.scales = at, at += C::kQuantized ? stages * 2 * C::kTile * 4 : 0;
  s.q = at, at += q_rows<D, KV>(heads_per_cta) * (D + 4) * 4;
  s.p = at, at += heads_per_cta * (C::kTile + 4) * 4;
  s.stats = at, at += 3 * round_up4(q_rows<D, KV>(heads_per_cta)) * 4;
  s.table = at, at += round_up4(kTableEntries) * 4;
  s.red = s.kv;
  static_assert(2 * 2 * C::kTile * C::kPitch >= C::kRows * D * 4, "the reduction buffer fits in the tile ring");
  s.total = at;
  return s;
}

// Kernel arguments (by value, in the kernel parameter space).
struct DecodeParams {
  const void* query;  // [num_tokens, num_heads, head_size] of dtype; token stride query_stride
  int64_t query_stride;
  void* out;  // [num_tokens, num_heads, head_size] of dtype, contiguous
  DType dtype;
  bool query_vec;  // tensor-core kernel: q rows can be read as 16-byte vectors (16-byte aligned stride and pointer)
  const void* key_cache;    // [num_blocks, num_kv_heads, block_size, head_size] of the cache dtype
  const void* value_cache;  // [num_blocks, num_kv_heads, block_size, head_size]
  const float* key_scales;    // [num_blocks, num_kv_heads, block_size] (quantized caches)
  const float* value_scales;  // [num_blocks, num_kv_heads, block_size] (quantized caches)
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq;
  const int32_t* seq_lens;      // [num_seqs]
  const int32_t* cu_seqlens_q;  // [num_seqs + 1] or null
  const float* alibi_slopes;    // [num_heads] or null
  int64_t num_blocks;
  int num_heads, num_kv_heads;
  int group;          // num_heads / num_kv_heads
  int head_chunks;    // CTAs per KV head (ceil(group / heads_per_cta))
  int heads_per_cta;  // ≤ kMaxHeads
  int log2_block_size;
  int max_len;  // seq_lens are clamped to min(max_seq_len, max_blocks_per_seq · block_size)
  int sliding_window;
  int num_partitions, partition_size, stages;
  float scale, softcap;
  float* max_logits;   // [num_seqs, num_heads, num_partitions] (split path only)
  float* exp_sums;     // [num_seqs, num_heads, num_partitions]
  float* partial_out;  // [num_seqs, num_heads, num_partitions, head_size]
};

// ---- device helpers ----------------------------------------------------------------------

// Sequence s: its query row (−1: none), clamped length, window start and first partition start.
struct SeqSpan {
  int row, len, lo, start;
};

__device__ __forceinline__ SeqSpan seq_span(const DecodeParams& p, int s) {
  SeqSpan r;
  if (p.cu_seqlens_q) {
    const int a = p.cu_seqlens_q[s], b = p.cu_seqlens_q[s + 1];
    r.row = b > a ? b - 1 : -1;  // q_len ≤ 1 in decode: the row is the sequence's last token
  } else {
    r.row = s;
  }
  r.len = min(max(p.seq_lens[s], 0), p.max_len);
  r.lo = p.sliding_window > 0 ? max(0, r.len - p.sliding_window) : 0;  // p − window + 1, p = len − 1
  r.start = r.lo / kPartitionGranule * kPartitionGranule;
  return r;
}

// 16-byte global → shared copy; `valid` false zero-fills (nothing is read).
__device__ __forceinline__ void copy16_async(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
#else
  uint4 v = make_uint4(0, 0, 0, 0);
  if (valid) v = *static_cast<const uint4*>(gmem);
  *static_cast<uint4*>(smem) = v;
#endif
}

__device__ __forceinline__ void copy4_async(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 4 : 0));
#else
  *static_cast<float*>(smem) = valid ? *static_cast<const float*>(gmem) : 0.0f;
#endif
}

__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void copy_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ float2 half2_bits_to_float2(uint32_t bits) {
  float lo, hi;
  asm("{.reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;}\n"
      : "=f"(lo), "=f"(hi)
      : "r"(bits));
  return make_float2(lo, hi);
}

// One 32-bit word of cache → 4 / element_bytes floats ("raw": fp8 comes out as value / 256).
template <KvCacheDType KV>
__device__ __forceinline__ void word_to_floats(uint32_t w, float* f) {
  if constexpr (KV == KvCacheDType::Float32) {
    f[0] = __uint_as_float(w);
  } else if constexpr (KV == KvCacheDType::Float16) {
    const float2 v = half2_bits_to_float2(w);
    f[0] = v.x, f[1] = v.y;
  } else if constexpr (KV == KvCacheDType::BFloat16) {
    f[0] = __uint_as_float(w << 16), f[1] = __uint_as_float(w & 0xffff0000u);
  } else if constexpr (KV == KvCacheDType::Int8) {
    // 2^23 + (b ^ 0x80) as float bits, minus 2^23 + 128: the signed byte, exactly, with no I2F.
    const uint32_t x = w ^ 0x80808080u;
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = __uint_as_float(__byte_perm(x, 0x4b000000u, 0x7540u | i)) - 8388736.0f;
  } else {
    // e4m3 S.EEEE.MMM → float16 bits S.0EEEE.MMM0000000 is the value / 256 (subnormals too).
    const uint32_t a = __byte_perm(w, 0u, 0x1404u), b = __byte_perm(w, 0u, 0x3424u);
    const float2 x = half2_bits_to_float2((a & 0x80008000u) | ((a >> 1) & 0x3f803f80u));
    const float2 y = half2_bits_to_float2((b & 0x80008000u) | ((b >> 1) & 0x3f803f80u));
    f[0] = x.x, f[1] = x.y, f[2] = y.x, f[3] = y.y;
    if (((w & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u) {  // a NaN byte (S.1111.111): rare
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (((w >> (8 * i)) & 0x7fu) == 0x7fu) f[i] = __uint_as_float(0x7fc00000u);
    }
  }
}

// 16 bytes of a cache row → kVecK raw floats.
template <KvCacheDType KV>
__device__ __forceinline__ void unpack16(const unsigned char* smem, float* f) {
  constexpr int per_word = 4 / kv_element_bytes<KV>();
  const uint4 u = *reinterpret_cast<const uint4*>(smem);
  word_to_floats<KV>(u.x, f);
  word_to_floats<KV>(u.y, f + per_word);
  word_to_floats<KV>(u.z, f + 2 * per_word);
  word_to_floats<KV>(u.w, f + 3 * per_word);
}

// 4 elements of a cache row → raw float4.
template <KvCacheDType KV>
__device__ __forceinline__ float4 unpack4(const unsigned char* smem) {
  if constexpr (kv_element_bytes<KV>() == 4) {
    return *reinterpret_cast<const float4*>(smem);
  } else {
    float f[4];
    if constexpr (kv_element_bytes<KV>() == 2) {
      const uint2 u = *reinterpret_cast<const uint2*>(smem);
      word_to_floats<KV>(u.x, f);
      word_to_floats<KV>(u.y, f + 2);
    } else {
      word_to_floats<KV>(*reinterpret_cast<const uint32_t*>(smem), f);
    }
    return make_float4(f[0], f[1], f[2], f[3]);
  }
}

__device__ __forceinline__ float load_as_float(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::Float16: return to_float(static_cast<const half_t*>(base)[i]);
    case DType::BFloat16: return to_float(static_cast<const bfloat16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store_from_float(void* base, DType t, int64_t i, float v) {
  switch (t) {
    case DType::Float16: static_cast<half_t*>(base)[i] = from_float<half_t>(v); break;
    case DType::BFloat16: static_cast<bfloat16_t*>(base)[i] = from_float<bfloat16_t>(v); break;
    default: static_cast<float*>(base)[i] = v; break;
  }
}

// Max / sum over the T lanes of a warp segment (T divides 32).
template <int T>
__device__ __forceinline__ float segment_max(float v) {
#pragma unroll
  for (int o = T / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int T>
__device__ __forceinline__ float segment_sum(float v) {
#pragma unroll
  for (int o = T / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ void fma4(float4& acc, float p, const float4& v) {
  acc.x = fmaf(p, v.x, acc.x), acc.y = fmaf(p, v.y, acc.y), acc.z = fmaf(p, v.z, acc.z), acc.w = fmaf(p, v.w, acc.w);
}

// ---- kernels -----------------------------------------------------------------------------

// Grid (num_kv_heads · head_chunks, num_seqs, num_partitions), kThreads threads,
// decode_smem(heads_per_cta, stages).total bytes of dynamic shared memory.
template <int D, KvCacheDType KV>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm) paged_attention_decode_kernel(const DecodeParams p) {
  using C = DecodeConfig<D, KV>;
  constexpr int T = C::kTile, HR = C::kHeadResidues, MQ = C::kMaxHeadsQK, MV = C::kMaxHeadsPV;
  extern __shared__ __align__(16) unsigned char smem[];

  const int tid = threadIdx.x;
  const int s = blockIdx.y, part = blockIdx.z;
  const int kv_head = blockIdx.x / p.head_chunks;
  const int h0 = (blockIdx.x % p.head_chunks) * p.heads_per_cta;  // first head of this CTA within the group
  const int hc = min(p.heads_per_cta, p.group - h0);               // heads of this CTA
  const SeqSpan span = seq_span(p, s);
  if (span.row < 0 || hc <= 0) return;
  const int begin = span.start + part * p.partition_size;
  if (p.num_partitions > 1 && begin >= span.len) return;  // the merge pass reads only partitions with tokens
  const int end = min(span.len, begin + p.partition_size);
  const int head_base = kv_head * p.group + h0;  // global index of the CTA's head 0

  const DecodeSmem layout = decode_smem<D, KV>(p.heads_per_cta, p.stages);
  const int qrows = q_rows<D, KV>(p.heads_per_cta);
  float* q_s = reinterpret_cast<float*>(smem + layout.q);
  float* p_s = reinterpret_cast<float*>(smem + layout.p);
  float* m_s = reinterpret_cast<float*>(smem + layout.stats);
  float* l_s = m_s + round_up4(qrows);
  float* alpha_s = l_s + round_up4(qrows);
  int32_t* table_s = reinterpret_cast<int32_t*>(smem + layout.table);
  float* red_s = reinterpret_cast<float*>(smem + layout.red);

  for (int i = tid; i < qrows * D; i += kThreads) {
    const int g = i / D, d = i - g * D;
    q_s[g * (D + 4) + d] =
        g < hc ? p.scale * load_as_float(p.query, p.dtype, span.row * p.query_stride + static_cast<int64_t>(head_base + g) * D + d)
               : 0.0f;
  }
  for (int g = tid; g < qrows; g += kThreads) m_s[g] = -INFINITY, l_s[g] = 0.0f;

  // Logits: thread (token qk_t, head residue qk_hr) computes heads [qk_g0, qk_g0 + hpq) of the
  // tile; hpq is CTA-uniform, so branches on k < hpq are warp-uniform (the shuffles need the warp).
  const int qk_t = tid % T, qk_hr = tid / T;
  const int hpq = (hc + HR - 1) / HR;
  const int qk_g0 = qk_hr * hpq;
  // P·V: thread (dims 4·dvec.., head residue hrv, token slice tr) accumulates heads [pv_g0, pv_g0 + hpv).
  const int hrv_count = min(C::kRows, hc);
  const int hpv = (hc + hrv_count - 1) / hrv_count;
  int slices = 1;
  while (slices * 2 * hrv_count <= C::kRows) slices *= 2;
  const int prow = tid / C::kDVecs, dvec = tid - prow * C::kDVecs;
  const int hrv = prow % hrv_count, tr = prow / hrv_count;
  const int pv_g0 = hrv * hpv;
  const bool pv_active = tr < slices && pv_g0 < hc;
  const int slice_tokens = T / slices, slice_begin = tr * slice_tokens;
  float4 acc[MV];
#pragma unroll
  for (int k = 0; k < MV; ++k) acc[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  const int log2_bs = p.log2_block_size, bs_mask = (1 << log2_bs) - 1;
  const unsigned char* key_cache = static_cast<const unsigned char*>(p.key_cache);
  const unsigned char* value_cache = static_cast<const unsigned char*>(p.value_cache);
  const float alibi_pos = static_cast<float>(span.len - 1);

  // Whole tiles before the window are skipped; partitions and chunks are tile-aligned.
  for (int chunk_begin = max(begin, span.lo / T * T); chunk_begin < end; chunk_begin += kChunkTokens) {
    const int chunk_end = min(end, chunk_begin + kChunkTokens);
    const int block0 = chunk_begin >> log2_bs;
    const int nblocks = ((chunk_end - 1) >> log2_bs) - block0 + 1;
    __syncthreads();  // the previous chunk's tiles are consumed
    const int32_t* table = p.block_tables + s * p.max_blocks_per_seq + block0;
    for (int i = tid; i < nblocks; i += kThreads) table_s[i] = table[i];  // entries < ceil(len / block_size) only
    __syncthreads();

    // Block id of token j of the chunk, or −1 when j is masked or its block is outside the cache.
    auto block_of = [&](int j, int tile_end) {
      if (j >= tile_end || j < span.lo) return -1;
      const int block = table_s[(j >> log2_bs) - block0];
      return block >= 0 && block < p.num_blocks ? block : -1;
    };
    const int ntiles = (chunk_end - chunk_begin + T - 1) / T;
    auto issue = [&](int tile) {
      const int stage = tile % p.stages;
      const int tile_begin = chunk_begin + tile * T, tile_end = min(chunk_end, tile_begin + T);
      unsigned char* k_dst = smem + layout.kv + stage * 2 * T * C::kPitch;
      unsigned char* v_dst = k_dst + T * C::kPitch;
      constexpr int kCopies = (T * C::kChunksPerRow + kThreads - 1) / kThreads;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int c = tid + i * kThreads;
        if (T * C::kChunksPerRow % kThreads != 0 && c >= T * C::kChunksPerRow) break;
        const int t = c / C::kChunksPerRow, part16 = c - t * C::kChunksPerRow;
        const int j = tile_begin + t;
        const int block = block_of(j, tile_end);
        const int64_t row = (static_cast<int64_t>(block) * p.num_kv_heads + kv_head) * (bs_mask + 1) + (j & bs_mask);
        const int64_t at = block >= 0 ? row * C::kRowBytes + part16 * 16 : 0;  // nothing is read when masked
        copy16_async(k_dst + t * C::kPitch + part16 * 16, key_cache + at, block >= 0);
        copy16_async(v_dst + t * C::kPitch + part16 * 16, value_cache + at, block >= 0);
      }
      if constexpr (C::kQuantized) {
        float* ks_dst = reinterpret_cast<float*>(smem + layout.scales) + stage * 2 * T;
        if (tid < T) {
          const int j = tile_begin + tid;
          const int block = block_of(j, tile_end);
          const int64_t row = (static_cast<int64_t>(block) * p.num_kv_heads + kv_head) * (bs_mask + 1) + (j & bs_mask);
          const int64_t at = block >= 0 ? row : 0;
          copy4_async(ks_dst + tid, p.key_scales + at, block >= 0);
          copy4_async(ks_dst + T + tid, p.value_scales + at, block >= 0);
        }
      }
    };

    for (int st = 0; st < p.stages - 1; ++st) {
      if (st < ntiles) issue(st);
      copy_async_commit();
    }
    for (int tile = 0; tile < ntiles; ++tile) {
      if (p.stages == 3) {
        copy_async_wait<1>();
      } else {
        copy_async_wait<0>();
      }
      __syncthreads();  // the tile is in shared memory; the previous tile's P·V is done
      if (tile + p.stages - 1 < ntiles) issue(tile + p.stages - 1);
      copy_async_commit();

      const int stage = tile % p.stages;
      const int tile_begin = chunk_begin + tile * T, tile_end = min(chunk_end, tile_begin + T);
      const unsigned char* k_s = smem + layout.kv + stage * 2 * T * C::kPitch;
      const unsigned char* v_s = k_s + T * C::kPitch;
      const float* ks_s = reinterpret_cast<const float*>(smem + layout.scales) + stage * 2 * T;
      const float* vs_s = ks_s + T;

      // ---- logits and the online softmax of this tile
      {
        const int j = tile_begin + qk_t;
        const bool valid = block_of(j, tile_end) >= 0;
        float dot[MQ];
#pragma unroll
        for (int k = 0; k < MQ; ++k) dot[k] = 0.0f;
        const unsigned char* k_row = k_s + qk_t * C::kPitch;
        const float* q_row = q_s + qk_g0 * (D + 4);
#pragma unroll 2
        for (int c = 0; c < C::kChunksPerRow; ++c) {
          float kf[C::kVecK];
          unpack16<KV>(k_row + c * 16, kf);
#pragma unroll
          for (int k = 0; k < MQ; ++k) {
            if (k < hpq) {
              const float* q = q_row + k * (D + 4) + c * C::kVecK;
#pragma unroll
              for (int e = 0; e < C::kVecK; e += 4) {
                const float4 q4 = *reinterpret_cast<const float4*>(q + e);
                dot[k] = fmaf(q4.x, kf[e], dot[k]);
                dot[k] = fmaf(q4.y, kf[e + 1], dot[k]);
                dot[k] = fmaf(q4.z, kf[e + 2], dot[k]);
                dot[k] = fmaf(q4.w, kf[e + 3], dot[k]);
              }
            }
          }
        }
        float k_mul = 1.0f;
        if constexpr (C::kQuantized) k_mul = ks_s[qk_t] * raw_scale<KV>();
#pragma unroll
        for (int k = 0; k < MQ; ++k) {
          if (k >= hpq) break;
          const int g = qk_g0 + k;  // < q_rows; a dummy head when ≥ hc
          const bool active = g < hc;
          float logit = -INFINITY;
          if (valid && active) {
            logit = dot[k] * k_mul;
            if (p.softcap > 0.0f) logit = p.softcap * tanhf(logit / p.softcap);
            if (p.alibi_slopes) logit += __ldg(p.alibi_slopes + head_base + g) * (static_cast<float>(j) - alibi_pos);
          }
          const float m_old = m_s[g], l_old = l_s[g];
          const float m_new = fmaxf(m_old, segment_max<T>(logit));
          const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing valid yet: keep exp() finite
          const float prob = __expf(logit - m_use);
          const float alpha = __expf(m_old - m_use);
          const float sum = segment_sum<T>(prob);
          __syncwarp();  // every lane has read m_s / l_s before lane 0 of the segment rewrites them
          if (active) {
            p_s[g * (T + 4) + qk_t] = prob;
            if (qk_t == 0) m_s[g] = m_new, l_s[g] = l_old * alpha + sum, alpha_s[g] = alpha;
          }
        }
      }
      __syncthreads();

      // ---- P·V
      if (pv_active) {
        const float* p_row = p_s + pv_g0 * (T + 4);
#pragma unroll
        for (int k = 0; k < MV; ++k) {
          if (k < hpv && pv_g0 + k < hc) {
            const float a = alpha_s[pv_g0 + k];
            acc[k].x *= a, acc[k].y *= a, acc[k].z *= a, acc[k].w *= a;
          }
        }
        const unsigned char* v_col = v_s + dvec * 4 * C::kElementBytes;
#pragma unroll 2
        for (int t = slice_begin; t < slice_begin + slice_tokens; t += 2) {
          float4 v0 = unpack4<KV>(v_col + t * C::kPitch), v1 = unpack4<KV>(v_col + (t + 1) * C::kPitch);
          if constexpr (C::kQuantized) {
            const float s0 = vs_s[t] * raw_scale<KV>(), s1 = vs_s[t + 1] * raw_scale<KV>();
            v0.x *= s0, v0.y *= s0, v0.z *= s0, v0.w *= s0;
            v1.x *= s1, v1.y *= s1, v1.z *= s1, v1.w *= s1;
          }
#pragma unroll
          for (int k = 0; k < MV; ++k) {
            if (k < hpv && pv_g0 + k < hc) {
              const float2 pr = *reinterpret_cast<const float2*>(p_row + k * (T + 4) + t);
              fma4(acc[k], pr.x, v0);
              fma4(acc[k], pr.y, v1);
            }
          }
        }
      }
    }
  }

  // ---- epilogue: sum token slices, normalise, write out (or the partition's partials)
  copy_async_wait<0>();  // only empty groups can be pending; the ring is reused for red_s
  __syncthreads();
  if (pv_active && tr > 0) {  // slices > 1 only when hc < kRows: one head per thread (hpv = 1)
    *reinterpret_cast<float4*>(red_s + ((tr - 1) * hc + pv_g0) * D + dvec * 4) = acc[0];
  }
  __syncthreads();
  if (!pv_active || tr > 0) return;
#pragma unroll
  for (int k = 0; k < MV; ++k) {
    const int g = pv_g0 + k;
    if (k >= hpv || g >= hc) break;
    float4 o = acc[k];
    for (int r = 1; r < slices; ++r) {
      const float4 x = *reinterpret_cast<const float4*>(red_s + ((r - 1) * hc + g) * D + dvec * 4);
      o.x += x.x, o.y += x.y, o.z += x.z, o.w += x.w;
    }
    const float l = l_s[g];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no valid token (seq_len 0, all blocks skipped): zeros
    o.x *= inv, o.y *= inv, o.z *= inv, o.w *= inv;
    const int h = head_base + g;
    if (p.num_partitions == 1) {
      const int64_t at = (static_cast<int64_t>(span.row) * p.num_heads + h) * D + dvec * 4;
      store_from_float(p.out, p.dtype, at, o.x);
      store_from_float(p.out, p.dtype, at + 1, o.y);
      store_from_float(p.out, p.dtype, at + 2, o.z);
      store_from_float(p.out, p.dtype, at + 3, o.w);
    } else {
      const int64_t w = (static_cast<int64_t>(s) * p.num_heads + h) * p.num_partitions + part;
      *reinterpret_cast<float4*>(p.partial_out + w * D + dvec * 4) = o;
      if (dvec == 0) p.max_logits[w] = m_s[g], p.exp_sums[w] = l;
    }
  }
}

// ---- tensor-core kernel (sm_80+, float16 / bfloat16 q with a cache of the same dtype) ---------
//
// CTA = (KV head × head chunk, sequence, partition), 4 warps. The CTA's query heads (≤ 16) are the
// 16 rows of one mma m-tile (rows ≥ its heads are zero q). K/V tiles of kTile tokens stream
// through the same cp.async ring as the SIMT kernel (pitch D·2 + 16 bytes: conflict-free
// ldmatrix). Warp w = (token slice ts, dim split ds) owns tokens [16·ts, 16·ts + 16) of every
// tile: S = Q·Kᵀ (16 × 16, mma.m16n8k16, K rows through plain ldmatrix = the .col B operand),
// its own online softmax (base 2, rows g and g + 8 of the C fragments, quad shuffles), then
// O += P·V for dims [ds·kDw, (ds + 1)·kDw) with P taken from the S accumulators as the A operand
// and V through ldmatrix.trans. The token slices' (m, l, O) are merged by log-sum-exp through
// shared memory once at the end of the partition. Fragment formulas are those of the prefill
// tensor-core kernel (cuda/paged_attention_prefill.cu).
//   Head 64..128: 4 slices × 1 split, kTile 64, O = D/2 f32 registers, Q fragments in registers.
//   Head 256:     2 slices × 2 splits (both warps of a slice compute the same S), kTile 32,
//                 O = 64 registers, Q fragments re-read from shared memory per tile.
// Groups above 16 heads take several head chunks (CTAs next to each other in the grid, so their
// K/V reads meet in L2). Per warp and 16 tokens (head 128): 16 mma for S, 16 for P·V, 16 ldmatrix,
// ≈ 60 softmax instructions and 64 rescales of O, against ≈ 4900 warp instructions per 32 tokens
// of the SIMT kernel. Resources (ptxas sm_90 / sm_80): head 64 104 / 100 registers, 80 118 / 114,
// 96 131 / 126, 128 156 / 152, 256 128 / 125, no spills; shared memory per CTA (3 stages) head 128
// 110 KiB → 2 CTAs per SM with 4 tiles (139 KiB) in flight; head 64 3 CTAs. Partition count:
// choose_partitions_tc.
constexpr int kTcRows = 16;  // query heads per CTA (one m-tile)

template <int D>
struct TcConfig {
  static constexpr int kDimSplits = D > 128 ? 2 : 1;
  static constexpr int kSlices = (kThreads / 32) / kDimSplits;  // token slices of 16 per tile
  static constexpr int kTile = 16 * kSlices;                    // tokens per tile
  static constexpr int kDw = D / kDimSplits;                    // P·V output dims per warp
  static constexpr int kPitch = D * 2 + 16;                     // bytes per K/V/Q row in shared memory
  static constexpr int kRedPitch = kDw + 8;                     // floats per row of the merge buffer
  static constexpr int kMinCtas = D <= 128 ? 3 : 2;  // __launch_bounds__: ≤ 168 / 255 registers
  static_assert(D % 16 == 0 && kDw % 16 == 0, "whole k16 steps and ldmatrix.x4 column pairs");
  static_assert((kTile * (D / 8)) % kThreads == 0, "whole 16-byte copies per thread");
  static_assert(kChunkTokens % kTile == 0 && kPartitionGranule % kTile == 0, "tiles never straddle chunks");
};

struct TcSmem {
  int kv;     // [stages][K, V][kTile][kPitch] bytes
  int q;      // [16][kPitch] bytes: q rows in the 16-bit dtype (rows ≥ the CTA's heads are zero)
  int table;  // [kTableEntries] int32
  int stats;  // m, l: [2][4 warps][16] float
  int wts;    // merge weights [kDimSplits][kSlices][16] float, row max / sum [2][16] float
  int red;    // [4 warps][16][kRedPitch] float (aliases the drained ring)
  int total;
};

template <int D>
__host__ __device__ inline TcSmem tc_smem(int stages) {
  using C = TcConfig<D>;
  TcSmem s{};
  int at = 0;
  s.kv = at, at += stages * 2 * C::kTile * C::kPitch;
  s.q = at, at += kTcRows * C::kPitch;
  s.table = at, at += round_up4(kTableEntries) * 4;
  s.stats = at, at += 2 * (kThreads / 32) * kTcRows * 4;
  s.wts = at, at += (C::kDimSplits * C::kSlices + 2) * kTcRows * 4;
  s.red = s.kv;
  static_assert(2 * 2 * C::kTile * C::kPitch >= (kThreads / 32) * kTcRows * C::kRedPitch * 4,
                "the merge buffer fits in the tile ring");
  s.total = at;
  return s;
}

using namespace tc;  // ldmatrix, mma.sync, pack2: cuda/mma.cuh


// Grid (num_kv_heads · head_chunks, num_seqs, num_partitions), kThreads threads,
// tc_smem<D>(stages).total bytes of dynamic shared memory. T: __half or __nv_bfloat16, the dtype of
// q, out and the cache. heads_per_cta ≤ 16; no alibi, no softcap (the launcher checks).
template <int D, typename T>
__global__ void __launch_bounds__(kThreads, TcConfig<D>::kMinCtas) paged_attention_decode_tc_kernel(const DecodeParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using C = TcConfig<D>;
  constexpr int TT = C::kTile, P = C::kPitch / 2, DS = C::kDimSplits, NS = C::kSlices;
  constexpr bool kQInRegisters = D <= 128;  // head 256: re-read per tile (registers)
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  constexpr int kChunksPerRow = D / 8, kSteps = D / 16;
  extern __shared__ __align__(16) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int ts = warp / DS, ds = warp % DS;
  const int g = lane >> 2, tig = lane & 3;
  const int s = blockIdx.y, part = blockIdx.z;
  const int kv_head = blockIdx.x / p.head_chunks;
  const int h0 = (blockIdx.x % p.head_chunks) * p.heads_per_cta;
  const int hc = min(p.heads_per_cta, p.group - h0);
  const SeqSpan span = seq_span(p, s);
  if (span.row < 0 || hc <= 0) return;
  const int begin = span.start + part * p.partition_size;
  if (p.num_partitions > 1 && begin >= span.len) return;  // the merge pass reads only partitions with tokens
  const int end = min(span.len, begin + p.partition_size);
  const int head_base = kv_head * p.group + h0;

  const TcSmem layout = tc_smem<D>(p.stages);
  uint16_t* q_s = reinterpret_cast<uint16_t*>(smem + layout.q);
  int32_t* table_s = reinterpret_cast<int32_t*>(smem + layout.table);
  float* m_st = reinterpret_cast<float*>(smem + layout.stats);  // [warp][16]
  float* l_st = m_st + (kThreads / 32) * kTcRows;
  float* wt_s = reinterpret_cast<float*>(smem + layout.wts);  // [ds][slice][16]
  float* row_m = wt_s + DS * NS * kTcRows;                     // [16]: max (base 2) of the CTA's rows
  float* row_l = row_m + kTcRows;                              // [16]: exp-sum
  float* red_s = reinterpret_cast<float*>(smem + layout.red);

  // q rows → shared memory (16-bit, unscaled; the scale is applied to the f32 logits).
  {
    const uint16_t* query = static_cast<const uint16_t*>(p.query);
    for (int c = tid; c < kTcRows * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, col = (c - r * kChunksPerRow) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < hc) {
        const uint16_t* src = query + span.row * p.query_stride + static_cast<int64_t>(head_base + r) * D + col;
        if (p.query_vec) {
          v = *reinterpret_cast<const uint4*>(src);
        } else {
          v.x = src[0] | static_cast<uint32_t>(src[1]) << 16, v.y = src[2] | static_cast<uint32_t>(src[3]) << 16;
          v.z = src[4] | static_cast<uint32_t>(src[5]) << 16, v.w = src[6] | static_cast<uint32_t>(src[7]) << 16;
        }
      }
      *reinterpret_cast<uint4*>(q_s + r * P + col) = v;
    }
  }
  __syncthreads();

  // A fragments of q: matrices (rows 0–7, k 0–7), (rows 8–15, k 0–7), (rows 0–7, k 8–15), (rows 8–15, k 8–15).
  const uint16_t* q_lane = q_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * P + (lane >> 4) * 8;
  uint32_t qf[kQInRegisters ? kSteps : 1][4];
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) ldmatrix_x4(qf[ks], q_lane + ks * 16);
  }
  float o[C::kDw / 8][4];
#pragma unroll
  for (int dn = 0; dn < C::kDw / 8; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float scale2 = p.scale * kLog2e;  // logits in base 2

  const int log2_bs = p.log2_block_size, bs_mask = (1 << log2_bs) - 1;
  const unsigned char* key_cache = static_cast<const unsigned char*>(p.key_cache);
  const unsigned char* value_cache = static_cast<const unsigned char*>(p.value_cache);
  const int t0 = ts * 16;  // this warp's tokens within a tile

  for (int chunk_begin = max(begin, span.lo / TT * TT); chunk_begin < end; chunk_begin += kChunkTokens) {
    const int chunk_end = min(end, chunk_begin + kChunkTokens);
    const int block0 = chunk_begin >> log2_bs;
    const int nblocks = ((chunk_end - 1) >> log2_bs) - block0 + 1;
    __syncthreads();  // the previous chunk's tiles and table entries are consumed
    const int32_t* table = p.block_tables + s * p.max_blocks_per_seq + block0;
    for (int i = tid; i < nblocks; i += kThreads) table_s[i] = table[i];  // entries < ceil(len / block_size) only
    __syncthreads();

    auto block_of = [&](int j, int tile_end) {
      if (j >= tile_end || j < span.lo) return -1;
      const int block = table_s[(j >> log2_bs) - block0];
      return block >= 0 && block < p.num_blocks ? block : -1;
    };
    const int ntiles = (chunk_end - chunk_begin + TT - 1) / TT;
    auto issue = [&](int tile) {
      const int stage = tile % p.stages;
      const int tile_begin = chunk_begin + tile * TT, tile_end = min(chunk_end, tile_begin + TT);
      unsigned char* k_dst = smem + layout.kv + stage * 2 * TT * C::kPitch;
      unsigned char* v_dst = k_dst + TT * C::kPitch;
      constexpr int kCopies = TT * kChunksPerRow / kThreads;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int c = tid + i * kThreads;
        const int t = c / kChunksPerRow, part16 = c - t * kChunksPerRow;
        const int j = tile_begin + t;
        const int block = block_of(j, tile_end);
        const int64_t row = (static_cast<int64_t>(block) * p.num_kv_heads + kv_head) * (bs_mask + 1) + (j & bs_mask);
        const int64_t at = block >= 0 ? row * (D * 2) + part16 * 16 : 0;  // nothing is read when masked
        copy16_async(k_dst + t * C::kPitch + part16 * 16, key_cache + at, block >= 0);
        copy16_async(v_dst + t * C::kPitch + part16 * 16, value_cache + at, block >= 0);
      }
    };

    for (int st = 0; st < p.stages - 1; ++st) {
      if (st < ntiles) issue(st);
      copy_async_commit();
    }
    for (int tile = 0; tile < ntiles; ++tile) {
      if (p.stages == 3) {
        copy_async_wait<1>();
      } else {
        copy_async_wait<0>();
      }
      __syncthreads();  // the tile is in shared memory; every warp is done with the previous tile
      if (tile + p.stages - 1 < ntiles) issue(tile + p.stages - 1);
      copy_async_commit();

      const int stage = tile % p.stages;
      const int tile_begin = chunk_begin + tile * TT, tile_end = min(chunk_end, tile_begin + TT);
      const uint16_t* k_s = reinterpret_cast<const uint16_t*>(smem + layout.kv + stage * 2 * TT * C::kPitch);
      const uint16_t* v_s = k_s + TT * P;

      // S = Q·Kᵀ for this warp's 16 tokens: sc[0] tokens 0–7, sc[1] tokens 8–15 (columns 2·tig, 2·tig + 1).
      float sc[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
      const uint16_t* k_lane = k_s + (t0 + (lane & 7) + (lane >> 4) * 8) * P + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) {
        uint32_t a[4];
        if constexpr (kQInRegisters) {
          a[0] = qf[ks][0], a[1] = qf[ks][1], a[2] = qf[ks][2], a[3] = qf[ks][3];
        } else {
          ldmatrix_x4(a, q_lane + ks * 16);
        }
        uint32_t b[4];  // (tokens 0–7, k 0–7), (tokens 0–7, k 8–15), (tokens 8–15, k 0–7), (tokens 8–15, k 8–15)
        ldmatrix_x4(b, k_lane + ks * 16);
        mma_16816<T>(sc[0], a, b[0], b[1]);
        mma_16816<T>(sc[1], a, b[2], b[3]);
      }

      // Mask (−inf) tokens outside [lo, tile_end) or in a block outside the cache; scale the rest.
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int j = tile_begin + t0 + nt * 8 + tig * 2;  // even: j and j + 1 share a block (size ≥ 8)
        const bool in0 = j >= span.lo && j < tile_end, in1 = j + 1 >= span.lo && j + 1 < tile_end;
        bool blk = false;
        if (in0 || in1) {
          const int block = table_s[(j >> log2_bs) - block0];
          blk = block >= 0 && block < p.num_blocks;
        }
        const bool v0 = in0 && blk, v1 = in1 && blk;
        sc[nt][0] = v0 ? sc[nt][0] * scale2 : -INFINITY;
        sc[nt][2] = v0 ? sc[nt][2] * scale2 : -INFINITY;
        sc[nt][1] = v1 ? sc[nt][1] * scale2 : -INFINITY;
        sc[nt][3] = v1 ? sc[nt][3] * scale2 : -INFINITY;
      }

      // Online softmax of rows g (ri 0) and g + 8 (ri 1); a row's 16 columns live in one lane quad.
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        float mx = fmaxf(fmaxf(sc[0][2 * ri], sc[0][2 * ri + 1]), fmaxf(sc[1][2 * ri], sc[1][2 * ri + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[ri], mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing valid yet: keep exp2 finite (0)
        const float corr = exp2f(m[ri] - m_use);
        m[ri] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = sc[nt][2 * ri + e];
            x = exp2f(x - m_use);
            sum += x;
          }
        l[ri] = l[ri] * corr + sum;  // this lane's columns; the quad is summed at the end
#pragma unroll
        for (int dn = 0; dn < C::kDw / 8; ++dn) o[dn][2 * ri] *= corr, o[dn][2 * ri + 1] *= corr;
      }

      // O += P·V: the two S tiles are the A fragment of one k16 step; V (tokens × dims) is the B
      // operand through ldmatrix.trans: (tokens 0–7, dims 0–7), (8–15, 0–7), (0–7, 8–15), (8–15, 8–15).
      const uint32_t a[4] = {pack2<T>(sc[0][0], sc[0][1]), pack2<T>(sc[0][2], sc[0][3]), pack2<T>(sc[1][0], sc[1][1]),
                             pack2<T>(sc[1][2], sc[1][3])};
      const uint16_t* v_lane = v_s + (t0 + (lane & 7) + ((lane >> 3) & 1) * 8) * P + ds * C::kDw + (lane >> 4) * 8;
#pragma unroll
      for (int dp = 0; dp < C::kDw / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_lane + dp * 16);
        mma_16816<T>(o[2 * dp], a, b[0], b[1]);
        mma_16816<T>(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
  }

  // ---- epilogue: merge the token slices by log-sum-exp, normalise, write out (or the partials)
  copy_async_wait<0>();  // only empty groups can be pending; the ring is reused for red_s
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 1);
    l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 2);
  }
  __syncthreads();  // every warp is done with the ring
  if (tig == 0) {
    m_st[warp * kTcRows + g] = m[0], m_st[warp * kTcRows + g + 8] = m[1];
    l_st[warp * kTcRows + g] = l[0], l_st[warp * kTcRows + g + 8] = l[1];
  }
#pragma unroll
  for (int dn = 0; dn < C::kDw / 8; ++dn) {
    float* r0 = red_s + (warp * kTcRows + g) * C::kRedPitch + dn * 8 + tig * 2;
    *reinterpret_cast<float2*>(r0) = make_float2(o[dn][0], o[dn][1]);
    *reinterpret_cast<float2*>(r0 + 8 * C::kRedPitch) = make_float2(o[dn][2], o[dn][3]);
  }
  __syncthreads();
  if (tid < DS * kTcRows) {  // weights of (dim split, row): e^(m_w − M) / L per slice
    const int r = tid % kTcRows, dsx = tid / kTcRows;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < NS; ++w) mx = fmaxf(mx, m_st[(w * DS + dsx) * kTcRows + r]);
    const float m_use = mx == -INFINITY ? 0.0f : mx;
    float wt[NS], sum = 0.0f;
#pragma unroll
    for (int w = 0; w < NS; ++w) {
      wt[w] = exp2f(m_st[(w * DS + dsx) * kTcRows + r] - m_use);
      sum += l_st[(w * DS + dsx) * kTcRows + r] * wt[w];
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no valid token (seq_len 0, all blocks skipped): zeros
#pragma unroll
    for (int w = 0; w < NS; ++w) wt_s[(dsx * NS + w) * kTcRows + r] = wt[w] * inv;
    if (dsx == 0) row_m[r] = mx, row_l[r] = sum;
  }
  __syncthreads();
  for (int i = tid; i < hc * (D / 2); i += kThreads) {
    const int r = i / (D / 2), d = (i - r * (D / 2)) * 2;
    const int dsx = d / C::kDw, dl = d - dsx * C::kDw;
    float2 acc = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < NS; ++w) {
      const float wt = wt_s[(dsx * NS + w) * kTcRows + r];
      const float2 x = *reinterpret_cast<const float2*>(red_s + ((w * DS + dsx) * kTcRows + r) * C::kRedPitch + dl);
      acc.x = fmaf(wt, x.x, acc.x), acc.y = fmaf(wt, x.y, acc.y);
    }
    const int h = head_base + r;
    if (p.num_partitions == 1) {
      const int64_t at = (static_cast<int64_t>(span.row) * p.num_heads + h) * D + d;
      *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(p.out) + at) = pack2<T>(acc.x, acc.y);
    } else {
      const int64_t w = (static_cast<int64_t>(s) * p.num_heads + h) * p.num_partitions + part;
      *reinterpret_cast<float2*>(p.partial_out + w * D + d) = acc;
      if (d == 0) p.max_logits[w] = row_m[r] * kLn2, p.exp_sums[w] = row_l[r];
    }
  }
#else
  __trap();  // never launched: the host picks the SIMT kernel where this is not sm_80+ code
#endif
}

template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // scratch may still be read by a previous reduction
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[0];
  for (int i = 1; i < static_cast<int>(blockDim.x / 32); ++i) v = op(v, scratch[i]);
  return v;
}

// Log-sum-exp merge of the partitions of one (query head, sequence):
//   out = Σ_k l_k e^(m_k − M) o_k / Σ_k l_k e^(m_k − M),  M = max_k m_k,
// with o_k the normalised partial output of partition k. Grid (num_heads, num_seqs),
// num_partitions + 3 floats of dynamic shared memory (see the launch).
__global__ void __launch_bounds__(kMergeThreads) merge_partitions_kernel(const DecodeParams p, int head_size) {
  extern __shared__ float weight_s[];  // [num_partitions]
  __shared__ float scratch[kMergeThreads / 32];
  const int h = blockIdx.x, s = blockIdx.y;
  const SeqSpan span = seq_span(p, s);
  if (span.row < 0) return;
  const int n = span.len > span.start ? min(p.num_partitions, (span.len - span.start + p.partition_size - 1) / p.partition_size) : 0;
  const int64_t base = (static_cast<int64_t>(s) * p.num_heads + h) * p.num_partitions;
  float m = -INFINITY;
  for (int k = threadIdx.x; k < n; k += blockDim.x) m = fmaxf(m, p.max_logits[base + k]);
  m = block_reduce(m, scratch, [](float a, float b) { return fmaxf(a, b); });
  float sum = 0.0f;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const float l = p.exp_sums[base + k];
    const float w = l > 0.0f ? l * expf(p.max_logits[base + k] - m) : 0.0f;
    weight_s[k] = w;
    sum += w;
  }
  sum = block_reduce(sum, scratch, [](float a, float b) { return a + b; });  // also publishes weight_s
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int d = threadIdx.x; d < head_size; d += blockDim.x) {
    float o = 0.0f;
    for (int k = 0; k < n; ++k) o = fmaf(weight_s[k], p.partial_out[(base + k) * head_size + d], o);
    store_from_float(p.out, p.dtype, (static_cast<int64_t>(span.row) * p.num_heads + h) * head_size + d, o * inv);
  }
}

// ---- launcher ----------------------------------------------------------------------------

struct DeviceLimits {
  int sms = 0, smem_per_sm = 0, smem_per_block_optin = 0, regs_per_sm = 0, threads_per_sm = 0, blocks_per_sm = 0;
};

// Read once per device.
const DeviceLimits& device_limits(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceLimits> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  DeviceLimits d;
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&d.regs_per_sm, cudaDevAttrMaxRegistersPerMultiprocessor, device));
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&d.threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  PAGEDLLM_CUDA_CHECK(cudaDeviceGetAttribute(&d.blocks_per_sm, cudaDevAttrMaxBlocksPerMultiprocessor, device));
  return cache.emplace(device, d).first->second;
}

// Registers per thread of `kernel`, and its dynamic shared-memory limit raised to the device's
// opt-in maximum, once per (kernel, device). The device must be current.
int prepare_kernel(const void* kernel, int device, const DeviceLimits& limits) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find({kernel, device});
  if (it != cache.end()) return it->second;
  cudaFuncAttributes attr{};
  PAGEDLLM_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  PAGEDLLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           limits.smem_per_block_optin - static_cast<int>(attr.sharedSizeBytes)));
  cache.emplace(std::make_pair(kernel, device), attr.numRegs);
  return attr.numRegs;
}

// Resident CTAs per SM for a CTA of kThreads threads, `regs` registers each and `smem` bytes.
int ctas_per_sm(const DeviceLimits& d, int regs, int smem) {
  const int regs_per_warp = (std::max(regs, 1) * 32 + 255) / 256 * 256;  // allocation granularity
  const int by_regs = d.regs_per_sm / (regs_per_warp * (kThreads / 32));
  const int by_smem = d.smem_per_sm / (smem + 1024);  // 1 KiB per CTA reserved by the system (sm_80+)
  const int by_threads = d.threads_per_sm / kThreads;
  return std::max(0, std::min({by_regs, by_smem, by_threads, d.blocks_per_sm}));
}

// Partition count for `base` CTAs per partition index (num_seqs · num_kv_heads · head_chunks) and
// `span` tokens (the longest range a sequence attends over, from its first partition start).
//
// Decode is bandwidth-bound, and an SM reaches its share of HBM bandwidth with about
// kSaturatingCtasPerSm resident CTAs (each keeps 1-2 tiles of 16 KiB in flight). Modelled time
// of n partitions of ps = round_up(ceil(span / n), 256) tokens: the busiest SM holds
// c = ceil(base · n / SMs) CTAs and streams c · ps tokens at rate min(c, occupancy, 2) / 2:
//     time(n) = c · ps / min(c, occupancy, 2).
// The n with the least time wins if it beats n = 1 by ≥ 20% (the merge launch and the workspace
// cost a few µs). Examples, H100 (132 SMs), head 128: 64 × 1024 MHA-32: base 2048 → n = 1 (no
// workspace, one launch); 16 × 4096 MHA-32 (base 512) → 1; 64 × 4096 GQA 32/4 (base 256, two
// CTAs per SM already) → 1; 1 × 16384 MHA-32 (base 32) → 8 partitions of 2048 (256 CTAs);
// 1 × 20000 with one KV head → 79 partitions of 256.
int choose_partitions(int64_t base, int span, int sms, int occupancy) {
  if (span <= kPartitionGranule) return 1;
  const int max_parts = static_cast<int>(std::min<int64_t>((span + kPartitionGranule - 1) / kPartitionGranule, kMaxPartitions));
  auto time = [&](int64_t n, int64_t ps) {
    const int64_t c = (base * n + sms - 1) / sms;
    return static_cast<double>(c) * static_cast<double>(ps) /
           static_cast<double>(std::min<int64_t>({c, occupancy, kSaturatingCtasPerSm}));
  };
  const double one = time(1, span);
  double best = one;
  int best_n = 1;
  for (int n = 2; n <= max_parts; ++n) {
    const int64_t ps = ((span + n - 1) / n + kPartitionGranule - 1) / kPartitionGranule * kPartitionGranule;
    if ((span + ps - 1) / ps != n) continue;  // same partitions as a smaller n
    const double t = time(n, ps);
    if (t < best) best = t, best_n = n;
    if (base * n > static_cast<int64_t>(sms) * occupancy * 4) break;  // well past filling the GPU
  }
  return best <= 0.8 * one ? best_n : 1;
}

// Tensor-core partition count: decode on tensor cores is bandwidth-bound, and one CTA per
// resident slot (sms · occupancy) already keeps an SM's share of HBM busy, while CTAs past the
// first wave only add a tail. So: one partition when the base grid reaches the slots, else as many
// as fit in one wave (at least 512 tokens each). Measured on an H200 (132 SMs, head 128, 2 CTAs
// per SM): 64 × 4096 GQA 32/4 (base 256): 1 partition 151 µs, 2: 160, 4: 164, 8: 172; 1 × 16384
// MHA-32 (base 32): 8 partitions 89 µs, 16: 93, 32: 98 — this rule picks 1 and 8.
int choose_partitions_tc(int64_t base, int span, int sms, int occupancy) {
  const int64_t slots = static_cast<int64_t>(sms) * std::max(occupancy, 1);
  if (span <= 2 * kPartitionGranule || base >= slots) return 1;
  const int max_parts = static_cast<int>(std::min<int64_t>((span + 2 * kPartitionGranule - 1) / (2 * kPartitionGranule), kMaxPartitions));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_parts, slots / base)));
}

// The parameters both kernels share; heads per CTA at most max_heads (head chunks adjacent in the grid).
DecodeParams common_params(const PagedAttentionArgs& a, int max_heads) {
  DecodeParams p{};
  p.query = a.query, p.query_stride = a.query_stride, p.out = a.out, p.dtype = a.dtype;
  p.key_cache = a.key_cache, p.value_cache = a.value_cache;
  p.key_scales = a.key_scales, p.value_scales = a.value_scales;
  p.block_tables = a.block_tables, p.max_blocks_per_seq = a.max_blocks_per_seq;
  p.seq_lens = a.seq_lens, p.cu_seqlens_q = a.cu_seqlens_q, p.alibi_slopes = a.alibi_slopes;
  p.num_blocks = a.shape.num_blocks;
  p.num_heads = static_cast<int>(a.num_heads), p.num_kv_heads = static_cast<int>(a.shape.num_kv_heads);
  p.group = p.num_heads / p.num_kv_heads;
  p.head_chunks = (p.group + max_heads - 1) / max_heads;
  p.heads_per_cta = (p.group + p.head_chunks - 1) / p.head_chunks;
  const int block_size = static_cast<int>(a.shape.block_size);
  p.log2_block_size = block_size == 8 ? 3 : block_size == 16 ? 4 : 5;
  const int64_t table_tokens = a.max_blocks_per_seq * block_size;
  p.max_len = static_cast<int>(std::min<int64_t>({std::max<int64_t>(a.max_seq_len, 0), table_tokens, INT_MAX / 2}));
  p.sliding_window = std::max(a.sliding_window, 0);
  p.scale = a.scale, p.softcap = a.softcap;
  return p;
}

// Stages (2 or 3) with the most tiles in flight per SM, (stages − 1) · resident CTAs; ties to
// fewer stages. Sets p.stages and returns {smem bytes, occupancy}.
template <typename SmemOf>
std::pair<int, int> choose_stages(DecodeParams& p, const DeviceLimits& limits, int regs, SmemOf smem_of) {
  int best_score = 0, smem = 0;
  for (int stages = 2; stages <= 3; ++stages) {
    const int bytes = smem_of(stages);
    if (bytes > limits.smem_per_block_optin) continue;
    const int score = (stages - 1) * ctas_per_sm(limits, regs, bytes);
    if (score > best_score) best_score = score, p.stages = stages, smem = bytes;
  }
  PAGEDLLM_CHECK(best_score > 0, Unsupported, "paged attention decode: ", smem_of(2),
                 " bytes of shared memory per block needed, the device allows ", limits.smem_per_block_optin);
  return {smem, ctas_per_sm(limits, regs, smem)};
}

// Sets p.num_partitions / p.partition_size (forced count, else `chosen(base, span)`), then launches
// `kernel` (grid (num_kv_heads · head_chunks, num_seqs, partitions)) and, when split, the merge.
template <typename Choose>
void launch_partitioned(void (*kernel)(DecodeParams), DecodeParams p, int head_size, int smem,
                        const PagedAttentionArgs& a, CudaStream& stream, Choose chosen) {
  const int span = p.sliding_window > 0
                       ? static_cast<int>(std::min<int64_t>(p.max_len, int64_t{p.sliding_window} + kPartitionGranule - 1))
                       : p.max_len;
  const int64_t base = a.num_seqs * p.num_kv_heads * p.head_chunks;
  p.num_partitions = a.decode_partitions > 0
                         ? static_cast<int>(std::min<int64_t>({a.decode_partitions, kMaxPartitions,
                                                               std::max<int64_t>(1, (span + kPartitionGranule - 1) / kPartitionGranule)}))
                         : chosen(base, span);
  const int64_t ps = (std::max((span + p.num_partitions - 1) / p.num_partitions, 1) + kPartitionGranule - 1) /
                     kPartitionGranule * kPartitionGranule;
  p.partition_size = static_cast<int>(ps);
  p.num_partitions = std::max(1, static_cast<int>((span + ps - 1) / ps));

  const dim3 grid(static_cast<unsigned>(p.num_kv_heads * p.head_chunks), static_cast<unsigned>(a.num_seqs),
                  static_cast<unsigned>(p.num_partitions));
  if (p.num_partitions == 1) {
    kernel<<<grid, kThreads, smem, stream.handle()>>>(p);
    PAGEDLLM_CUDA_CHECK(cudaGetLastError());
    return;
  }

  // Split-K: float32 partials from the stream-ordered workspace, freed right after the merge.
  const size_t rows = static_cast<size_t>(a.num_seqs) * p.num_heads * p.num_partitions;
  const size_t partial_bytes = align_up(rows * head_size * sizeof(float)), stat_bytes = align_up(rows * sizeof(float));
  const size_t bytes = partial_bytes + 2 * stat_bytes;
  void* workspace = workspace_allocate(bytes, stream);
  try {
    p.partial_out = static_cast<float*>(workspace);
    p.max_logits = reinterpret_cast<float*>(static_cast<char*>(workspace) + partial_bytes);
    p.exp_sums = reinterpret_cast<float*>(static_cast<char*>(workspace) + partial_bytes + stat_bytes);
    kernel<<<grid, kThreads, smem, stream.handle()>>>(p);
    PAGEDLLM_CUDA_CHECK(cudaGetLastError());
    const dim3 merge_grid(static_cast<unsigned>(p.num_heads), static_cast<unsigned>(a.num_seqs));
    // Three floats of slack: ptxas loads the k-loop's remainder (up to 3 weights) as one
    // shared-memory read before branching on how many there are, which compute-sanitizer's
    // memcheck reported as out of bounds when a row's last partition was the array's last.
    merge_partitions_kernel<<<merge_grid, kMergeThreads, (p.num_partitions + 3) * sizeof(float), stream.handle()>>>(
        p, head_size);
    PAGEDLLM_CUDA_CHECK(cudaGetLastError());
  } catch (...) {
    workspace_deallocate(workspace, bytes, stream);
    throw;
  }
  workspace_deallocate(workspace, bytes, stream);
}

template <int D, KvCacheDType KV>
void launch_decode(const PagedAttentionArgs& a, CudaStream& stream) {
  using C = DecodeConfig<D, KV>;
  const int device = stream.device().index;
  const DeviceLimits& limits = device_limits(device);
  const auto kernel = paged_attention_decode_kernel<D, KV>;
  const int regs = prepare_kernel(reinterpret_cast<const void*>(kernel), device, limits);
  DecodeParams p = common_params(a, C::kMaxHeads);
  const std::pair<int, int> so =
      choose_stages(p, limits, regs, [&](int stages) { return decode_smem<D, KV>(p.heads_per_cta, stages).total; });
  launch_partitioned(kernel, p, D, so.first, a, stream,
                     [&](int64_t base, int span) { return choose_partitions(base, span, limits.sms, so.second); });
}

template <int D, typename T>
void launch_decode_tc(const PagedAttentionArgs& a, CudaStream& stream) {
  const int device = stream.device().index;
  const DeviceLimits& limits = device_limits(device);
  const auto kernel = paged_attention_decode_tc_kernel<D, T>;
  const int regs = prepare_kernel(reinterpret_cast<const void*>(kernel), device, limits);
  DecodeParams p = common_params(a, kTcRows);
  p.query_vec = reinterpret_cast<uintptr_t>(a.query) % 16 == 0 && a.query_stride % 8 == 0;
  const std::pair<int, int> so = choose_stages(p, limits, regs, [](int stages) { return tc_smem<D>(stages).total; });
  launch_partitioned(kernel, p, D, so.first, a, stream,
                     [&](int64_t base, int span) { return choose_partitions_tc(base, span, limits.sms, so.second); });
}

template <int D>
void dispatch_cache_dtype(const PagedAttentionArgs& a, CudaStream& stream) {
  switch (a.cache_dtype) {
    case KvCacheDType::Float32: return launch_decode<D, KvCacheDType::Float32>(a, stream);
    case KvCacheDType::Float16: return launch_decode<D, KvCacheDType::Float16>(a, stream);
    case KvCacheDType::BFloat16: return launch_decode<D, KvCacheDType::BFloat16>(a, stream);
    case KvCacheDType::Int8: return launch_decode<D, KvCacheDType::Int8>(a, stream);
    case KvCacheDType::Fp8E4M3: return launch_decode<D, KvCacheDType::Fp8E4M3>(a, stream);
  }
  PAGEDLLM_FAIL(Unsupported, "paged attention decode: unknown KV cache dtype ", static_cast<int>(a.cache_dtype));
}

template <int D>
void dispatch_tc(const PagedAttentionArgs& a, CudaStream& stream) {
  if (a.dtype == DType::Float16) return launch_decode_tc<D, __half>(a, stream);
  return launch_decode_tc<D, __nv_bfloat16>(a, stream);
}

// Whether the tensor-core kernel runs as sm_80+ code on `device` (a build whose code for it is
// sm_75 would run its empty body). Cached per device; the device must be current.
bool tc_kernel_usable(int device) {
  static std::mutex mutex;
  static std::map<int, bool> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  cudaFuncAttributes attr{};
  PAGEDLLM_CUDA_CHECK(cudaFuncGetAttributes(&attr, paged_attention_decode_tc_kernel<128, __half>));
  const bool usable = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
  cache.emplace(device, usable);
  return usable;
}

// Empty when the tensor-core kernel handles `a` (the device aside); otherwise why not.
std::string tc_unsupported(const PagedAttentionArgs& a) {
  if (!((a.dtype == DType::Float16 && a.cache_dtype == KvCacheDType::Float16) ||
        (a.dtype == DType::BFloat16 && a.cache_dtype == KvCacheDType::BFloat16)))
    return std::string("dtype ") + dtype_name(a.dtype) + " with a " + kv_dtype_name(a.cache_dtype) +
           " cache (supported: float16 / float16, bfloat16 / bfloat16)";
  if (a.alibi_slopes) return "alibi slopes";
  if (a.softcap > 0.0f) return "softcap";
  switch (a.shape.head_size) {
    case 64: case 80: case 96: case 128: case 256: return {};
  }
  return "head size " + std::to_string(a.shape.head_size);
}

}  // namespace

// ---- dispatch ----------------------------------------------------------------------------

void paged_attention_decode_cuda(const PagedAttentionArgs& a, Stream& stream) {
  // Cheap second checks of what paged_attention() validated.
  PAGEDLLM_CHECK(a.dtype == DType::Float32 || a.dtype == DType::Float16 || a.dtype == DType::BFloat16, Unsupported,
                 "paged attention decode: dtype ", dtype_name(a.dtype), " (supported: float32, float16, bfloat16)");
  const int64_t bs = a.shape.block_size;
  PAGEDLLM_CHECK(bs == 8 || bs == 16 || bs == 32, Unsupported, "paged attention decode: block size ", bs,
                 " (supported: 8, 16, 32)");
  PAGEDLLM_CHECK(a.num_heads > 0 && a.shape.num_kv_heads > 0 && a.num_heads % a.shape.num_kv_heads == 0,
                 InvalidArgument, "paged attention decode: num_heads ", a.num_heads,
                 " is not a multiple of num_kv_heads ", a.shape.num_kv_heads);
  PAGEDLLM_CHECK(a.max_query_len <= 1, InvalidArgument, "paged attention decode: max_query_len ", a.max_query_len,
                 " (decode takes at most one query token per sequence)");
  PAGEDLLM_CHECK(a.cu_seqlens_q != nullptr || a.num_tokens == a.num_seqs, InvalidArgument,
                 "paged attention decode: num_tokens ", a.num_tokens, " != num_seqs ", a.num_seqs,
                 " without cu_seqlens_q");
  PAGEDLLM_CHECK(a.query_stride >= a.num_heads * a.shape.head_size, InvalidArgument,
                 "paged attention decode: query_stride ", a.query_stride, " < num_heads * head_size");
  PAGEDLLM_CHECK(!kv_dtype_is_quantized(a.cache_dtype) || (a.key_scales && a.value_scales), InvalidArgument,
                 "paged attention decode: a ", kv_dtype_name(a.cache_dtype), " cache needs key and value scales");
  PAGEDLLM_CHECK(reinterpret_cast<uintptr_t>(a.key_cache) % 16 == 0 && reinterpret_cast<uintptr_t>(a.value_cache) % 16 == 0,
                 InvalidArgument, "paged attention decode: key and value caches must be 16-byte aligned");
  PAGEDLLM_CHECK(a.num_seqs <= 65535, Unsupported, "paged attention decode: ", a.num_seqs,
                 " sequences in one call (at most 65535)");
  if (a.num_seqs <= 0 || a.num_tokens <= 0) return;
  PAGEDLLM_CHECK(a.decode_kernel >= 0 && a.decode_kernel <= 2, InvalidArgument, "paged attention decode: decode_kernel ",
                 a.decode_kernel, " (0 automatic, 1 SIMT, 2 tensor cores)");
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  if (a.decode_kernel != 1) {
    const std::string why = tc_unsupported(a);
    const bool usable = why.empty() && tc_kernel_usable(cuda.device().index);
    PAGEDLLM_CHECK(usable || a.decode_kernel == 0, Unsupported, "paged attention decode: the tensor-core kernel does not support ",
                   why.empty() ? std::string("this device (needs sm_80+ code)") : why);
    if (usable) {
      switch (a.shape.head_size) {
        case 64: return dispatch_tc<64>(a, cuda);
        case 80: return dispatch_tc<80>(a, cuda);
        case 96: return dispatch_tc<96>(a, cuda);
        case 128: return dispatch_tc<128>(a, cuda);
        case 256: return dispatch_tc<256>(a, cuda);
      }
    }
  }
  switch (a.shape.head_size) {
    case 64: return dispatch_cache_dtype<64>(a, cuda);
    case 80: return dispatch_cache_dtype<80>(a, cuda);
    case 96: return dispatch_cache_dtype<96>(a, cuda);
    case 128: return dispatch_cache_dtype<128>(a, cuda);
    case 256: return dispatch_cache_dtype<256>(a, cuda);
  }
  PAGEDLLM_FAIL(Unsupported, "paged attention decode: head size ", a.shape.head_size, " (supported: 64, 80, 96, 128, 256)");
}

}  // namespace pagedllm
