// The AVX2 + FMA + F16C build of the CPU attention tile
// (paged_attention_tile.h). Compiled for those instructions whatever the
// build's target, and called only when the CPU reports all three
// (paged_attention.cpp), so one binary runs everywhere.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "simd_target.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

// Everything shared with other files is included before the target switch, so
// that no inline function or template instance they share is compiled for AVX2.
#include "pagedllm/convert.h"
#include "pagedllm/paged_attention.h"

PAGEDLLM_AVX2_BEGIN

#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 1
#define PAGEDLLM_TILE_NAMESPACE avx2
#include "paged_attention_tile.h"

namespace pagedllm::attention_cpu {
void attention_tile_avx2(const TileJob& job) { avx2::tile(job); }
}  // namespace pagedllm::attention_cpu

PAGEDLLM_AVX2_END

#else
#include "paged_attention_tile.h"
namespace pagedllm::attention_cpu {
void attention_tile_avx2(const TileJob& job) { attention_tile_portable(job); }  // never chosen off x86-64
}  // namespace pagedllm::attention_cpu
#endif
