// paged_attention_prefill_cuda: prefill and mixed (chunked-prefill + decode)
// batches over the paged KV cache. Semantics: include/pagedllm/paged_attention.h;
// layout: include/pagedllm/paged_kv.h; CPU twin: cpu/paged_attention.cpp.
//
// FlashAttention-2 over a paged cache. One CTA (4 warps) owns a tile of BR
// query rows of one sequence and one KV head, and streams that head's keys
// and values through shared memory in tiles of BC positions (whole cache
// blocks: BC is a multiple of every block size), with an online softmax in
// float32 and O accumulated in float32 registers.
//
// - Rows are (token, query head of the GQA group) pairs, token-major: row
//   r of the sequence is new token r / group, query head
//   kv_head * group + r % group. A K/V tile loaded once serves every query
//   head that reads it (group-fold less KV traffic than one CTA per query
//   head), and a decode row fills `group` rows of a tile instead of one.
// - Tiles map to sequences without host knowledge of cu_seqlens_q (device
//   memory): the grid is (num_seqs × tiles_per_seq, num_kv_heads) with
//   tiles_per_seq = ceil(max_query_len · group / BR); a CTA past its sequence's
//   rows exits after reading two ints. Within a sequence the last tiles (the
//   most keys) are launched first.
// - KV tiles entirely above the causal diagonal or below every row's sliding
//   window are never visited; partial tiles are masked per element (−inf).
//   Loaders fill rows outside [lo(first row), last row's position] — which
//   covers every slot ≥ seq_len and every block-table entry past the
//   sequence's blocks — and rows whose block id is outside the cache with
//   zeros instead of reading them, so NaN-poisoned slots cannot reach P·V.
// - Tensor-core path (sm_80+, float16/bfloat16 q): S = Q·Kᵀ and O += P·V with
//   mma.sync m16n8k16 (f32 accumulate), operands from shared memory through
//   ldmatrix (.trans for V), P reused from the S accumulators as the A
//   operand. K/V tiles are stored in q's dtype: same-dtype caches are copied
//   with cp.async (V's load overlaps S, the next K's overlaps P·V); float32 /
//   int8 / fp8 / the other 16-bit dtype are converted (dequantized) on load.
//   Each warp owns 16 rows (BR 64); BC is 64 (32 for head size 256, which
//   also keeps Q in shared memory instead of registers to stay spill-free).
// - SIMT path (sm_75, and float32 q everywhere): the same tiling in float32
//   (BR 32 rows, 16 for head size 256; BC 32); a lane owns one key of the S
//   tile and head_size/32 dims of O; K and V take turns in one tile buffer.
//
// Instantiations: head size × {f16, bf16} × {cache dtype == q dtype (cp.async),
// anything else (a run-time switch in the loader: the branch is uniform and
// the loads dominate)} tensor-core kernels, plus one SIMT kernel per head
// size (q and cache dtypes switched at run time) — 25 kernels, ≈ 40 s of
// nvcc per sm_8x/sm_90 architecture on one core, ≈ 13 s for sm_75.
// Resources (ptxas, sm_80 / sm_90): tensor-core 195–244 registers, no
// spills (head 128: 207–212), __launch_bounds__(128, 1) so ptxas does not cap
// registers into spills; shared memory (64 + 2·BC)·(head_size + 8)·2 bytes =
// 27 KiB (64) … 51 KiB (128), 66 KiB (256), so 2 CTAs (8 warps) per SM;
// SIMT 143–169 registers, 20–50 KiB. Above 48 KiB the launcher opts in once
// per kernel and device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <climits>
#include <cstring>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "cuda_stream.h"
#include "mma.cuh"
#include "pagedllm/paged_attention.h"

