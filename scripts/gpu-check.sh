#!/usr/bin/env bash
# Builds the native core and test runner with CMake alone (no Node, npm or
# network: the GPU machine has only cmake, nvcc and a C++ compiler), runs every
# native test (CUDA tests against the CPU twins), optionally under
# compute-sanitizer, and prints a short table. With RESULTS_DIR set, the report
# is also written there as gpu-check-<date>.md.
#
#   bash scripts/gpu-check.sh                   # build + tests
#   SANITIZE=1 bash scripts/gpu-check.sh        # + memcheck, racecheck, initcheck, synccheck over the runner
#   PAGEDLLM_CUDA_ARCHS=90 bash scripts/gpu-check.sh   # build only for the GPU at hand (faster)
#   SANITIZER_TIMEOUT=240                        # seconds per sanitizer tool (exit 124 when exceeded)
#   BENCH=1 bash scripts/gpu-check.sh            # + the native kernel benchmarks (JSON beside the report)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu-check}
archs=${PAGEDLLM_CUDA_ARCHS:-}
jobs=$(nproc 2>/dev/null || echo 4)

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${archs:+-DPAGEDLLM_CUDA_ARCHS="$archs"} >"$build.configure.log" 2>&1 \
  || { cat "$build.configure.log"; echo "gpu-check: configure failed"; exit 1; }
cmake --build "$build" -j "$jobs" >"$build.build.log" 2>&1 || { tail -50 "$build.build.log"; echo "gpu-check: build failed"; exit 1; }

log=$(mktemp)
"$build/pagedllm_tests" | tee "$log"
status=${PIPESTATUS[0]}

sanitizer_rows=""
if [ "${SANITIZE:-0}" = "1" ]; then
  if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck initcheck synccheck; do
      out=$(timeout "${SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool "$tool" --error-exitcode 99 "$build/pagedllm_tests" 2>&1)
      code=$?
      errors=$(printf '%s\n' "$out" | grep -Eo 'ERROR SUMMARY: [0-9]+ error' | grep -Eo '[0-9]+' | tail -1)
      summary=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, ' | tail -1)
      sanitizer_rows+="| $tool | ${errors:-?} errors | exit $code | ${summary:-no summary} |"$'\n'
      [ "$code" = 0 ] || status=1
      [ "$code" = 0 ] || printf '%s\n' "$out" | tail -40
    done
  else
    sanitizer_rows="| compute-sanitizer | not found on PATH | | |"$'\n'
  fi
fi

# Tensor-core instructions in the attention prefill kernels (HMMA on sm_80+; the SIMT path has none).
hmma=""
if command -v cuobjdump >/dev/null 2>&1; then
  obj=$(find "$build" -name 'paged_attention_prefill.cu.o' | head -1)
  [ -n "$obj" ] && hmma="HMMA instructions in paged_attention_prefill (sm_80+ SASS): $(cuobjdump --dump-sass "$obj" 2>/dev/null | grep -c HMMA)"
fi

bench_rows=""
if [ "${BENCH:-0}" = "1" ]; then
  stamp=$(date -u +%Y%m%d-%H%M%S)
  out="${RESULTS_DIR:-$build}/attention-native-$stamp.json"
  if "$build/pagedllm_bench_attention" --device cuda >"$out" 2>"$build.bench.log"; then
    bench_rows="attention benchmark: $out"
  else
    bench_rows="attention benchmark FAILED: $(tail -3 "$build.bench.log")"
    status=1
  fi
fi

device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
commit=${PAGEDLLM_COMMIT:-$(git describe --always --dirty --abbrev=7 2>/dev/null || echo unknown)}
report=$(
  echo "# gpu-check"
  echo
  echo "- device: ${device:-no NVIDIA GPU (nvidia-smi unavailable)}"
  echo "- commit: $commit"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- command: ${archs:+PAGEDLLM_CUDA_ARCHS=$archs }${SANITIZE:+SANITIZE=$SANITIZE }bash scripts/gpu-check.sh"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo
  echo "| result | test | time / detail |"
  echo "|---|---|---|"
  grep -E '^(PASS|FAIL|SKIP) ' "$log" | sed -E 's/^(PASS|FAIL|SKIP) ([^ ]+) (.*)$/| \1 | \2 | \3 |/'
  echo
  echo "**$(grep -E '^[0-9]+ passed, ' "$log" | tail -1)**"
  if [ -n "$hmma" ]; then
    echo
    echo "$hmma"
  fi
  if [ -n "$bench_rows" ]; then
    echo
    echo "$bench_rows"
  fi
  if [ -n "$sanitizer_rows" ]; then
    echo
    echo "| sanitizer tool | errors | exit | tests |"
    echo "|---|---|---|---|"
    printf '%s' "$sanitizer_rows"
  fi
)
echo
echo "$report"
if [ -n "${RESULTS_DIR:-}" ]; then
  mkdir -p "$RESULTS_DIR"
  echo "$report" >"$RESULTS_DIR/gpu-check-$(date -u +%Y%m%d-%H%M%S).md"
fi
rm -f "$log"
exit "$status"
