#!/usr/bin/env python3
"""Reference figures from PyTorch on the GPU machine, for the attention benchmark's
prefill and roofline comparisons (issue: paged attention kernels).

  python3 benchmarks/torch_reference.py > torch-reference.json

Prints one JSON object: the device-to-device copy bandwidth (bytes read + written),
the matrix-unit peak of an 8192³ fp16 / bf16 matmul (random inputs), and
scaled_dot_product_attention (causal) on the prefill shapes of
benchmarks/native/attention_bench.cpp (8 sequences × 2048 new tokens, head 128,
32 query heads; 32 or 4 KV heads), each timed with CUDA events after warm-up,
median of the repetitions, L2 flushed before each one.
"""
import json
import statistics

import torch


def timed(fn, reps=20, warmup=3):
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main():
    torch.manual_seed(0)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    n = 1 << 30
    a = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    out["copyBytesPerSecond"] = 2 * n / timed(lambda: b.copy_(a))
    del a, b
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(8192, 8192, dtype=dtype, device="cuda")
        y = torch.randn(8192, 8192, dtype=dtype, device="cuda")
        out[f"matmulTflops_{str(dtype)[6:]}"] = 2 * 8192**3 / timed(lambda: x @ y) / 1e12
    del x, y
    sdpa = []
    for heads_kv, dtype in ((32, torch.float16), (4, torch.bfloat16)):
        q = torch.randn(8, 32, 2048, 128, dtype=dtype, device="cuda")
        k = torch.randn(8, heads_kv, 2048, 128, dtype=dtype, device="cuda")
        v = torch.randn(8, heads_kv, 2048, 128, dtype=dtype, device="cuda")
        gqa = heads_kv != 32
        fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        seconds = timed(fn)
        pairs = 2048 * 2049 / 2
        flops = 4 * 128 * pairs * 32 * 8
        sdpa.append({"numKvHeads": heads_kv, "dtype": str(dtype)[6:], "medianUs": seconds * 1e6, "tflops": flops / seconds / 1e12})
    out["sdpaPrefill_b8_l2048"] = sdpa
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