namespace pagedllm {
namespace {

using namespace tc;  // smem_u32, ldmatrix, mma.sync, pack2: cuda/mma.cuh

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kThreads = 128;  // 4 warps per CTA on both paths

struct PrefillParams {
  const void* query;            // [num_tokens, num_heads, head_size] of dtype; token stride query_stride
  void* out;                    // [num_tokens, num_heads, head_size] of dtype
  const void* key_cache;        // [num_blocks, num_kv_heads, block_size, head_size] of the cache dtype
  const void* value_cache;      // [num_blocks, num_kv_heads, block_size, head_size]
  const float* key_scales;      // [num_blocks, num_kv_heads, block_size] (int8 / fp8 only)
  const float* value_scales;    // [num_blocks, num_kv_heads, block_size] (int8 / fp8 only)
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  const int32_t* seq_lens;      // [num_seqs]
  const int32_t* cu_seqlens_q;  // [num_seqs + 1], or null: one token per sequence
  const float* alibi_slopes;    // [num_heads], or null
  int64_t query_stride;
  int64_t max_blocks_per_seq;
  int num_blocks, num_heads, num_kv_heads, group, log2_block_size;
  int tiles_per_seq, max_query_len, max_seq_len;
  float scale, scale_log2, softcap;  // scale_log2 = scale · log2(e): logits live in base 2
  int sliding_window;
  DType dtype;
  KvCacheDType cache_dtype;
  bool query_vectorizable;  // 16-byte aligned query rows
};

// ---- device helpers: tiles and rows ------------------------------------------------------

// The query rows one CTA owns and the keys any of them may see.
struct Tile {
  int seq, kv_head, q_len, seq_len, row0, rows;  // rows of the sequence: q_len · group
  int64_t q_start;                          // first query row (token) of the sequence
  int kv_lo, kv_hi;                         // keys [kv_lo, kv_hi) are visible to some row
  int pos_min, lo_max;                      // every row sees [lo_max, pos_min]: no mask needed there
};

__device__ __forceinline__ int window_lo(int pos, int window) { return window > 0 ? max(0, pos - window + 1) : 0; }

template <int BR>
__device__ __forceinline__ bool map_tile(const PrefillParams& p, Tile& t) {
  const int seq = t.seq = blockIdx.x / p.tiles_per_seq;
  const int tile = p.tiles_per_seq - 1 - (blockIdx.x - seq * p.tiles_per_seq);  // heaviest first
  t.kv_head = blockIdx.y;
  int q_len = 1;
  t.q_start = seq;
  if (p.cu_seqlens_q) {
    t.q_start = p.cu_seqlens_q[seq];
    q_len = p.cu_seqlens_q[seq + 1] - p.cu_seqlens_q[seq];
  }
  t.q_len = min(q_len, p.max_query_len);  // larger values are caller bugs: clamp
  t.rows = t.q_len * p.group;
  t.row0 = tile * BR;
  if (t.row0 >= t.rows) return false;
  const int64_t table_len = p.max_blocks_per_seq << p.log2_block_size;
  t.seq_len = static_cast<int>(min(static_cast<int64_t>(min(p.seq_lens[seq], p.max_seq_len)), table_len));
  const int first = t.row0 / p.group, last = (min(t.row0 + BR, t.rows) - 1) / p.group;
  t.pos_min = t.seq_len - t.q_len + first;
  const int pos_max = t.seq_len - t.q_len + last;
  t.kv_lo = window_lo(t.pos_min, p.sliding_window);
  t.kv_hi = pos_max + 1;  // ≤ seq_len; ≤ kv_lo only for a seq_len < q_len caller bug
  t.lo_max = window_lo(pos_max, p.sliding_window);
  return true;
}

// One query row of a tile (rows past the sequence's end repeat its last row and are not stored).
struct Row {
  int64_t token;
  int head, pos, lo;
  float slope;
  bool valid;
};

__device__ __forceinline__ Row row_info(const PrefillParams& p, const Tile& t, int r) {
  Row row;
  int R = t.row0 + r;
  row.valid = R < t.rows;
  if (!row.valid) R = t.rows - 1;
  const int i = R / p.group;
  row.head = t.kv_head * p.group + (R - i * p.group);
  row.token = t.q_start + i;
  row.pos = t.seq_len - t.q_len + i;
  row.lo = window_lo(row.pos, p.sliding_window);
  row.slope = p.alibi_slopes ? p.alibi_slopes[row.head] : 0.0f;
  return row;
}

// Base-2 logit of key j for a row (−inf when masked).
__device__ __forceinline__ float logit2(float dot, const PrefillParams& p, const Row& row, int j, bool mask) {
  if (mask && (j < row.lo || j > row.pos)) return -INFINITY;
  if (p.softcap > 0.0f || p.alibi_slopes) {
    float x = dot * p.scale;
    if (p.softcap > 0.0f) x = p.softcap * tanhf(x / p.softcap);
    return (x + row.slope * static_cast<float>(j - row.pos)) * kLog2e;
  }
  return dot * p.scale_log2;
}

// ---- device helpers: element conversion -----------------------------------------------------

__device__ __forceinline__ float2 half2_bits_to_float2(uint32_t w) {
  __half2 h;
  memcpy(&h, &w, 4);
  return __half22float2(h);
}

// fp8 e4m3 -> float exactly: its bits shifted into a float16 (sign, 4-bit exponent
// under the 5-bit field, mantissa) give value / 2^8, subnormals included. (The NaN byte,
// which the writer never stores — it saturates to ±448 — would read as ±480.)
__device__ __forceinline__ float fp8_e4m3_value_over_256(uint32_t b) {
  const unsigned short h = static_cast<unsigned short>(((b & 0x80u) << 8) | ((b & 0x7fu) << 7));
  return __half2float(__ushort_as_half(h));
}

// Eight consecutive cache elements at `at`, dequantized (x = stored · scale for int8 / fp8).
template <KvCacheDType KV>
__device__ __forceinline__ void load8(const void* cache, int64_t at, float scale, float (&x)[8]) {
  if constexpr (KV == KvCacheDType::Float32) {
    const float4* src = reinterpret_cast<const float4*>(static_cast<const float*>(cache) + at);
    const float4 a = src[0], b = src[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
  } else if constexpr (KV == KvCacheDType::Float16 || KV == KvCacheDType::BFloat16) {
    const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(cache) + at);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (KV == KvCacheDType::Float16) {
        const float2 f = half2_bits_to_float2(w[i]);
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
      } else {
        x[2 * i] = __uint_as_float(w[i] << 16), x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      }
    }
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(cache) + at);
    const uint32_t w[2] = {u.x, u.y};
    const float s = KV == KvCacheDType::Int8 ? scale : scale * 256.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t b = (w[i / 4] >> (8 * (i % 4))) & 0xffu;
      if constexpr (KV == KvCacheDType::Int8) x[i] = static_cast<float>(static_cast<int8_t>(b)) * s;
      else x[i] = fp8_e4m3_value_over_256(b) * s;
    }
  }
}


