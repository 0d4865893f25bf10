// One allocator suite, instantiated for every resource and adaptor (RMM
// style). CPU resources run everywhere; CUDA resources skip, with the reason,
// where no GPU exists.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "../../cpu/cpu_stream.h"
#include "harness.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/tensor_ops.h"

using namespace pagedllm;

namespace {

struct ResourceCase {
  const char* name;
  bool cuda;
  std::function<MemoryResourcePtr()> make;
};

const std::vector<ResourceCase>& resource_cases() {
  static const std::vector<ResourceCase> cases = {
      {"host", false, [] { return make_host_resource(); }},
      {"pinned-host", false, [] { return make_pinned_host_resource(); }},
      {"pool(host)", false, [] { return make_pool_resource(make_host_resource(), 0, 0); }},
      {"pool(host, initial 4 MiB, max 1 GiB)", false, [] { return make_pool_resource(make_host_resource(), 4 << 20, 1 << 30); }},
      {"tracking(pool(host))", false, [] { return make_tracking_adaptor(make_pool_resource(make_host_resource(), 0, 0)); }},
      {"limit(pool(pinned-host))", false,
       [] { return make_limit_adaptor(make_pool_resource(make_pinned_host_resource(), 0, 0), uint64_t(1) << 30); }},
      {"cuda", true, [] { return make_cuda_resource(0); }},
      {"cuda-async", true, [] { return make_cuda_async_resource(0, 0); }},
      {"cuda-async(threshold max)", true, [] { return make_cuda_async_resource(0, UINT64_MAX); }},
      {"pool(cuda)", true, [] { return make_pool_resource(make_cuda_resource(0), 0, 0); }},
      {"tracking(pool(cuda))", true, [] { return make_tracking_adaptor(make_pool_resource(make_cuda_resource(0), 0, 0)); }},
  };
  return cases;
}

using ResourceTest = std::function<void(MemoryResource&, Stream&)>;

// Registers `name/<resource>` for every resource (every pool, with pools_only).
// A CUDA resource's test skips, with the reason, where no GPU exists.
struct ForEachResource {
  ForEachResource(const char* name, ResourceTest body, bool pools_only = false) {
    for (const ResourceCase& rc : resource_cases()) {
      if (pools_only && std::string(rc.name).find("pool") == std::string::npos) continue;
      test::Register(test::str(name, "/", rc.name), [rc, body] {
        if (rc.cuda) {
          static const CudaInfo info = cuda_info();
          if (!info.available) SKIP("no CUDA device: ", info.reason);
        }
        MemoryResourcePtr resource = rc.make();
        auto stream = default_stream(resource->device());
        body(*resource, *stream);
        stream->synchronize();
      });
    }
  }
};

#define RESOURCE_TEST(name, ...) \
  static void name(MemoryResource&, Stream&); \
  static ForEachResource register_##name(#name, name, ##__VA_ARGS__); \
  static void name

bool overlaps(const std::map<char*, size_t>& live, char* p, size_t n) {
  auto next = live.lower_bound(p);
  if (next != live.end() && next->first < p + n) return true;
  if (next != live.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second > p) return true;
  }
  return false;
}

// Keeps a stream busy for about `ms` milliseconds of queued work.
void delay(Stream& stream, int ms) {
  if (stream.device().is_cpu()) {
    as_cpu_stream(stream).enqueue([ms] { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); });
    return;
  }
  // On a GPU: fill a 256 MiB buffer repeatedly (about 0.1 ms each on an H100).
  static MemoryResourcePtr scratch_resource = make_cuda_resource(stream.device().index);
  const size_t n = size_t(64) << 20;
  void* scratch = scratch_resource->allocate(n * 4, stream);
  for (int i = 0; i < ms * 10; ++i) fill(scratch, DType::Float32, n, i, stream);
  scratch_resource->deallocate(scratch, n * 4, stream);
}

}  // namespace

RESOURCE_TEST(memory_zero_bytes_gives_null)(MemoryResource& mr, Stream& s) {
  CHECK(mr.allocate(0, s) == nullptr);
  mr.deallocate(nullptr, 0, s);
}

