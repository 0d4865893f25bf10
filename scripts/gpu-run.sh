#!/usr/bin/env bash
# One call on a GPU machine (cmake/nvcc/python3 with PyTorch + Transformers, no Node, no network),
# with what scripts/gpu-pack.sh put in .gpu/ and dist/ + build-bench/ carried. Timed work runs
# first and alone; then the plain CUDA test run, compute-sanitizer over sets of tests and the
# comparison with Transformers run side by side (nothing timed). Every step has a time cap within
# BUDGET seconds; logs and JSON go to $OUT/results.tar.gz (or ./gpu-results/), and a summary
# ends the output.
#
#   BUDGET=420 STEPS=bench,profile,allocators,e2e,hfgen,tests,sanitize,hf LAYERS=8 bash scripts/gpu-run.sh
#
# e2e: a Llama-2-7B-shaped model (LAYERS of its 32 layers; fp16 and random AWQ int4) through
# bench:decode at batch 1 and 64 with 512-token prompts; hfgen: Transformers' generate() on the
# same fp16 folder, in the same call.
set -u
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-420}
STEPS=",${STEPS:-bench,profile,allocators,e2e,hfgen,tests,sanitize,hf},"
TESTS=${TESTS:-cuda}  # the plain test run's name filters (every CUDA test); ';' splits it into parallel runs
LAYERS=${LAYERS:-8}
R=/tmp/gpu-results
DEST=${OUT:-$PWD/gpu-results}
rm -rf $R && mkdir -p $R "$DEST"
exec > >(tee $R/session.log) 2>&1
want() { [[ $STEPS == *",$1,"* ]]; }
left() { echo $((BUDGET - SECONDS)); }
cap() { local l=$(( $(left) - 15 )); [ $l -lt $1 ] && echo $l || echo $1; }
step() {  # step NAME MAXSECONDS command... (foreground, time-capped)
  local name=$1 max=$2; shift 2
  local t; t=$(cap $max)
  if [ $t -lt 10 ]; then echo "== $name: not run (budget)"; return; fi
  echo "== $name (cap ${t}s, t=${SECONDS}s)"
  local s=$SECONDS
  timeout -k 5 $t "$@" >$R/$name.log 2>&1
  echo "== $name rc=$? in $((SECONDS - s))s"; tail -${TAILN:-6} $R/$name.log
}
pack() { find benchmarks/results -name 'allocators-*.json' -newer .gpu/commit -exec cp {} $R/ \; 2>/dev/null; tar -czf "$DEST/results.tar.gz" -C /tmp gpu-results; }
trap pack EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "commit $(cat .gpu/commit 2>/dev/null | tr '\n' ' ')"; date -u
mkdir -p build/Release /tmp/gpu-bin
for f in pagedllm_tests pagedllm_bench_attention pagedllm_bench_linear; do xz -dc .gpu/$f.xz >build/$f && chmod +x build/$f; done
xz -dc .gpu/pagedllm.node.xz >build/Release/pagedllm.node
xz -dc .gpu/node.xz >/tmp/gpu-bin/node && chmod +x /tmp/gpu-bin/node
[ -e node_modules ] || mv .gpu/node_modules node_modules
export PATH=/tmp/gpu-bin:$PATH PYTHONUNBUFFERED=1
node -e "console.log(JSON.stringify(require('./dist').devices().cuda))"
(while true; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; sleep 5; done >$R/smi.log 2>&1) &
SMI=$!

# ---- timed, alone ----
if want bench; then
  TAILN=14 step bench-attention 60 build/pagedllm_bench_attention --device cuda
  # The decode kernel's split-K partition count forced, on the cases furthest from their targets.
  for n in 1 2 4 8 16 32; do
    TAILN=0 step bench-attention-partitions-$n 20 build/pagedllm_bench_attention --device cuda --partitions $n --reps 10 \
      --case decode_mha_b64_l1024 --case decode_gqa8_b64_l4096 --case decode_mha_b1_l16384
    grep -oE '"name": "[a-z0-9_]+"|"medianUs": [0-9.]+|"fractionOfBandwidth": [0-9.]+' $R/bench-attention-partitions-$n.log | paste -sd' ' | sed 's/"name": /\n  /g'
  done
  TAILN=14 step bench-linear 60 build/pagedllm_bench_linear --device cuda
  TAILN=14 step bench-awq 90 node build-bench/awq-gemm.bench.js --device cuda --shapes 4096x4096,4096x11008,11008x4096 --m 1,4,8,16,32,64,128,256 --out $R/awq-gemm.json