template <typename T>
__device__ __forceinline__ T from_float_t(float v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

// Stores eight values at dst: 16 bytes of T, or eight floats (the SIMT tile's odd row stride).
template <typename S>
__device__ __forceinline__ void store8(S* dst, const float (&x)[8]) {
  if constexpr (std::is_same_v<S, float>) {
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[i] = x[i];
  } else {
    *reinterpret_cast<uint4*>(dst) = make_uint4(pack2<S>(x[0], x[1]), pack2<S>(x[2], x[3]), pack2<S>(x[4], x[5]),
                                                pack2<S>(x[6], x[7]));
  }
}

template <typename S>
__device__ __forceinline__ void store8_zero(S* dst) {
  if constexpr (std::is_same_v<S, float>) {
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[i] = 0.0f;
  } else {
    *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
  }
}

__device__ __forceinline__ float load_query(const void* q, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::Float16: return __half2float(static_cast<const __half*>(q)[i]);
    case DType::BFloat16: return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(q)[i]) << 16);
    default: return static_cast<const float*>(q)[i];
  }
}

__device__ __forceinline__ void store_out(void* out, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::Float16: static_cast<__half*>(out)[i] = __float2half_rn(v); break;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(out)[i] = v; break;
  }
}

// ---- device helpers: sm_80 instructions -------------------------------------------------------
// (Only the tensor-core kernel uses these; [[maybe_unused]] for the sm_75 pass, where its body is empty.)

[[maybe_unused]] __device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
#else
  *reinterpret_cast<uint4*>(smem) = *reinterpret_cast<const uint4*>(gmem);
#endif
}

// Waits for this thread's cp.async copies (the __syncthreads after it publishes them to the CTA).
[[maybe_unused]] __device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}


