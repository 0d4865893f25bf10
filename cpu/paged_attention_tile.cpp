// The portable build of the CPU attention tile (paged_attention_tile.h), and
// the fp8 table all three builds share.
#define PAGEDLLM_TILE_IMPLEMENTATION
#define PAGEDLLM_TILE_AVX2 0
#define PAGEDLLM_TILE_NAMESPACE portable
#include "paged_attention_tile.h"

#include <vector>

#include "pagedllm/fp8.h"

namespace pagedllm::attention_cpu {

const float* fp8_table() {
  static const auto table = [] {
    std::vector<float> t(256);
    for (int i = 0; i < 256; ++i) t[i] = fp8_e4m3_to_float(static_cast<uint8_t>(i));
    return t;
  }();
  return table.data();
}

void attention_tile_portable(const TileJob& job) { portable::tile(job); }

}  // namespace pagedllm::attention_cpu
