// The AVX-512 build of the CPU attention tile (paged_attention_tile.h): the AVX2 code with 16-lane
// (512-bit) vectors, compiled for AVX-512 F/BW/VL + VNNI (and AVX2 + FMA + F16C) whatever the
// build's target. Called only when the CPU reports all of them (paged_attention.cpp), so one
// binary runs everywhere.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "simd_target.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

// Everything shared with other files is included before the target switch (see simd_target.h).
#include "pagedllm/convert.h"
#include "pagedllm/paged_attention.h"

PAGEDLLM_AVX512_BEGIN

#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 1
#define PAGEDLLM_TILE_AVX512 1
#define PAGEDLLM_TILE_NAMESPACE avx512
#include "paged_attention_tile.h"

namespace pagedllm::attention_cpu {
void attention_tile_avx512(const TileJob& job) { avx512::tile(job); }
}  // namespace pagedllm::attention_cpu

PAGEDLLM_AVX512_END

#else
#include "paged_attention_tile.h"
namespace pagedllm::attention_cpu {
void attention_tile_avx512(const TileJob& job) { attention_tile_portable(job); }  // never chosen off x86-64
}  // namespace pagedllm::attention_cpu
#endif