// ---- device helpers: tile loaders ---------------------------------------------------------------

// K or V positions [kv0, kv0 + BC) of one KV head into tile[BC][STRIDE] (elements of S). Rows
// outside [valid_lo, valid_hi) or in a block outside the cache become zeros without being read.
// The tile covers whole cache blocks; each thread moves 8-element chunks. kCopy: the cache holds
// S already (cp.async, 16 bytes a chunk); otherwise the cache dtype is a run-time switch (uniform
// across the CTA, and loads dominate), which keeps the instantiations to head sizes × q dtypes.
template <typename S, int D, int BC, int STRIDE, bool kCopy>
__device__ __forceinline__ void load_kv_tile(S* __restrict__ tile, const void* __restrict__ cache,
                                             const float* __restrict__ scales, const int32_t* __restrict__ table,
                                             int kv0, int valid_lo, int valid_hi, int kv_head, const PrefillParams& p) {
  constexpr int kChunks = D / 8;
  const int block_mask = (1 << p.log2_block_size) - 1;
  constexpr int kTotal = BC * kChunks;
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (kTotal % kThreads != 0 && c >= kTotal) break;
    const int r = c / kChunks, col = (c - r * kChunks) * 8;
    const int j = kv0 + r;
    S* dst = tile + r * STRIDE + col;
    int block = -1;
    if (j >= valid_lo && j < valid_hi) block = table[j >> p.log2_block_size];
    if (block < 0 || block >= p.num_blocks) {
      store8_zero(dst);
      continue;
    }
    const int64_t slot = (static_cast<int64_t>(block) * p.num_kv_heads + kv_head) * (block_mask + 1) + (j & block_mask);
    const int64_t at = slot * D + col;
    if constexpr (kCopy) {
      cp_async16(dst, static_cast<const uint16_t*>(cache) + at);
    } else {
      float x[8];
      switch (p.cache_dtype) {
        case KvCacheDType::Float32: load8<KvCacheDType::Float32>(cache, at, 1.0f, x); break;
        case KvCacheDType::Float16: load8<KvCacheDType::Float16>(cache, at, 1.0f, x); break;
        case KvCacheDType::BFloat16: load8<KvCacheDType::BFloat16>(cache, at, 1.0f, x); break;
        case KvCacheDType::Int8: load8<KvCacheDType::Int8>(cache, at, scales[slot], x); break;
        default: load8<KvCacheDType::Fp8E4M3>(cache, at, scales[slot], x); break;
      }
      store8(dst, x);
    }
  }
}

// ---- kernels -------------------------------------------------------------------------------------

template <int D>
struct TensorCoreTiles {
  static constexpr int BR = 64;               // 4 warps × 16 rows
  static constexpr int BC = D <= 128 ? 64 : 32;
  static constexpr int STRIDE = D + 8;        // +16 bytes a row: conflict-free ldmatrix
  static constexpr int kSmemBytes = (BR + 2 * BC) * STRIDE * 2;
};

