// CPU streams: in-order execution, events across streams, failures reported at
// the next synchronisation, cross-stream copies.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../../cpu/cpu_stream.h"
#include "../../cpu/thread_pool.h"
#include "harness.h"
#include "pagedllm/error.h"
#include "pagedllm/tensor_ops.h"

using namespace pagedllm;

TEST(cpu_stream_runs_work_in_order) {
  CpuStream stream;
  std::vector<int> order;
  for (int i = 0; i < 1000; ++i) stream.enqueue([&order, i] { order.push_back(i); });
  stream.synchronize();
  CHECK(order.size() == 1000);
  for (int i = 0; i < 1000; ++i) CHECK(order[i] == i);
}

TEST(cpu_stream_enqueue_returns_before_work_runs) {
  CpuStream stream;
  std::atomic<bool> release{false}, ran{false};
  stream.enqueue([&] {
    while (!release) std::this_thread::yield();
    ran = true;
  });
  CHECK(!ran, "enqueue must not wait for the work");
  auto event = stream.record();
  CHECK(!event->query());
  release = true;
  event->synchronize();
  CHECK(ran && event->query());
}

TEST(event_orders_work_across_cpu_streams) {
  CpuStream producer, consumer;
  std::atomic<bool> release{false};
  int value = 0, seen = -1;
  producer.enqueue([&] {
    while (!release) std::this_thread::yield();
    value = 42;
  });
  consumer.wait(producer.record());
  consumer.enqueue([&] { seen = value; });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(seen == -1, "consumer ran before the event");
  release = true;
  consumer.synchronize();
  CHECK(seen == 42);
}

TEST(work_a_task_enqueues_on_its_own_stream_runs_inline_in_order) {
  // The CPU decoder step is one task that issues its ops on its own stream: they run at once, in
  // order, before anything queued later from outside; a failure among them fails the stream.
  CpuStream stream;
  std::vector<int> order;
  std::atomic<bool> release{false};
  stream.enqueue([&] {
    while (!release) std::this_thread::yield();
    order.push_back(0);
    for (int i = 1; i <= 3; ++i) stream.enqueue([&order, i] { order.push_back(i); });
    auto event = stream.record();
    CHECK(event->query(), "an event recorded from the worker is complete when the task moves on");
    order.push_back(4);
  });
  stream.enqueue([&] { order.push_back(5); });
  release = true;
  stream.synchronize();
  CHECK(order == std::vector<int>({0, 1, 2, 3, 4, 5}), "order ", order.size());
  stream.enqueue([&] {
    stream.enqueue([] { PAGEDLLM_FAIL(InvalidArgument, "inner op rejected"); });
    order.push_back(99);  // not reached: the inner failure ends the enclosing task
  });
  stream.enqueue([&] { order.push_back(6); });
  bool threw = false;
  try {
    stream.synchronize();
  } catch (const Error& e) {
    threw = e.code() == ErrorCode::InvalidArgument && std::string(e.what()) == "inner op rejected";
  }
  CHECK(threw, "synchronize must rethrow the inner failure");
  CHECK(order.back() == 6, "work after the failed task still runs");
}

TEST(failure_in_queued_work_is_reported_once_at_synchronize) {
  CpuStream stream;
  bool after = false;
  stream.enqueue([] { PAGEDLLM_FAIL(InvalidArgument, "boom"); });
  stream.enqueue([&] { after = true; });
  bool threw = false;
  try {
    stream.synchronize();
  } catch (const Error& e) {
    threw = e.code() == ErrorCode::InvalidArgument && std::string(e.what()) == "boom";
  }
  CHECK(threw, "synchronize must rethrow the queued failure");
  CHECK(after, "later work still runs");
  stream.synchronize();  // reported once
}

TEST(copy_bytes_across_cpu_streams_waits_for_the_source) {
  CpuStream a, b;
  std::vector<int> src(1 << 16, 0), dst(1 << 16, -1);
  std::atomic<bool> release{false};
  a.enqueue([&] {
    while (!release) std::this_thread::yield();
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<int>(i);
  });
  copy_bytes(src.data(), a, dst.data(), b, src.size() * sizeof(int));
  release = true;
  b.synchronize();
  for (size_t i = 0; i < dst.size(); ++i) CHECK(dst[i] == static_cast<int>(i), "element ", i);
}

