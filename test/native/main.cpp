// Runs every registered test, or those whose name contains any of the arguments.
#include <chrono>
#include <cstdio>
#include <exception>

#include "harness.h"
#include "pagedllm/error.h"

namespace test {
std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}
}  // namespace test

int main(int argc, char** argv) {
  const auto selected = [&](const std::string& name) {
    if (argc < 2) return true;
    for (int i = 1; i < argc; ++i)
      if (name.find(argv[i]) != std::string::npos) return true;
    return false;
  };
  int passed = 0, failed = 0, skipped = 0;
  for (const test::Case& c : test::registry()) {
    if (!selected(c.name)) continue;
    const auto start = std::chrono::steady_clock::now();
    std::string status = "PASS", detail;
    try {
      c.fn();
      ++passed;
    } catch (const test::Skipped& s) {
      status = "SKIP", detail = s.reason, ++skipped;
    } catch (const test::Failure& f) {
      status = "FAIL", detail = f.message, ++failed;
    } catch (const pagedllm::Error& e) {
      status = "FAIL", detail = std::string(pagedllm::error_code_name(e.code())) + ": " + e.what() + " at " + e.where(), ++failed;
    } catch (const std::exception& e) {
      status = "FAIL", detail = std::string("exception: ") + e.what(), ++failed;
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s %s (%.1f ms)%s%s\n", status.c_str(), c.name.c_str(), ms, detail.empty() ? "" : ": ", detail.c_str());
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed == 0 ? 0 : 1;
}