// T: __half or __nv_bfloat16, the dtype of q and out (and of the K/V tiles in shared memory);
// kCopy: the cache dtype is T.
template <int D, typename T, bool kCopy>
__global__ void __launch_bounds__(kThreads, 1) prefill_tensor_core_kernel(const PrefillParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using C = TensorCoreTiles<D>;
  constexpr int BR = C::BR, BC = C::BC, STRIDE = C::STRIDE, kSteps = D / 16, kTilesN = BC / 8, kTilesD = D / 8;
  constexpr bool kQInRegisters = D <= 128;  // 256: Q fragments re-read from shared memory (registers)
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);  // [BR][STRIDE]
  T* k_tile = q_tile + BR * STRIDE;        // [BC][STRIDE]
  T* v_tile = k_tile + BC * STRIDE;        // [BC][STRIDE]

  Tile t;
  if (!map_tile<BR>(p, t)) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  const int32_t* table = p.block_tables + t.seq * p.max_blocks_per_seq;

  // Q tile: row r is (token, head) of row_info; rows past the sequence are zeros.
  for (int c = threadIdx.x; c < BR * (D / 8); c += kThreads) {
    const int r = c / (D / 8), col = (c % (D / 8)) * 8;
    const Row row = row_info(p, t, r);
    T* dst = q_tile + r * STRIDE + col;
    const T* src =
        static_cast<const T*>(p.query) + row.token * p.query_stride + static_cast<int64_t>(row.head) * D + col;
    if (!row.valid) store8_zero(dst);
    else if (p.query_vectorizable) *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    else
      for (int i = 0; i < 8; ++i) dst[i] = src[i];
  }
  const int n_begin = t.kv_lo / BC, n_end = t.kv_hi > t.kv_lo ? (t.kv_hi - 1) / BC + 1 : n_begin;
  if (n_begin < n_end)
    load_kv_tile<T, D, BC, STRIDE, kCopy>(k_tile, p.key_cache, p.key_scales, table, n_begin * BC, t.kv_lo, t.kv_hi,
                                       t.kv_head, p);
  cp_async_wait_all();
  __syncthreads();

  // This thread's rows of the accumulators: warp·16 + g and warp·16 + g + 8.
  const Row rows[2] = {row_info(p, t, warp * 16 + g), row_info(p, t, warp * 16 + g + 8)};
  uint32_t q_frag[kQInRegisters ? kSteps : 1][4];
  const T* q_warp = q_tile + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * STRIDE + (lane >> 4) * 8;
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) ldmatrix_x4(q_frag[ks], q_warp + ks * 16);
  }
  float o[kTilesD][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int n = n_begin; n < n_end; ++n) {
    const int kv0 = n * BC;
    load_kv_tile<T, D, BC, STRIDE, kCopy>(v_tile, p.value_cache, p.value_scales, table, kv0, t.kv_lo, t.kv_hi,
                                       t.kv_head, p);

    // S = Q·Kᵀ: K rows are the n of the B operand, so a plain ldmatrix gives its fragments.
    float s[kTilesN][4] = {};
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
      uint32_t a[4];
      if constexpr (kQInRegisters) {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = q_frag[ks][i];
      } else {
        ldmatrix_x4(a, q_warp + ks * 16);
      }
#pragma unroll
      for (int np = 0; np < kTilesN / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, k_tile + (np * 16 + (lane & 7) + (lane >> 4) * 8) * STRIDE + ks * 16 + ((lane >> 3) & 1) * 8);
        mma_16816<T>(s[2 * np], a, b[0], b[1]);
        mma_16816<T>(s[2 * np + 1], a, b[2], b[3]);
      }
    }

    // Online softmax (base 2) over this tile; a row's 4 owners are one lane quad.
    const bool mask = !(kv0 >= t.lo_max && kv0 + BC - 1 <= t.pos_min);
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kTilesN; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * ri + e];
          x = logit2(x, p, rows[ri], kv0 + nt * 8 + tig * 2 + e, mask);
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[ri], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: keep everything 0
      const float correction = exp2f(m[ri] - m_use);
      m[ri] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < kTilesN; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * ri + e];
          x = exp2f(x - m_use);
          sum += x;
        }
      l[ri] = l[ri] * correction + sum;  // this lane's columns; the quad is summed at the end
#pragma unroll
      for (int dn = 0; dn < kTilesD; ++dn) o[dn][2 * ri] *= correction, o[dn][2 * ri + 1] *= correction;
    }

    cp_async_wait_all();
    __syncthreads();  // V(n) visible; every warp is done with K(n)
    if (n + 1 < n_end)
      load_kv_tile<T, D, BC, STRIDE, kCopy>(k_tile, p.key_cache, p.key_scales, table, kv0 + BC, t.kv_lo, t.kv_hi,
                                         t.kv_head, p);

    // O += P·V: two S accumulator tiles form one A fragment; V (kv × d) is the B operand, transposed.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        const int row = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = dp * 16 + (lane >> 4) * 8;
        ldmatrix_x4_trans(b, v_tile + row * STRIDE + col);
        mma_16816<T>(o[2 * dp], a, b[0], b[1]);
        mma_16816<T>(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
    cp_async_wait_all();
    __syncthreads();  // K(n + 1) visible; every warp is done with V(n)
  }

