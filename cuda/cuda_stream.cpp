#include "cuda_stream.h"

namespace pagedllm {

void cuda_check(cudaError_t status, const char* what, const char* file, int line) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls are not blamed for it
  const ErrorCode code = status == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::Cuda;
  throw Error(code, detail::concat(what, " failed: ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")"),
              file, line);
}

// ---- CudaEvent ------------------------------------------------------------------

CudaEvent::CudaEvent(int device_index) : device_index_(device_index) {
  PAGEDLLM_CUDA_CHECK(cudaSetDevice(device_index));
  PAGEDLLM_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
}

CudaEvent::~CudaEvent() {
  if (event_) cudaEventDestroy(event_);
}

bool CudaEvent::query() {
  cudaError_t status = cudaEventQuery(event_);
  if (status == cudaErrorNotReady) return false;
  PAGEDLLM_CUDA_CHECK(status);
  return true;
}

void CudaEvent::synchronize() { PAGEDLLM_CUDA_CHECK(cudaEventSynchronize(event_)); }

// ---- CudaStream -----------------------------------------------------------------

CudaStream::CudaStream(int device_index) : device_index_(device_index) {
  PAGEDLLM_CUDA_CHECK(cudaSetDevice(device_index));
  PAGEDLLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

CudaStream::~CudaStream() {
  if (stream_) cudaStreamDestroy(stream_);  // returns at once; pending work still completes
}

void CudaStream::activate() const { PAGEDLLM_CUDA_CHECK(cudaSetDevice(device_index_)); }

namespace {
void CUDART_CB run_host_function(void* data) {
  std::unique_ptr<std::function<void()>> fn(static_cast<std::function<void()>*>(data));
  (*fn)();
}
}  // namespace

void CudaStream::enqueue_host(std::function<void()> fn) {
  auto* boxed = new std::function<void()>(std::move(fn));
  cudaError_t status = cudaLaunchHostFunc(stream_, run_host_function, boxed);
  if (status != cudaSuccess) delete boxed;
  PAGEDLLM_CUDA_CHECK(status);
}

std::shared_ptr<Event> CudaStream::record() {
  auto event = std::make_shared<CudaEvent>(device_index_);
  PAGEDLLM_CUDA_CHECK(cudaEventRecord(event->handle(), stream_));
  return event;
}

void CudaStream::wait(const std::shared_ptr<Event>& event) {
  PAGEDLLM_CHECK(event != nullptr, InvalidArgument, "wait: event is null");
  auto* cuda_event = dynamic_cast<CudaEvent*>(event.get());
  PAGEDLLM_CHECK(cuda_event != nullptr, Unsupported,
                 "a CUDA stream cannot wait on a CPU event; synchronize the CPU stream first");
  PAGEDLLM_CUDA_CHECK(cudaStreamWaitEvent(stream_, cuda_event->handle(), 0));
}

void CudaStream::synchronize() { PAGEDLLM_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

std::exception_ptr CudaStream::take_error() {
  cudaError_t status = cudaStreamQuery(stream_);
  if (status == cudaSuccess || status == cudaErrorNotReady) return nullptr;
  try {
    PAGEDLLM_CUDA_CHECK(status);
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

CudaStream& as_cuda_stream(Stream& stream) {
  auto* cuda = dynamic_cast<CudaStream*>(&stream);
  PAGEDLLM_CHECK(cuda != nullptr, InvalidArgument, "expected a CUDA stream, got a stream on ", stream.device().str());
  return *cuda;
}

std::shared_ptr<Stream> create_cuda_stream(int device_index) {
  int count = 0;
  PAGEDLLM_CUDA_CHECK(cudaGetDeviceCount(&count));
  PAGEDLLM_CHECK(device_index >= 0 && device_index < count, InvalidArgument, "cuda:", device_index,
                 " does not exist (", count, " CUDA device", count == 1 ? "" : "s", ")");
  return std::make_shared<CudaStream>(device_index);
}

}  // namespace pagedllm
