#!/usr/bin/env bash
# Packs what a GPU machine with no Node, npm or network needs to run everything of
# scripts/gpu-run.sh, built here: the CUDA test runner, kernel benchmarks and addon (stripped,
# xz), this machine's node binary (xz, ~24 MB), dist/, build-bench/ and the runtime node_modules
# (+ tinybench). Together about 42 MB, inside a device call's 64 MiB.
#
#   PAGEDLLM_CUDA_ARCHS=90 npm run build && npx tsc -p tsconfig.bench.json   # first
#   bash scripts/gpu-pack.sh                                                  # writes .gpu/
#   then on the GPU machine, with .gpu, dist and build-bench carried:
#   BUDGET=420 bash scripts/gpu-run.sh
#
# The binaries are built against this machine's glibc (Debian 12, 2.36); they ran as built on
# the H200 machine's image (2026-12-04). Where they do not, build there: scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu
for f in build/pagedllm_tests build/pagedllm_bench_attention build/pagedllm_bench_linear build/Release/pagedllm.node; do
  [ -f "$f" ] || { echo "gpu-pack: $f is missing: PAGEDLLM_CUDA_ARCHS=90 npm run build" >&2; exit 1; }
done
[ "$(node -p "require('./dist/native').native().buildInfo().cuda")" = true ] ||
  { echo "gpu-pack: the addon in build/Release was built without CUDA" >&2; exit 1; }
[ -f build-bench/decode.bench.js ] || { echo "gpu-pack: build-bench/ is missing: npx tsc -p tsconfig.bench.json" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/node_modules"
pack() { strip -o "$out/tmp" "$1" && xz -T0 -6 -c "$out/tmp" >"$out/$2.xz" && rm "$out/tmp"; }
pack build/pagedllm_tests pagedllm_tests
pack build/pagedllm_bench_attention pagedllm_bench_attention
pack build/pagedllm_bench_linear pagedllm_bench_linear
pack build/Release/pagedllm.node pagedllm.node
xz -T0 -6 -c "$(readlink -f "$(command -v node)")" >"$out/node.xz"
# Production dependencies (npm's own list) and the benchmarks' tinybench.
for dir in $(npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2) "$PWD/node_modules/tinybench"; do
  rel=${dir#"$PWD/node_modules/"}
  mkdir -p "$out/node_modules/$(dirname "$rel")"
  cp -r "$dir" "$out/node_modules/$rel"
done
git rev-parse --short HEAD >"$out/commit"
git diff --quiet HEAD -- cpu cuda include addon lib || echo "+uncommitted" >>"$out/commit"
du -sh "$out" dist build-bench
echo "carry: [\".gpu\", \"dist\", \"build-bench\"]; command: BUDGET=420 bash scripts/gpu-run.sh"
