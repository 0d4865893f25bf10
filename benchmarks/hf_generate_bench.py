#!/usr/bin/env python3
"""Transformers' own generate() on a model folder, timed the way benchmarks/decode.bench.ts times
pagedllm's Engine, for a side-by-side figure in one run on the GPU machine (issue: on a real GPU).

  python3 benchmarks/hf_generate_bench.py --model <dir> --batches 1,64 --prompt 512 --gen 64

Per batch size: B random prompts of --prompt tokens, greedy, exactly --gen new tokens (EOS
ignored). Prefill time is one forward over the prompts; decode tokens/s is
B × (gen − 1) / (generate time − prefill time). Median of --reps runs after a warm-up. Prints one
JSON object.
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def cuda_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    kw = {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kw).to("cuda").eval()
    vocab = model.config.vocab_size
    rows = []
    for b in map(int, args.batches.split(",")):
        ids = torch.randint(3, vocab, (b, args.prompt), device="cuda")
        mask = torch.ones_like(ids)
        gen = lambda: model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.gen,
                                     min_new_tokens=args.gen, pad_token_id=0)
        prefill = lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        gen(), prefill()  # warm-up
        p = statistics.median(cuda_time(prefill) for _ in range(args.reps))
        g = statistics.median(cuda_time(gen) for _ in range(args.reps))
        rows.append({"batch": b, "promptTokens": args.prompt, "generatedTokens": args.gen,
                     "prefillSeconds": round(p, 5), "prefillTokensPerSecond": round(b * args.prompt / p, 1),
                     "generateSeconds": round(g, 4),
                     "decodeTokensPerSecond": round(b * (args.gen - 1) / (g - p), 1),
                     "decodeStepMs": round(1e3 * (g - p) / (args.gen - 1), 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"implementation": "transformers.generate", "transformers": transformers.__version__,
                      "torch": torch.__version__, "device": torch.cuda.get_device_name(), "dtype": args.dtype,
                      "attention": model.config._attn_implementation, "rows": rows}))


if __name__ == "__main__":
    main()
