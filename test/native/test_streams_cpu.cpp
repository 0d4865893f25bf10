// CPU streams: in-order execution, events across streams, failures reported at
// the next synchronisation, cross-stream copies.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "../../cpu/cpu_stream.h"
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