#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    float sum = l[ri];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // 0 only for a seq_len < q_len caller bug
    const Row row = row_info(p, t, warp * 16 + g + 8 * ri);  // recomputed: less live across the loop
    if (!row.valid) continue;
    T* dst = static_cast<T*>(p.out) + (row.token * p.num_heads + row.head) * D + tig * 2;
#pragma unroll
    for (int dn = 0; dn < kTilesD; ++dn) {
      dst[dn * 8] = from_float_t<T>(o[dn][2 * ri] * inv);
      dst[dn * 8 + 1] = from_float_t<T>(o[dn][2 * ri + 1] * inv);
    }
  }
#else
  __trap();  // never launched: the host picks the SIMT kernel where this is not sm_80+ code
#endif
}

template <int D>
struct SimtTiles {
  static constexpr int R = D <= 128 ? 8 : 4;  // rows per warp
  static constexpr int BR = 4 * R;
  static constexpr int BC = 32;               // one key per lane
  static constexpr int STRIDE = D + 1;        // odd: lane j reading row j is conflict-free
  static constexpr int DC = (D + 31) / 32;    // O dims per lane
  static constexpr int kSmemBytes = (BR * D + BC * STRIDE + BR * BC) * 4;
};

// Float32 math for any q and cache dtype (run-time switches in the loaders and the output store).
template <int D>
__global__ void __launch_bounds__(kThreads, 1) prefill_simt_kernel(const PrefillParams p) {
  using C = SimtTiles<D>;
  constexpr int R = C::R, BR = C::BR, BC = C::BC, STRIDE = C::STRIDE, DC = C::DC;
  extern __shared__ __align__(16) unsigned char smem[];
  float* q_tile = reinterpret_cast<float*>(smem);  // [BR][D]
  float* kv_tile = q_tile + BR * D;                // [BC][STRIDE]: K, then V, of one KV tile
  float* p_tile = kv_tile + BC * STRIDE;           // [BR][BC] probabilities

  Tile t;
  if (!map_tile<BR>(p, t)) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t* table = p.block_tables + t.seq * p.max_blocks_per_seq;

  for (int c = threadIdx.x; c < BR * D; c += kThreads) {
    const int r = c / D, d = c % D;
    const Row row = row_info(p, t, r);
    const int64_t at = row.token * p.query_stride + static_cast<int64_t>(row.head) * D + d;
    q_tile[c] = row.valid ? load_query(p.query, p.dtype, at) : 0.0f;
  }
  Row rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) rows[r] = row_info(p, t, warp * R + r);
  float o[R][DC] = {}, m[R], l[R];
#pragma unroll
  for (int r = 0; r < R; ++r) m[r] = -INFINITY, l[r] = 0.0f;

  const int n_begin = t.kv_lo / BC, n_end = t.kv_hi > t.kv_lo ? (t.kv_hi - 1) / BC + 1 : n_begin;
  for (int n = n_begin; n < n_end; ++n) {
    const int kv0 = n * BC;
    load_kv_tile<float, D, BC, STRIDE, false>(kv_tile, p.key_cache, p.key_scales, table, kv0, t.kv_lo, t.kv_hi,
                                           t.kv_head, p);
    __syncthreads();
    float s[R] = {};
    const float* k_row = kv_tile + lane * STRIDE;
#pragma unroll 4
    for (int d = 0; d < D; d += 4) {
      const float k0 = k_row[d], k1 = k_row[d + 1], k2 = k_row[d + 2], k3 = k_row[d + 3];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 q = *reinterpret_cast<const float4*>(q_tile + (warp * R + r) * D + d);
        s[r] += q.x * k0 + q.y * k1 + q.z * k2 + q.w * k3;
      }
    }
    const bool mask = !(kv0 >= t.lo_max && kv0 + BC - 1 <= t.pos_min);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float x = logit2(s[r], p, rows[r], kv0 + lane, mask);
      float mx = x;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[r], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float correction = exp2f(m[r] - m_use);
      m[r] = m_new;
      const float prob = exp2f(x - m_use);
      l[r] = l[r] * correction + prob;  // this lane's key; the warp is summed at the end
