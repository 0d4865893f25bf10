// Adaptors over any resource (RMM style): accounting by category and a limit.
// Both forward report() and trim() to the resource they wrap.
#include <cinttypes>
#include <cstdio>
#include <mutex>

#include "pagedllm/memory_resource.h"

namespace pagedllm {

const char* category_name(Category category) {
  switch (category) {
    case Category::Weights: return "weights";
    case Category::KvCache: return "kv-cache";
    case Category::Activations: return "activations";
    case Category::Workspace: return "workspace";
    case Category::Other: return "other";
  }
  return "other";
}

Category category_from_int(int32_t value) {
  PAGEDLLM_CHECK(value >= 0 && value < kNumCategories, InvalidArgument, "unknown memory category ", value);
  return static_cast<Category>(value);
}

std::string format_bytes(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) value /= 1024.0, ++unit;
  char text[32];
  if (unit == 0) std::snprintf(text, sizeof text, "%" PRIu64 " B", bytes);
  else std::snprintf(text, sizeof text, "%.2f %s", value, units[unit]);
  return text;
}

namespace {

void count_allocation(UsageCounters& c, uint64_t bytes) {
  c.current_bytes += bytes;
  c.peak_bytes = std::max(c.peak_bytes, c.current_bytes);
  c.total_bytes += bytes;
  ++c.current_count;
  c.peak_count = std::max(c.peak_count, c.current_count);
  ++c.total_count;
}

void count_free(UsageCounters& c, uint64_t bytes) {
  c.current_bytes -= bytes;
  --c.current_count;
}

// ---- tracking: statistics per category and in total -----------------------------------

class TrackingAdaptor final : public MemoryResource {
 public:
  explicit TrackingAdaptor(MemoryResourcePtr upstream) : upstream_(std::move(upstream)) {
    PAGEDLLM_CHECK(upstream_ != nullptr, InvalidArgument, "tracking adaptor: upstream is null");
  }
  Device device() const override { return upstream_->device(); }
  std::string kind() const override { return "tracking(" + upstream_->kind() + ")"; }
  void trim() override { upstream_->trim(); }
  void report(MemoryReport& out) override {
    upstream_->report(out);
    out.kind = kind();
    std::lock_guard<std::mutex> lock(mutex_);
    out.has_usage = true;
    out.total = total_;
    out.by_category = by_category_;
  }

 private:
  void* do_allocate(size_t bytes, Stream& stream, Category category) override {
    void* ptr;
    try {
      ptr = upstream_->allocate(bytes, stream, category);
    } catch (const OutOfMemoryError& e) {
      // Add what only this layer knows: who holds the memory.
      MemoryReport ledger = e.ledger;
      std::string usage;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ledger.has_usage = true;
        ledger.total = total_;
        ledger.by_category = by_category_;
      }
      for (int c = 0; c < kNumCategories; ++c) {
        usage += detail::concat(c ? ", " : "", category_name(static_cast<Category>(c)), " ",
                                format_bytes(ledger.by_category[c].current_bytes));
      }
      throw OutOfMemoryError(detail::concat(e.what(), "; in use: ", usage), e.requested, e.category, ledger);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    count_allocation(total_, bytes);
    count_allocation(by_category_[static_cast<int>(category)], bytes);
    return ptr;
  }

  void do_deallocate(void* ptr, size_t bytes, Stream& stream, Category category) override {
    upstream_->deallocate(ptr, bytes, stream, category);
    std::lock_guard<std::mutex> lock(mutex_);
    count_free(total_, bytes);
    count_free(by_category_[static_cast<int>(category)], bytes);
  }

  MemoryResourcePtr upstream_;
  std::mutex mutex_;
  UsageCounters total_;
  std::array<UsageCounters, kNumCategories> by_category_{};
};

// ---- limit: a cap on the bytes in use ---------------------------------------------------

class LimitAdaptor final : public MemoryResource {
 public:
  LimitAdaptor(MemoryResourcePtr upstream, uint64_t limit) : upstream_(std::move(upstream)), limit_(limit) {
    PAGEDLLM_CHECK(upstream_ != nullptr, InvalidArgument, "limit adaptor: upstream is null");
  }
  Device device() const override { return upstream_->device(); }
  std::string kind() const override { return "limit(" + upstream_->kind() + ")"; }
  void trim() override { upstream_->trim(); }
  void report(MemoryReport& out) override {
    upstream_->report(out);
    out.kind = kind();
    out.limit_bytes = limit_;
  }

 private:
  void* do_allocate(size_t bytes, Stream& stream, Category category) override {
    const uint64_t rounded = align_up(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (used_ + rounded > limit_) {
        MemoryReport ledger;
        upstream_->report(ledger);
        ledger.limit_bytes = limit_;
        throw OutOfMemoryError(detail::concat("out of memory: cannot allocate ", format_bytes(bytes), " (",
                                              category_name(category), ") on ", device().str(), ": limit ",
                                              format_bytes(limit_), ", ", format_bytes(used_), " in use"),
                               bytes, category, ledger);
      }
      used_ += rounded;
    }
    try {
      return upstream_->allocate(bytes, stream, category);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      used_ -= rounded;
      throw;
    }
  }

  void do_deallocate(void* ptr, size_t bytes, Stream& stream, Category category) override {
    upstream_->deallocate(ptr, bytes, stream, category);
    std::lock_guard<std::mutex> lock(mutex_);
    used_ -= align_up(bytes);
  }

  MemoryResourcePtr upstream_;
  const uint64_t limit_;
  std::mutex mutex_;
  uint64_t used_ = 0;
};

}  // namespace

MemoryResourcePtr make_tracking_adaptor(MemoryResourcePtr upstream) {
  return std::make_shared<TrackingAdaptor>(std::move(upstream));
}

MemoryResourcePtr make_limit_adaptor(MemoryResourcePtr upstream, uint64_t limit_bytes) {
  PAGEDLLM_CHECK(limit_bytes > 0, InvalidArgument, "limit adaptor: the limit must be positive");
  return std::make_shared<LimitAdaptor>(std::move(upstream), limit_bytes);
}

}  // namespace pagedllm