fi
# Hardware counters (Nsight Compute, clocks left alone) for one launch of the kernels furthest
# from their targets: where the time goes, not how long it takes.
if want profile && command -v ncu >/dev/null; then
  NCU="ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats -s 1 -c 1"
  for c in decode_mha_b64_l1024 decode_gqa8_b64_l4096 decode_mha_b1_l16384; do
    TAILN=0 step ncu-$c 40 $NCU -k regex:paged_attention_decode_kernel build/pagedllm_bench_attention --device cuda --reps 2 --case $c
  done
  TAILN=0 step ncu-awq-gemv 40 $NCU -k regex:awq_gemv_kernel build/pagedllm_bench_linear --device cuda --reps 2 --only awq --awq-m 1 --k 4096 --n 11008
  TAILN=0 step ncu-gemv 40 $NCU -k regex:gemv_kernel build/pagedllm_bench_linear --device cuda --reps 2 --only dense --k 4096 --n 11008
  grep -hE '^  [a-z_]+.*\(|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Theoretical Occupancy|No Eligible|Issued Warp' $R/ncu-*.log | head -80
fi
want allocators && TAILN=20 step allocators 60 node build-bench/allocators.bench.js
if want e2e; then
  step make-model 90 python3 benchmarks/make_gpu_model.py --out /tmp/m7b --layers $LAYERS --awq /tmp/m7b-awq
  # fp16: plain steps, the graph runner's padded steps op by op, and replayed CUDA graphs, side by side.
  TAILN=14 step decode-m7b 120 node build-bench/decode.bench.js --model /tmp/m7b --device cuda --batches 1,64 --prompt 512 --gen 64 \
    --cuda-graphs off,eager,on --out $R/decode-m7b.json
  TAILN=14 step decode-m7b-awq 90 node build-bench/decode.bench.js --model /tmp/m7b-awq --device cuda --batches 1,64 --prompt 512 --gen 64 --out $R/decode-m7b-awq.json
fi
want hfgen && [ -d /tmp/m7b ] && TAILN=4 step hf-generate 90 python3 benchmarks/hf_generate_bench.py --model /tmp/m7b --batches 1,64 --prompt 512 --gen 64

# ---- correctness, side by side ----
t=$(( $(left) - 15 ))
PIDS=()
bg() { local name=$1; shift; (timeout -k 5 $t "$@" >$R/$name.log 2>&1; echo "rc=$?" >>$R/$name.log) & PIDS+=($!); }
if [ $t -gt 20 ]; then
  if want tests; then
    IFS=';' read -ra SETS <<<"$TESTS"
    for i in "${!SETS[@]}"; do bg tests-cuda-$i build/pagedllm_tests ${SETS[$i]}; done
  fi
  if want sanitize && command -v compute-sanitizer >/dev/null; then
    D="cuda_attention_decode"
    A="cuda_attention_prefill cuda_awq"
    B="cuda_linear cuda_sample cuda_cache cuda_swap cuda_embedding cuda_rms cuda_rope cuda_silu cuda_upload cuda_cast cuda_fill cuda_copy cuda_stream cuda_decoder_graph"
    M="/cuda (cuda)"
    for tool in memcheck racecheck initcheck synccheck; do
      bg san-$tool-decode compute-sanitizer --tool $tool --error-exitcode 99 build/pagedllm_tests $D
      bg san-$tool-A compute-sanitizer --tool $tool --error-exitcode 99 build/pagedllm_tests $A
      bg san-$tool-B compute-sanitizer --tool $tool --error-exitcode 99 build/pagedllm_tests $B
      bg san-$tool-memory compute-sanitizer --tool $tool --error-exitcode 99 build/pagedllm_tests $M
    done
  fi
fi
if want hf; then
  step hf-reference 90 python3 benchmarks/hf_reference.py --out /tmp/hf
  TAILN=16 step hf-compare 60 node scripts/hf-compare.js --root /tmp/hf --devices cuda,cpu --out $R/hf-compare.json
fi
[ ${#PIDS[@]} -gt 0 ] && wait "${PIDS[@]}"
kill $SMI 2>/dev/null

echo "== summary (t=${SECONDS}s)"
for f in $R/tests-cuda-*.log; do
  [ -f "$f" ] || continue
  grep -E '^FAIL' $f | cut -c1-300
  echo "$(basename $f .log): $(grep -E '^[0-9]+ passed, ' $f | tail -1) | $(tail -1 $f)"
done
for f in $R/san-*.log; do
  [ -f "$f" ] || continue
  echo "$(basename $f .log): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $f | tail -1 | sed 's/=* *//') | $(grep -E '^[0-9]+ passed, ' $f | tail -1) | $(tail -1 $f)"
done