#pragma unroll
      for (int c = 0; c < DC; ++c) o[r][c] *= correction;
      p_tile[(warp * R + r) * BC + lane] = prob;
    }
    __syncthreads();  // every warp is done with K
    load_kv_tile<float, D, BC, STRIDE, false>(kv_tile, p.value_cache, p.value_scales, table, kv0, t.kv_lo, t.kv_hi,
                                           t.kv_head, p);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < BC; ++j) {
      float v[DC];
#pragma unroll
      for (int c = 0; c < DC; ++c)
        v[c] = (D % 32 == 0 || lane + 32 * c < D) ? kv_tile[j * STRIDE + lane + 32 * c] : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float prob = p_tile[(warp * R + r) * BC + j];
#pragma unroll
        for (int c = 0; c < DC; ++c) o[r][c] += prob * v[c];
      }
    }
    __syncthreads();  // every warp is done with V and its probabilities
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    float sum = l[r];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const Row row = row_info(p, t, warp * R + r);
    if (!row.valid) continue;
    const int64_t base = (row.token * p.num_heads + row.head) * D;
#pragma unroll
    for (int c = 0; c < DC; ++c)
      if (D % 32 == 0 || lane + 32 * c < D) store_out(p.out, p.dtype, base + lane + 32 * c, o[r][c] * inv);
  }
}

// ---- launchers ----------------------------------------------------------------------------------

// Whether the tensor-core kernel runs as sm_80+ code on `device`: compute capability alone is not
// enough, since a build whose newest code is compute_75 PTX JIT-compiles it with an empty body.
// Cached per device.
bool tensor_cores_usable(int device) {
  static std::atomic<int> cached[64];  // 0: not asked yet, 1: no, 2: yes
  if (device >= 0 && device < 64) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known) return known == 2;
  }
  cudaFuncAttributes attr{};
  PAGEDLLM_CUDA_CHECK(cudaFuncGetAttributes(&attr, prefill_tensor_core_kernel<64, __half, true>));
  const bool usable = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
  if (device >= 0 && device < 64) cached[device].store(usable ? 2 : 1, std::memory_order_relaxed);
  return usable;
}

// Kernels needing more than 48 KiB of shared memory opt in once per (kernel, device).
void allow_shared_memory(const void* kernel, int bytes, int device) {
  if (bytes <= 48 * 1024) return;
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mutex);
  if (done.count({kernel, device})) return;
  PAGEDLLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.insert({kernel, device});
}

