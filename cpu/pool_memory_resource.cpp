// The stream-ordered pool: our allocator over any upstream (DESIGN.md §3),
// used by both backends (over `host` on the CPU, over `cuda` on a GPU).
//
// Invariants (all under mutex_):
//  - Memory comes from the upstream in chunks (chunks_, by address); an extent
//    never spans two chunks, so whole free chunks can go back on trim().
//  - Free memory belongs to the stream it was freed on (one FreeList each). A
//    block freed on S is reused by S at once: S's later work runs after the
//    work that used it. Another stream T takes S's free memory only after
//    T.wait(S.record()), i.e. after everything queued on S so far (the frees
//    included) — the "event recorded at the free" of the contract, recorded
//    lazily when T needs the memory rather than at every free.
//  - A FreeList keeps coalesced extents twice (by address, to coalesce; by
//    (size, address), for best fit) and a cache of just-freed small blocks
//    (<= kMaxCachedBlock) by exact size. The cache makes the steady state of
//    fixed-shape work (decode steps) two hash look-ups per alloc+free pair; it
//    is folded into the extents only when a request misses. Of larger blocks
//    only the last one freed waits (in `large`): a request of exactly its size
//    takes it back, and anything else first folds it into the extents, so
//    every best fit, steal, trim and report sees the extents that coalescing
//    at the free would have made. (Large blocks are where fragmentation costs
//    most: leaving them uncoalesced past the next miss raised the trace's
//    reserved / peak in use from 1.02 to 1.46. The slot makes a 16 MiB
//    alloc+free pair as cheap as a small one instead of ~110-150 ns.)
//  - Growth: chunks of at least kMinChunkBytes. Before growing, wholly free
//    chunks smaller than the request go back to the upstream: they cannot
//    serve it, and keeping them would leave the footprint above the peak in
//    use (measured on the decode trace of benchmarks/allocators.bench.ts:
//    peak reserved / peak in use 1.28 without this, 1.02 with it).
//  - in_use_ + free bytes == reserved_.
#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "pagedllm/memory_resource.h"

namespace pagedllm {

namespace {

// Growth granule: chunks are at least this large (or the request, if larger).
constexpr size_t kMinChunkBytes = size_t(2) << 20;
// Freed blocks up to this size wait, uncoalesced, in the exact-size cache.
constexpr size_t kMaxCachedBlock = size_t(1) << 20;

class PoolMemoryResource final : public MemoryResource {
 public:
  PoolMemoryResource(MemoryResourcePtr upstream, uint64_t initial_bytes, uint64_t maximum_bytes)
      : upstream_(std::move(upstream)), maximum_(maximum_bytes) {
    PAGEDLLM_CHECK(upstream_ != nullptr, InvalidArgument, "pool: upstream is null");
    PAGEDLLM_CHECK(maximum_ == 0 || initial_bytes <= maximum_, InvalidArgument, "pool: initial size ", initial_bytes,
                   " exceeds the maximum ", maximum_);
    if (initial_bytes > 0) {
      std::shared_ptr<Stream> stream = default_stream(upstream_->device());
      std::lock_guard<std::mutex> lock(mutex_);
      FreeList& list = list_for(*stream);
      PAGEDLLM_CHECK(grow(list, *stream, align_up(initial_bytes), align_up(initial_bytes)), OutOfMemory,
                     "pool: cannot reserve its initial ", format_bytes(initial_bytes), " from ", upstream_->kind());
      initial_chunk_ = chunks_.begin()->first;  // kept by trim(): the reservation the caller asked for
    }
  }

  ~PoolMemoryResource() override {
    // Outstanding allocations at destruction are a caller bug; their chunks are leaked, not freed under them.
    for (auto& [stream, list] : lists_) flush_recent(*list);
    for (auto& [ptr, bytes] : chunks_) {
      for (auto& [stream, list] : lists_) {
        auto it = list->by_address.find(ptr);
        if (it != list->by_address.end() && it->second == bytes) {
          try {
            upstream_->deallocate(ptr, bytes, *list->stream);
          } catch (...) {
          }
          break;
        }
      }
    }
  }

  Device device() const override { return upstream_->device(); }
  std::string kind() const override { return "pool(" + upstream_->kind() + ")"; }

  void report(MemoryReport& out) override {
    upstream_->report(out);
    std::lock_guard<std::mutex> lock(mutex_);
    report_locked(out);
  }