RESOURCE_TEST(memory_allocations_are_aligned_and_disjoint_over_random_sizes_and_order)(MemoryResource& mr, Stream& s) {
    std::mt19937 rng(11);
    std::map<char*, size_t> live;
    for (int i = 0; i < 2000; ++i) {
      if (!live.empty() && (rng() % 3 == 0 || live.size() > 200)) {
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        mr.deallocate(it->first, it->second, s);
        live.erase(it);
        continue;
      }
      const size_t bytes = rng() % 4 == 0 ? 1 + rng() % (4 << 20) : 1 + rng() % 5000;
      char* p = static_cast<char*>(mr.allocate(bytes, s));
      CHECK(p != nullptr);
      CHECK(reinterpret_cast<uintptr_t>(p) % kAllocationAlignment == 0, "size ", bytes);
      CHECK(!overlaps(live, p, bytes), "allocation of ", bytes, " overlaps a live one");
      live.emplace(p, bytes);
    }
    for (auto& [p, n] : live) mr.deallocate(p, n, s);
}

RESOURCE_TEST(memory_holds_data_until_freed)(MemoryResource& mr, Stream& s) {
    std::vector<std::pair<void*, size_t>> blocks;
    for (int i = 0; i < 40; ++i) {
      size_t n = 256 + 97 * i;
      void* p = mr.allocate(n * 4, s);
      fill(p, DType::Int32, n, i, s);
      blocks.push_back({p, n});
    }
    for (int i = 0; i < 40; ++i) {
      std::vector<int32_t> got(blocks[i].second);
      download(blocks[i].first, got.data(), got.size() * 4, s, [] {});
      s.synchronize();
      for (int32_t v : got) CHECK(v == i, "block ", i, " holds ", v);
    }
    for (auto& [p, n] : blocks) mr.deallocate(p, n * 4, s);
}

RESOURCE_TEST(memory_freed_block_reaches_another_stream_only_after_the_first_streams_work)(MemoryResource& mr, Stream& a) {
    auto b = create_stream(a.device());
    const size_t n = 1 << 16;
    void* block = mr.allocate(n * 4, a);
    delay(a, 50);
    fill(block, DType::Int32, n, 1, a);  // runs after the delay
    mr.deallocate(block, n * 4, a);      // ordered after the fill
    void* again = mr.allocate(n * 4, *b);  // a pool may hand out the same block: it must wait for `a`
    fill(again, DType::Int32, n, 2, *b);
    std::vector<int32_t> got(n);
    download(again, got.data(), n * 4, *b, [] {});
    b->synchronize();
    a.synchronize();
    for (size_t i = 0; i < n; i += 997) CHECK(got[i] == 2, "element ", i, " is ", got[i], ": stream b used the block before stream a was done");
    mr.deallocate(again, n * 4, *b);
    b->synchronize();
}

RESOURCE_TEST(memory_many_threads_at_once)(MemoryResource& mr, Stream& main_stream) {
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        try {
          auto s = (t % 2 == 0) ? create_stream(main_stream.device()) : main_stream.shared_from_this();
          std::mt19937 rng(100 + t);
          std::vector<std::pair<void*, size_t>> mine;
          for (int i = 0; i < 3000; ++i) {
            if (!mine.empty() && rng() % 2) {
              size_t k = rng() % mine.size();
              mr.deallocate(mine[k].first, mine[k].second, *s);
              mine[k] = mine.back();
              mine.pop_back();
            } else {
              size_t bytes = 1 + rng() % 100000;
              mine.push_back({mr.allocate(bytes, *s), bytes});
            }
          }
          for (auto& [p, n] : mine) mr.deallocate(p, n, *s);
          s->synchronize();
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures == 0);
}