template <int D>
void run_prefill(const PrefillParams& base, int64_t num_seqs, bool tensor_cores, cudaStream_t stream, int device) {
  PrefillParams p = base;
  const int rows_per_tile = tensor_cores ? TensorCoreTiles<D>::BR : SimtTiles<D>::BR;
  const int64_t tiles = (static_cast<int64_t>(p.max_query_len) * p.group + rows_per_tile - 1) / rows_per_tile;
  PAGEDLLM_CHECK(num_seqs * tiles <= INT_MAX, InvalidArgument, "paged_attention: too many query tiles (num_seqs ",
                 num_seqs, ", max_query_len ", p.max_query_len, ")");
  PAGEDLLM_CHECK(p.num_kv_heads <= 65535, InvalidArgument, "paged_attention: num_kv_heads ", p.num_kv_heads,
                 " exceeds 65535");
  p.tiles_per_seq = static_cast<int>(tiles);
  const dim3 grid(static_cast<unsigned>(num_seqs * tiles), static_cast<unsigned>(p.num_kv_heads));
  void (*kernel)(PrefillParams) = prefill_simt_kernel<D>;
  int smem = SimtTiles<D>::kSmemBytes;
  if (tensor_cores) {
    const bool f16 = p.dtype == DType::Float16;
    const bool copy = p.cache_dtype == (f16 ? KvCacheDType::Float16 : KvCacheDType::BFloat16);
    kernel = f16 ? (copy ? prefill_tensor_core_kernel<D, __half, true> : prefill_tensor_core_kernel<D, __half, false>)
                 : (copy ? prefill_tensor_core_kernel<D, __nv_bfloat16, true>
                         : prefill_tensor_core_kernel<D, __nv_bfloat16, false>);
    smem = TensorCoreTiles<D>::kSmemBytes;
  }
  allow_shared_memory(reinterpret_cast<const void*>(kernel), smem, device);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  PAGEDLLM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

// ---- dispatch -------------------------------------------------------------------------------------

void paged_attention_prefill_cuda(const PagedAttentionArgs& a, Stream& stream) {
  if (a.num_tokens == 0 || a.num_seqs == 0 || a.max_query_len <= 0) return;
  CudaStream& cuda = as_cuda_stream(stream);
  cuda.activate();
  PAGEDLLM_CHECK(a.dtype == DType::Float32 || a.dtype == DType::Float16 || a.dtype == DType::BFloat16, Unsupported,
                 "paged_attention: query dtype ", dtype_name(a.dtype), " (supported: float32, float16, bfloat16)");
  const int64_t bs = a.shape.block_size;
  PAGEDLLM_CHECK(bs == 8 || bs == 16 || bs == 32, Unsupported, "paged_attention: block size ", bs,
                 " (supported: 8, 16, 32)");
  PAGEDLLM_CHECK(static_cast<uint32_t>(a.cache_dtype) <= static_cast<uint32_t>(KvCacheDType::Fp8E4M3), Unsupported,
                 "paged_attention: unknown KV cache dtype ", static_cast<int>(a.cache_dtype));
  PAGEDLLM_CHECK(!kv_dtype_is_quantized(a.cache_dtype) || (a.key_scales && a.value_scales), InvalidArgument,
                 "paged_attention: a ", kv_dtype_name(a.cache_dtype), " cache needs key and value scales");
  PAGEDLLM_CHECK(a.shape.num_kv_heads > 0 && a.num_heads % a.shape.num_kv_heads == 0, InvalidArgument,
                 "paged_attention: num_heads ", a.num_heads, " is not a multiple of num_kv_heads ",
                 a.shape.num_kv_heads);

  PrefillParams p{};
  p.query = a.query;
  p.out = a.out;
  p.key_cache = a.key_cache;
  p.value_cache = a.value_cache;
  p.key_scales = a.key_scales;
  p.value_scales = a.value_scales;
  p.block_tables = a.block_tables;
  p.seq_lens = a.seq_lens;
  p.cu_seqlens_q = a.cu_seqlens_q;
  p.alibi_slopes = a.alibi_slopes;
  p.query_stride = a.query_stride;
  p.max_blocks_per_seq = a.max_blocks_per_seq;
  p.num_blocks = static_cast<int>(a.shape.num_blocks);
  p.num_heads = static_cast<int>(a.num_heads);
  p.num_kv_heads = static_cast<int>(a.shape.num_kv_heads);
  p.group = static_cast<int>(a.num_heads / a.shape.num_kv_heads);
  p.log2_block_size = bs == 8 ? 3 : bs == 16 ? 4 : 5;
  p.max_query_len = static_cast<int>(a.cu_seqlens_q ? a.max_query_len : 1);
  p.max_seq_len = static_cast<int>(a.max_seq_len);
  p.scale = a.scale;
  p.scale_log2 = a.scale * kLog2e;
  p.softcap = a.softcap;
  p.sliding_window = a.sliding_window;
  p.dtype = a.dtype;
  p.cache_dtype = a.cache_dtype;
  p.query_vectorizable =
      reinterpret_cast<uintptr_t>(a.query) % 16 == 0 && (a.query_stride * dtype_size(a.dtype)) % 16 == 0;

  const int device = cuda.device().index;
  const bool tensor_cores = a.dtype != DType::Float32 && tensor_cores_usable(device);
  cudaStream_t s = cuda.handle();
  switch (a.shape.head_size) {
    case 64: return run_prefill<64>(p, a.num_seqs, tensor_cores, s, device);
    case 80: return run_prefill<80>(p, a.num_seqs, tensor_cores, s, device);
    case 96: return run_prefill<96>(p, a.num_seqs, tensor_cores, s, device);
    case 128: return run_prefill<128>(p, a.num_seqs, tensor_cores, s, device);
    case 256: return run_prefill<256>(p, a.num_seqs, tensor_cores, s, device);
  }
  PAGEDLLM_FAIL(Unsupported, "paged_attention: unsupported head size ", a.shape.head_size,
                " (supported: 64, 80, 96, 128, 256)");
}

}  // namespace pagedllm
