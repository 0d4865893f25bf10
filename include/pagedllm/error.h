// Errors in layers (DESIGN.md §6): kernels return a status, host C++ throws
// pagedllm::Error with a stable code and file:line, addon/ turns it into a JS
// PagedLLMError. Nothing here ever exits or aborts the process.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace pagedllm {

// Stable codes; their spelling is public API (JS `error.code`).
enum class ErrorCode {
  InvalidArgument,  // ERR_INVALID_ARGUMENT
  Unsupported,      // ERR_UNSUPPORTED
  OutOfMemory,      // ERR_OUT_OF_MEMORY
  Disposed,         // ERR_DISPOSED
  ModelFormat,      // ERR_MODEL_FORMAT
  Cuda,             // ERR_CUDA
  Aborted,          // ERR_ABORTED
  NoBackend,        // ERR_NO_BACKEND
};

inline const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument: return "ERR_INVALID_ARGUMENT";
    case ErrorCode::Unsupported: return "ERR_UNSUPPORTED";
    case ErrorCode::OutOfMemory: return "ERR_OUT_OF_MEMORY";
    case ErrorCode::Disposed: return "ERR_DISPOSED";
    case ErrorCode::ModelFormat: return "ERR_MODEL_FORMAT";
    case ErrorCode::Cuda: return "ERR_CUDA";
    case ErrorCode::Aborted: return "ERR_ABORTED";
    case ErrorCode::NoBackend: return "ERR_NO_BACKEND";
  }
  return "ERR_UNKNOWN";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, const char* file = nullptr, int line = 0)
      : std::runtime_error(message), code_(code), where_(file ? std::string(file) + ":" + std::to_string(line) : "") {}
  ErrorCode code() const noexcept { return code_; }
  // "file:line" of the throw site (empty when unknown); kept out of the message
  // so messages stay exact and testable.
  const std::string& where() const noexcept { return where_; }

 private:
  ErrorCode code_;
  std::string where_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace detail

}  // namespace pagedllm

// PAGEDLLM_FAIL(InvalidArgument, "head_size ", h, " is not supported")
#define PAGEDLLM_FAIL(code, ...) \
  throw ::pagedllm::Error(::pagedllm::ErrorCode::code, ::pagedllm::detail::concat(__VA_ARGS__), __FILE__, __LINE__)

// Cheap second check of what the TS layer already validated.
#define PAGEDLLM_CHECK(cond, code, ...) \
  do {                                  \
    if (!(cond)) PAGEDLLM_FAIL(code, __VA_ARGS__); \
  } while (0)