RESOURCE_TEST(memory_limit_fails_with_a_ledger)(MemoryResource& base, Stream& s) {
    // Wrap each resource in a 1 MiB limit: the adaptor works over any of them.
    struct Borrowed final : MemoryResource {
      explicit Borrowed(MemoryResource& r) : r_(r) {}
      Device device() const override { return r_.device(); }
      std::string kind() const override { return r_.kind(); }
      void report(MemoryReport& out) override { r_.report(out); }
      void* do_allocate(size_t n, Stream& st, Category c) override { return r_.allocate(n, st, c); }
      void do_deallocate(void* p, size_t n, Stream& st, Category c) override { r_.deallocate(p, n, st, c); }
      MemoryResource& r_;
    };
    MemoryResourcePtr limited = make_tracking_adaptor(make_limit_adaptor(std::make_shared<Borrowed>(base), 1 << 20));
    void* a = limited->allocate(700 << 10, s, Category::Weights);
    bool threw = false;
    try {
      limited->allocate(400 << 10, s, Category::Activations);
    } catch (const OutOfMemoryError& e) {
      threw = true;
      CHECK(e.code() == ErrorCode::OutOfMemory);
      CHECK(e.requested == (400u << 10));
      CHECK(e.category == Category::Activations);
      CHECK(e.ledger.limit_bytes == (1u << 20));
      CHECK(e.ledger.has_usage && e.ledger.by_category[0].current_bytes == (700u << 10), "weights in use");
      CHECK(std::string(e.what()).find("in use: weights 700.00 KiB") != std::string::npos, e.what());
    }
    CHECK(threw, "the limit must throw");
    void* b = limited->allocate(300 << 10, s, Category::Activations);  // still fits
    limited->deallocate(a, 700 << 10, s, Category::Weights);
    limited->deallocate(b, 300 << 10, s, Category::Activations);
}

RESOURCE_TEST(memory_pool_returns_to_baseline_after_cycles_and_trim, true)(MemoryResource& mr, Stream& s) {
        MemoryReport before;
        mr.report(before);
        std::mt19937 rng(5);
        for (int cycle = 0; cycle < 50; ++cycle) {
          std::vector<std::pair<void*, size_t>> blocks;
          for (int i = 0; i < 30; ++i) {
            size_t n = 1 + rng() % (3 << 20);
            blocks.push_back({mr.allocate(n, s), n});
          }
          std::shuffle(blocks.begin(), blocks.end(), rng);
          for (auto& [p, n] : blocks) mr.deallocate(p, n, s);
        }
        MemoryReport grown;
        mr.report(grown);
        CHECK(grown.pool_reserved > before.pool_reserved, "the cycles must have grown the pool");
        CHECK(grown.pool_in_use == before.pool_in_use);
        mr.trim();
        MemoryReport after;
        mr.report(after);
        CHECK(after.pool_reserved == before.pool_reserved, "reserved ", after.pool_reserved, " vs baseline ", before.pool_reserved);
        CHECK(after.upstream_frees > 0);
}

TEST(memory_pool_trims_and_retries_once_before_failing) {
  auto s = default_stream(Device{DeviceKind::Cpu, 0});
  auto side = create_stream(Device{DeviceKind::Cpu, 0});
  MemoryResourcePtr pool = make_pool_resource(make_host_resource(), 0, 8 << 20);
  // Free 6 MiB on the side stream: the main stream can reuse it only by stealing (with a wait).
  void* x = pool->allocate(6 << 20, *side);
  pool->deallocate(x, 6 << 20, *side);
  void* y = pool->allocate(6 << 20, *s);  // stolen from `side`, no new chunk
  MemoryReport r;
  pool->report(r);
  CHECK(r.upstream_allocations == 1, "reuse across streams must not grow the pool");
  bool threw = false;
  try {
    pool->allocate(4 << 20, *s);  // 6 + 4 > 8 MiB maximum
  } catch (const OutOfMemoryError& e) {
    threw = true;
    CHECK(e.ledger.has_pool && e.ledger.pool_reserved == (6u << 20) && e.ledger.pool_in_use == (6u << 20));
    CHECK(e.ledger.retries == 1 && e.ledger.ooms == 1, "retries ", e.ledger.retries, " ooms ", e.ledger.ooms);
  }
  CHECK(threw);
  pool->deallocate(y, 6 << 20, *s);
  // The idle 6 MiB chunk is too small for 8 MiB: it goes back before the pool grows, so no retry is needed.
  void* z = pool->allocate(8 << 20, *s);
  pool->report(r);
  CHECK(r.retries == 1 && r.upstream_frees == 1 && r.pool_reserved == (8u << 20), "retries ", r.retries,
        " upstream frees ", r.upstream_frees, " reserved ", r.pool_reserved);
  pool->deallocate(z, 8 << 20, *s);
  s->synchronize();
}