  void trim() override {
    std::vector<std::shared_ptr<Stream>> released;  // destroyed after the lock is released
    std::lock_guard<std::mutex> lock(mutex_);
    release_free_chunks(SIZE_MAX);
    for (auto it = lists_.begin(); it != lists_.end();) {  // let go of orphaned streams with nothing left
      if (orphaned(*it->second) && it->second->by_address.empty()) {
        released.push_back(std::move(it->second->stream));
        if (last_stream_ == it->first) last_stream_ = nullptr, last_list_ = nullptr;
        it = lists_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  struct FreeList {
    std::shared_ptr<Stream> stream;
    std::map<char*, size_t> by_address;
    std::set<std::pair<size_t, char*>> by_size;
    std::unordered_map<size_t, std::vector<char*>> recent;  // freed, not yet coalesced, by exact size
    size_t recent_count = 0;
    char* large = nullptr;  // the last freed block > kMaxCachedBlock, not yet coalesced
    size_t large_bytes = 0;
    // Tree nodes kept for reuse: a split/coalesce cycle then allocates no node.
    std::vector<std::map<char*, size_t>::node_type> spare_address_nodes;
    std::vector<std::set<std::pair<size_t, char*>>::node_type> spare_size_nodes;
  };

  // Adds an extent to both indexes, reusing spare nodes.
  static void put_extent(FreeList& list, char* ptr, size_t bytes) {
    if (!list.spare_address_nodes.empty()) {
      auto node = std::move(list.spare_address_nodes.back());
      list.spare_address_nodes.pop_back();
      node.key() = ptr;
      node.mapped() = bytes;
      list.by_address.insert(std::move(node));
    } else {
      list.by_address.emplace(ptr, bytes);
    }
    if (!list.spare_size_nodes.empty()) {
      auto node = std::move(list.spare_size_nodes.back());
      list.spare_size_nodes.pop_back();
      node.value() = {bytes, ptr};
      list.by_size.insert(std::move(node));
    } else {
      list.by_size.emplace(bytes, ptr);
    }
  }

  // Removes the extent at `it` (an address-index iterator) from both indexes; returns the next one.
  static std::map<char*, size_t>::iterator drop_extent(FreeList& list, std::map<char*, size_t>::iterator it) {
    auto next = std::next(it);
    constexpr size_t kMaxSpare = 64;
    auto size_node = list.by_size.extract({it->second, it->first});
    auto address_node = list.by_address.extract(it);
    if (list.spare_size_nodes.size() < kMaxSpare) list.spare_size_nodes.push_back(std::move(size_node));
    if (list.spare_address_nodes.size() < kMaxSpare) list.spare_address_nodes.push_back(std::move(address_node));
    return next;
  }

  // ---- allocate / deallocate ---------------------------------------------------------

  void* do_allocate(size_t bytes, Stream& stream, Category category) override {
    const size_t rounded = align_up(bytes);
    PAGEDLLM_CHECK(rounded >= bytes, InvalidArgument, "pool: size ", bytes, " overflows");
    std::vector<std::shared_ptr<Stream>> released;  // destroyed after the lock is released
    std::lock_guard<std::mutex> lock(mutex_);
    FreeList& list = list_for(stream);
    for (int attempt = 0;; ++attempt) {
      if (char* p = try_allocate(list, stream, rounded, released)) {
        in_use_ += rounded;
        peak_in_use_ = std::max(peak_in_use_, in_use_);
        ++allocations_;
        return p;
      }
      if (attempt == 0) {  // give back what is idle, then try once more (counted)
        ++retries_;
        release_free_chunks(SIZE_MAX);
        continue;
      }
      ++ooms_;
      MemoryReport ledger;
      upstream_->report(ledger);
      report_locked(ledger);
      throw OutOfMemoryError(
          detail::concat("out of memory: cannot allocate ", format_bytes(bytes), " (", category_name(category), ") on ",
                         device().str(), ": pool holds ", format_bytes(reserved_), " (in use ", format_bytes(in_use_),
                         ", free ", format_bytes(reserved_ - in_use_), ", largest free extent ",
                         format_bytes(ledger.largest_free_extent), ")",
                         maximum_ ? detail::concat(" of at most ", format_bytes(maximum_)) : std::string(),
                         ledger.device_total ? detail::concat("; device free ", format_bytes(ledger.device_free), " of ",
                                                              format_bytes(ledger.device_total))
                                             : std::string()),
          bytes, category, ledger);
    }
  }

  void do_deallocate(void* ptr, size_t bytes, Stream& stream, Category) override {
    const size_t rounded = align_up(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    FreeList& list = list_for(stream);
    if (rounded <= kMaxCachedBlock) {
      list.recent[rounded].push_back(static_cast<char*>(ptr));
      ++list.recent_count;
    } else {
      flush_large(list);
      list.large = static_cast<char*>(ptr);
      list.large_bytes = rounded;
    }
    in_use_ -= rounded;
    ++frees_;
  }

  char* try_allocate(FreeList& list, Stream& stream, size_t rounded, std::vector<std::shared_ptr<Stream>>& released) {
    // 1. A block of exactly this size freed on this stream.
    auto hit = rounded <= kMaxCachedBlock ? list.recent.find(rounded) : list.recent.end();
    if (hit != list.recent.end() && !hit->second.empty()) {
      char* p = hit->second.back();
      hit->second.pop_back();
      --list.recent_count;
      return p;
    }
    if (list.large != nullptr && list.large_bytes == rounded) {  // the last large block freed, same size
      char* p = list.large;
      list.large = nullptr;
      return p;
    }
    flush_large(list);
    // 2. Best fit among this stream's extents, coalescing its cache first if that could help.
    if (char* p = take_best_fit(list, rounded)) return p;
    if (list.recent_count > 0) {
      flush_recent(list);
      if (char* p = take_best_fit(list, rounded)) return p;
    }
    // 3. Free memory of other streams, after waiting for their queued work.
    if (steal(list, stream, rounded, released)) {
      if (char* p = take_best_fit(list, rounded)) return p;
    }
    // 4. A new chunk from the upstream, after returning idle chunks too small to help.
    release_free_chunks(rounded);
    if (grow(list, stream, rounded, std::max(rounded, kMinChunkBytes))) return take_best_fit(list, rounded);
    return nullptr;
  }

  // ---- free lists ----------------------------------------------------------------------

  FreeList& list_for(Stream& stream) {
    if (&stream == last_stream_) return *last_list_;
    auto it = lists_.find(&stream);
    if (it == lists_.end()) {
      auto list = std::make_unique<FreeList>();
      list->stream = stream.shared_from_this();
      it = lists_.emplace(&stream, std::move(list)).first;
    }
    last_stream_ = &stream;
    last_list_ = it->second.get();
    return *last_list_;
  }

  char* take_best_fit(FreeList& list, size_t rounded) {
    auto it = list.by_size.lower_bound({rounded, nullptr});
    if (it == list.by_size.end()) return nullptr;
    const size_t size = it->first;
    char* p = it->second;
    drop_extent(list, list.by_address.find(p));
    if (size > rounded) put_extent(list, p + rounded, size - rounded);  // its neighbours were already coalesced with it
    return p;
  }

  // Adds [ptr, ptr + bytes) to the list's extents, merged with free neighbours of the same chunk.
  void insert_extent(FreeList& list, char* ptr, size_t bytes) {
    auto next = list.by_address.lower_bound(ptr);
    if (next != list.by_address.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == ptr && chunks_.count(ptr) == 0) {
        ptr = prev->first;
        bytes += prev->second;
        next = drop_extent(list, prev);
      }
    }
    if (next != list.by_address.end() && ptr + bytes == next->first && chunks_.count(next->first) == 0) {
      bytes += next->second;
      drop_extent(list, next);
    }
    put_extent(list, ptr, bytes);
  }

  void flush_large(FreeList& list) {
    if (list.large == nullptr) return;
    char* p = list.large;
    list.large = nullptr;
    insert_extent(list, p, list.large_bytes);
  }

  // Every block waiting uncoalesced (small cache and the large slot) into the extents.
  void flush_recent(FreeList& list) {
    flush_large(list);
    for (auto& [size, blocks] : list.recent) {
      for (char* p : blocks) insert_extent(list, p, size);
      blocks.clear();
    }
    list.recent_count = 0;
  }

  static size_t largest(const FreeList& list) { return list.by_size.empty() ? 0 : list.by_size.rbegin()->first; }

  // True when only this pool still holds the list's stream: nobody can queue
  // work on it any more, so its free memory should not stay parked there (and
  // the stream, a worker thread on the CPU, should be let go).
  static bool orphaned(const FreeList& list) { return list.stream.use_count() == 1; }

  // Moves other streams' free memory into `to`, ordering `stream` after their
  // queued work. First a single stream that holds a fitting extent; failing
  // that, all of them (coalescing may then make room). Orphaned streams' lists
  // are always taken.
  bool steal(FreeList& to, Stream& stream, size_t rounded, std::vector<std::shared_ptr<Stream>>& released) {
    if (lists_.size() < 2) return false;
    FreeList* fitting = nullptr;
    size_t other_free = 0;
    for (auto& [key, other] : lists_) {
      if (other.get() == &to) continue;
      flush_recent(*other);
      if (largest(*other) >= rounded && fitting == nullptr) fitting = other.get();
      for (auto& [ptr, bytes] : other->by_address) other_free += bytes;
    }
    if (fitting == nullptr && other_free == 0) return false;
    std::vector<Stream*> victims;
    for (auto& [key, other] : lists_) {
      if (other.get() == &to) continue;
      if (!orphaned(*other) && (other->by_address.empty() || (fitting != nullptr && other.get() != fitting))) continue;
      victims.push_back(key);
    }
    for (Stream* key : victims) {
      FreeList& other = *lists_.at(key);
      stream.wait(other.stream->record());
      for (auto& [ptr, bytes] : other.by_address) insert_extent(to, ptr, bytes);
      released.push_back(std::move(other.stream));
      if (last_stream_ == key) last_stream_ = nullptr, last_list_ = nullptr;
      lists_.erase(key);
    }
    return true;
  }

  bool grow(FreeList& list, Stream& stream, size_t rounded, size_t chunk) {
    if (maximum_ != 0 && reserved_ + chunk > maximum_) {
      if (reserved_ + rounded > maximum_) return false;
      chunk = (maximum_ - reserved_) / kAllocationAlignment * kAllocationAlignment;
    }
    void* p = nullptr;
    try {
      p = upstream_->allocate(chunk, stream, Category::Other);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::OutOfMemory) throw;
      if (chunk == rounded) return false;
      try {  // the granule did not fit; the request alone may
        chunk = rounded;
        p = upstream_->allocate(chunk, stream, Category::Other);
      } catch (const Error& e2) {
        if (e2.code() != ErrorCode::OutOfMemory) throw;
        return false;
      }
    }
    chunks_.emplace(static_cast<char*>(p), chunk);
    reserved_ += chunk;
    peak_reserved_ = std::max(peak_reserved_, reserved_);
    ++upstream_allocations_;
    insert_extent(list, static_cast<char*>(p), chunk);
    return true;
  }

  // Returns every wholly free chunk smaller than `below` (but the initial one)
  // to the upstream, on the stream it was freed on.
  void release_free_chunks(size_t below) {
    for (auto& [key, list] : lists_) flush_recent(*list);
    for (auto chunk = chunks_.begin(); chunk != chunks_.end();) {
      bool released = false;
      if (chunk->first == initial_chunk_ || chunk->second >= below) {
        ++chunk;
        continue;
      }
      for (auto& [key, list] : lists_) {
        auto it = list->by_address.find(chunk->first);
        if (it == list->by_address.end() || it->second != chunk->second) continue;
        drop_extent(*list, it);
        upstream_->deallocate(chunk->first, chunk->second, *list->stream);
        reserved_ -= chunk->second;
        ++upstream_frees_;
        released = true;
        break;
      }
      chunk = released ? chunks_.erase(chunk) : std::next(chunk);
    }
  }

  void report_locked(MemoryReport& out) {
    out.kind = kind();
    out.device = device();
    out.has_pool = true;
    out.pool_reserved = reserved_;
    out.pool_peak_reserved = peak_reserved_;
    out.pool_in_use = in_use_;
    out.pool_peak_in_use = peak_in_use_;
    out.pool_free = reserved_ - in_use_;
    size_t largest_extent = 0;
    for (auto& [key, list] : lists_) {
      flush_recent(*list);
      largest_extent = std::max(largest_extent, largest(*list));
    }
    out.largest_free_extent = largest_extent;
    out.allocations = allocations_;
    out.frees = frees_;
    out.upstream_allocations = upstream_allocations_;
    out.upstream_frees = upstream_frees_;
    out.retries = retries_;
    out.ooms = ooms_;
  }

  std::mutex mutex_;
  MemoryResourcePtr upstream_;
  const uint64_t maximum_;
  std::map<char*, size_t> chunks_;
  char* initial_chunk_ = nullptr;
  std::unordered_map<Stream*, std::unique_ptr<FreeList>> lists_;
  Stream* last_stream_ = nullptr;
  FreeList* last_list_ = nullptr;
  uint64_t reserved_ = 0, peak_reserved_ = 0, in_use_ = 0, peak_in_use_ = 0;
  uint64_t allocations_ = 0, frees_ = 0, upstream_allocations_ = 0, upstream_frees_ = 0, retries_ = 0, ooms_ = 0;
};

}  // namespace

MemoryResourcePtr make_pool_resource(MemoryResourcePtr upstream, uint64_t initial_bytes, uint64_t maximum_bytes) {
  return std::make_shared<PoolMemoryResource>(std::move(upstream), initial_bytes, maximum_bytes);
}

}  // namespace pagedllm