TEST(destroying_a_stream_drains_its_queue) {
  std::atomic<int> count{0};
  {
    CpuStream stream;
    for (int i = 0; i < 100; ++i) stream.enqueue([&] { ++count; });
  }
  CHECK(count == 100);
}

// ---- the thread pool ------------------------------------------------------------------------

TEST(thread_pool_parallel_for_covers_every_index_once) {
  ThreadPool& pool = ThreadPool::global();
  for (int64_t n : {1, 2, 3, 7, 64, 1000}) {
    for (int64_t grain : {1, 3, 64}) {
      std::vector<std::atomic<int>> seen(n);
      pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
        CHECK(b < e && e - b <= grain && e <= n, "chunk [", b, ", ", e, ") of ", n, " by ", grain);
        for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) CHECK(seen[i].load() == 1, "n ", n, " grain ", grain, ": index ", i, " seen ", seen[i].load(), " times");
    }
  }
}

TEST(thread_pool_parallel_ranges_runs_every_item_once) {
  ThreadPool& pool = ThreadPool::global();
  for (int64_t n : {0, 1, 2, 3, 5, 17, 256, 4097}) {
    std::vector<std::atomic<int>> seen(n);
    // Uneven items (every seventh is slow), so that the ranges finish at different times and steal.
    pool.parallel_ranges(n, [&](int64_t i) {
      CHECK(i >= 0 && i < n, "item ", i, " of ", n);
      if (i % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
      seen[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) CHECK(seen[i].load() == 1, "n ", n, ": item ", i, " ran ", seen[i].load(), " times");
  }
}

TEST(thread_pool_parallel_ranges_starts_each_thread_at_a_range_start) {
  // Participant p owns items [p·n/P, (p+1)·n/P) and walks them front to back before it steals, so
  // each thread's first item is the start of a range and its first items run consecutively.
  ThreadPool& pool = ThreadPool::global();
  const int64_t n = 200, parts = std::min<int64_t>(pool.size(), n);
  std::mutex mutex;
  std::vector<std::vector<int64_t>> by_thread;
  std::vector<std::thread::id> ids;
  pool.parallel_ranges(n, [&](int64_t i) {
    std::lock_guard<std::mutex> lock(mutex);
    const auto id = std::this_thread::get_id();
    size_t t = 0;
    while (t < ids.size() && ids[t] != id) ++t;
    if (t == ids.size()) ids.push_back(id), by_thread.emplace_back();
    by_thread[t].push_back(i);
  });
  size_t total = 0;
  for (const auto& items : by_thread) {
    total += items.size();
    bool at_start = false;
    for (int64_t p = 0; p < parts; ++p) at_start = at_start || items.front() == n * p / parts;
    CHECK(at_start, "a thread began at item ", items.front(), ", not at the start of a range of ", parts);
  }
  CHECK(total == static_cast<size_t>(n));
  if (by_thread.size() == 1 && parts == 1)
    for (int64_t i = 0; i < n; ++i) CHECK(by_thread[0][i] == i, "one participant: item ", i, " came as ", by_thread[0][i]);
}

TEST(thread_pool_parallel_ranges_rethrows_and_nests) {
  ThreadPool& pool = ThreadPool::global();
  bool threw = false;
  try {
    pool.parallel_ranges(64, [&](int64_t i) {
      if (i == 33) throw std::runtime_error("item 33");
    });
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()).find("item 33") != std::string::npos;
  }
  CHECK(threw, "the item's exception reaches the caller");
  // Nested inside a parallel_for (as ops called from a pool task would be): no deadlock, all run.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(4, 1, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) pool.parallel_ranges(100, [&](int64_t i) { sum.fetch_add(i + 1); });
  });
  CHECK(sum.load() == 4 * 5050, "sum ", sum.load());
}