TEST(memory_pool_steady_state_makes_no_upstream_allocations) {
  auto s = default_stream(Device{DeviceKind::Cpu, 0});
  MemoryResourcePtr pool = make_pool_resource(make_host_resource(), 0, 0);
  auto step = [&] {
    std::vector<std::pair<void*, size_t>> blocks;
    for (size_t n : {4096u, 1u << 20, 3000u, 70000u, 1u << 20, 256u}) blocks.push_back({pool->allocate(n, *s), n});
    for (auto& [p, n] : blocks) pool->deallocate(p, n, *s);
  };
  step();
  MemoryReport warm;
  pool->report(warm);
  for (int i = 0; i < 1000; ++i) step();
  MemoryReport after;
  pool->report(after);
  CHECK(after.upstream_allocations == warm.upstream_allocations);
  CHECK(after.pool_reserved == warm.pool_reserved);
}

TEST(memory_pool_reuses_the_last_large_block_and_coalesces_it_on_a_miss) {
  auto s = default_stream(Device{DeviceKind::Cpu, 0});
  constexpr size_t MiB = size_t(1) << 20;
  MemoryResourcePtr pool = make_pool_resource(make_host_resource(), 16 * MiB, 0);  // one 16 MiB chunk
  void* a = pool->allocate(4 * MiB, *s);
  void* b = pool->allocate(4 * MiB, *s);
  pool->deallocate(a, 4 * MiB, *s);
  CHECK(pool->allocate(4 * MiB, *s) == a, "a request of the last large block's size takes it back");
  pool->deallocate(a, 4 * MiB, *s);
  MemoryReport r;
  pool->report(r);  // the waiting block counts as free, coalesced: 4 MiB at the start, 8 MiB after b
  CHECK(r.pool_free == 12 * MiB && r.largest_free_extent == 8 * MiB, "free ", r.pool_free, " largest ", r.largest_free_extent);
  pool->deallocate(b, 4 * MiB, *s);
  // A different size folds the waiting block into the extents first: a, b and the rest are one
  // 16 MiB extent again, so 12 MiB fits with no new chunk.
  void* c = pool->allocate(12 * MiB, *s);
  pool->report(r);
  CHECK(c == a && r.upstream_allocations == 1 && r.pool_reserved == 16 * MiB, "upstream allocations ",
        r.upstream_allocations, " reserved ", r.pool_reserved);
  pool->deallocate(c, 12 * MiB, *s);
  pool->report(r);
  CHECK(r.largest_free_extent == 16 * MiB && r.pool_in_use == 0, "largest ", r.largest_free_extent);
  s->synchronize();
}

TEST(memory_pool_lets_go_of_streams_nobody_else_holds) {
  MemoryResourcePtr pool = make_pool_resource(make_host_resource(), 0, 0);
  std::weak_ptr<Stream> watch;
  {
    auto temporary = create_stream(Device{DeviceKind::Cpu, 0});
    watch = temporary;
    void* p = pool->allocate(1 << 20, *temporary);
    pool->deallocate(p, 1 << 20, *temporary);
  }
  CHECK(!watch.expired(), "the pool holds the stream its free memory belongs to");
  auto s = default_stream(Device{DeviceKind::Cpu, 0});
  void* q = pool->allocate(3 << 20, *s);  // misses: the orphaned stream's memory is taken over, the stream let go
  CHECK(watch.expired(), "an orphaned stream must be released when its memory is taken over");
  pool->deallocate(q, 3 << 20, *s);
  {
    auto temporary = create_stream(Device{DeviceKind::Cpu, 0});
    watch = temporary;
    pool->deallocate(pool->allocate(5 << 20, *temporary), 5 << 20, *temporary);
  }
  pool->trim();
  CHECK(watch.expired(), "trim() must release an orphaned stream whose chunks went back");
  s->synchronize();
}
