// CUDA tensor ops against the CPU twins (bit-identical results expected), and
// transfers in every direction. Each test skips, with the reason, where no
// usable CUDA device exists.
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <thread>
#include <random>
#include <vector>

#include "cuda_test.h"
#include "harness.h"
#include "pagedllm/convert.h"
#include "pagedllm/memory_resource.h"
#include "pagedllm/tensor_ops.h"
#include "reference.h"

using namespace pagedllm;

namespace {

using test::DeviceBuffer;
using test::gpu;
using test::require_cuda;

std::shared_ptr<Stream> cpu() { return default_stream(Device{DeviceKind::Cpu, 0}); }

std::vector<unsigned char> to_host(const DeviceBuffer& buffer) { return buffer.to_host(); }

}  // namespace

TEST(cuda_upload_download_round_trip) {
  require_cuda();
  for (size_t bytes : {size_t(1), size_t(255), size_t(4096), size_t(3) << 20}) {
    std::vector<unsigned char> data(bytes);
    std::mt19937 rng(static_cast<uint32_t>(bytes));
    for (auto& b : data) b = static_cast<unsigned char>(rng());
    DeviceBuffer d(bytes, gpu());
    upload(data.data(), d.ptr, bytes, *d.stream);
    CHECK(to_host(d) == data, bytes, " bytes");
  }
}

TEST(cuda_cast_matches_cpu_bit_for_bit) {
  require_cuda();
  const std::vector<float> values = test::interesting_floats(50000, 7);
  const size_t n = values.size();
  for (int s = 0; s < kNumDTypes; ++s) {
    for (int d = 0; d < kNumDTypes; ++d) {
      const DType sd = static_cast<DType>(s), dd = static_cast<DType>(d);
      std::vector<unsigned char> src(n * dtype_size(sd)), want(n * dtype_size(dd));
      PAGEDLLM_DISPATCH_DTYPE(sd, S, {
        for (size_t i = 0; i < n; ++i) reinterpret_cast<S*>(src.data())[i] = convert<S>(values[i]);
      });
      cast(src.data(), sd, want.data(), dd, n, *cpu());
      cpu()->synchronize();
      DeviceBuffer dsrc(src.size(), gpu()), ddst(want.size(), gpu());
      upload(src.data(), dsrc.ptr, src.size(), *gpu());
      cast(dsrc.ptr, sd, ddst.ptr, dd, n, *gpu());
      CHECK(to_host(ddst) == want, dtype_name(sd), " -> ", dtype_name(dd));
    }
  }
}

TEST(cuda_fill_matches_cpu) {
  require_cuda();
  for (int t = 0; t < kNumDTypes; ++t) {
    const DType dtype = static_cast<DType>(t);
    for (double value : {0.0, -1.5, 1e10, 3.14159}) {
      const size_t n = 100003;
      std::vector<unsigned char> want(n * dtype_size(dtype));
      fill(want.data(), dtype, n, value, *cpu());
      cpu()->synchronize();
      DeviceBuffer d(want.size(), gpu());
      fill(d.ptr, dtype, n, value, *gpu());
      CHECK(to_host(d) == want, dtype_name(dtype), " value ", value);
    }
  }
}

TEST(cuda_copy_strided_matches_cpu) {
  require_cuda();
  std::vector<uint16_t> src(4 * 5 * 6);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 7);
  DeviceBuffer dsrc(src.size() * 2, gpu());
  upload(src.data(), dsrc.ptr, dsrc.bytes, *gpu());
  StridedLayout layout;
  layout.ndim = 3;
  const int64_t shape[3] = {6, 5, 2}, strides[3] = {1, 6, 30};
  for (int d = 0; d < 3; ++d) layout.shape[d] = shape[d], layout.strides[d] = strides[d];
  std::vector<uint16_t> want(60);
  copy_strided(src.data() + 1, layout, 2, want.data(), *cpu());
  cpu()->synchronize();
  DeviceBuffer ddst(120, gpu());
  copy_strided(static_cast<char*>(dsrc.ptr) + 2, layout, 2, ddst.ptr, *gpu());
  std::vector<unsigned char> got = to_host(ddst);
  CHECK(std::memcmp(got.data(), want.data(), 120) == 0);
}

TEST(cuda_copy_bytes_between_cpu_and_gpu_streams) {
  require_cuda();
  const size_t n = 1 << 20;
  std::vector<float> host(n), back(n, -1.0f);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i);
  auto side = create_stream(Device{DeviceKind::Cuda, 0});
  DeviceBuffer a(n * 4, gpu()), b(n * 4, side);
  copy_bytes(host.data(), *cpu(), a.ptr, *gpu(), n * 4);   // CPU -> GPU
  copy_bytes(a.ptr, *gpu(), b.ptr, *side, n * 4);          // GPU -> GPU, across streams
  copy_bytes(b.ptr, *side, back.data(), *cpu(), n * 4);    // GPU -> CPU
  cpu()->synchronize();
  CHECK(back == host);
}

// A pinned block freed on a CPU stream, then a CPU -> GPU copy from that stream: the GPU's host
// function waits for the CPU stream to fill the staging buffer, which is queued after the free.
// cudaFreeHost waits for the whole device, so run on the CPU stream's worker it would wait for that
// host function while the host function waits for the worker (the pinned resource now frees on a
// thread of its own). A deadlock fails the test after 30 s, leaking the streams it is stuck on.
TEST(cuda_copy_to_gpu_after_a_pinned_free_on_the_source_stream) {
  require_cuda();
  auto source = create_stream(Device{DeviceKind::Cpu, 0});
  auto target = create_stream(Device{DeviceKind::Cuda, 0});
  MemoryResourcePtr pinned = make_pinned_host_resource();
  const size_t n = 1 << 20;
  std::vector<unsigned char> host(n, 0x5a), back(n, 0);
  DeviceBuffer dst(n, target);
  auto gate = std::make_shared<std::atomic<bool>>(false);
  source->enqueue_host([gate] {
    while (!gate->load()) std::this_thread::yield();
  });
  void* block = pinned->allocate(n, *source);
  pinned->deallocate(block, n, *source);               // queued behind the gate
  copy_bytes(host.data(), *source, dst.ptr, *target, n);  // its GPU half waits for the source stream
  gate->store(true);
  auto finished = std::make_shared<std::promise<void>>();
  std::future<void> done = finished->get_future();
  std::thread([source, target, finished] {
    try {
      target->synchronize();
      source->synchronize();
      finished->set_value();
    } catch (...) {
      finished->set_exception(std::current_exception());
    }
  }).detach();
  if (done.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    new std::shared_ptr<Stream>(source);  // stuck: never destroyed (destroying a stream drains it)
    new std::shared_ptr<Stream>(target);
  }
  CHECK(done.wait_for(std::chrono::seconds(0)) == std::future_status::ready,
        "the copy did not finish in 30 s: the pinned free on the CPU stream deadlocked with the GPU");
  done.get();
  dst.read(back.data(), n);
  CHECK(back == host);
}

TEST(cuda_stream_rejects_waiting_on_cpu_event) {
  require_cuda();
  bool threw = false;
  try {
    gpu()->wait(cpu()->record());
  } catch (const Error& e) {
    threw = e.code() == ErrorCode::Unsupported;
  }
  CHECK(threw);
}
