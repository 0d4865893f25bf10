#!/usr/bin/env python3
"""Random Llama-2-7B-shaped model folders for the end-to-end GPU figures (issue: on a real GPU),
made on the GPU machine in seconds (scripts/make-test-model.js draws weights in JavaScript: about
25 s per 7B layer on a 2-core machine).

  python3 benchmarks/make_gpu_model.py --out /tmp/llama7b --layers 32 [--awq /tmp/llama7b-awq]

--out: LlamaForCausalLM built and saved by Transformers (float16, hidden 4096, 32 heads,
intermediate 11008, vocab 32000; --layers of them). --awq: the same shape as an AutoAWQ GEMM
checkpoint (int4, group 128, zero point; quantization_config as AutoAWQ writes it) whose codes,
zeros and scales are random: a speed model, not a quantization of the float16 one.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM


def config(layers):
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--awq")
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = config(args.layers)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(args.out, safe_serialization=True)
    print(f"float16: {args.out}", flush=True)
    if not args.awq:
        return
    g = args.group_size
    tensors = {}
    for name, p in model.state_dict().items():
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):
            n, k = p.shape  # nn.Linear: [out, in]; AWQ stores [in, out / 8]
            base = name[: -len(".weight")]
            tensors[base + ".qweight"] = torch.randint(-2**31, 2**31, (k, n // 8), dtype=torch.int64, device="cuda").to(torch.int32)
            tensors[base + ".qzeros"] = torch.randint(-2**31, 2**31, (k // g, n // 8), dtype=torch.int64, device="cuda").to(torch.int32)
            tensors[base + ".scales"] = (torch.rand(k // g, n, device="cuda") * 0.004 + 0.001).to(torch.float16)
        else:
            tensors[name] = p
    os.makedirs(args.awq, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, os.path.join(args.awq, "model.safetensors"), metadata={"format": "pt"})
    c = cfg.to_dict()
    c["architectures"] = ["LlamaForCausalLM"]
    c["torch_dtype"] = "float16"
    c["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": g, "zero_point": True, "version": "gemm",
                                "modules_to_not_convert": None}
    with open(os.path.join(args.awq, "config.json"), "w") as f:
        json.dump(c, f, indent=2, default=str)
    print(f"awq int4: {args.awq}", flush=True)


if __name__ == "__main__":
    main()
