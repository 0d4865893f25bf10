// The native test runner's tiny harness (no third-party framework: the GPU
// machine has only cmake, nvcc and a compiler). Each TEST throws on its first
// failed CHECK; SKIP(reason) reports the test skipped with its reason. The
// runner prints one line per test and ends with "N passed, N failed, N skipped".
#pragma once

#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace test {

struct Case {
  std::string name;
  std::function<void()> fn;
};
std::vector<Case>& registry();
struct Register {
  Register(std::string name, std::function<void()> fn) { registry().push_back({std::move(name), std::move(fn)}); }
};

struct Failure {
  std::string message;
};
struct Skipped {
  std::string reason;
};

template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  out.precision(9);
  (out << ... << args);
  return out.str();
}

}  // namespace test

#define TEST(name)                                      \
  static void name();                                   \
  static ::test::Register register_##name(#name, name); \
  static void name()

#define CHECK(cond, ...)                                                                                  \
  do {                                                                                                    \
    if (!(cond)) throw ::test::Failure{::test::str(__FILE__, ":", __LINE__, ": ", #cond, " " __VA_OPT__(, ) __VA_ARGS__)}; \
  } while (0)

#define SKIP(...) throw ::test::Skipped{::test::str(__VA_ARGS__)}
