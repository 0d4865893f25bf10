#!/usr/bin/env python3
"""A reference nobody here wrote: small random Llama, Mistral and Qwen2 models built and saved by
Hugging Face Transformers itself, with Transformers' own logits and greedy tokens for a prompt
(issue: on a real GPU). scripts/hf-compare.js then loads each folder with pagedllm and compares.

  python3 benchmarks/hf_reference.py --out /tmp/hf [--device cuda]

For each case writes <out>/<case>/ with save_pretrained's config.json + model.safetensors and
  reference.json   prompt ids, Transformers' greedy continuation, the model and activation dtype
  logits-ref.f32   [T, vocab] float32 logits of the float32 model (the same weights, upcast)
                   over prompt + continuation: the reference both implementations are judged by
  logits-hf.f32    [T, vocab] Transformers' logits in the case's own dtype, so that pagedllm's
                   error can be set beside Transformers' own error at that precision
The greedy continuation is decoded by Transformers in the case's dtype, one full forward per
token (no cache), so it is unambiguous.
"""
import argparse
import json
import os

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

# head_dim 64 (a size pagedllm's attention supports), GQA 8/2, prompt longer than a block and,
# for Mistral, than its sliding window.
COMMON = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=3, num_attention_heads=8,
              num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512,
              rms_norm_eps=1e-5, initializer_range=0.05, bos_token_id=1, eos_token_id=2)
V5 = int(transformers.__version__.split(".")[0]) >= 5


def rope(theta, scaling):
    """RoPE settings as this Transformers spells them (v5: rope_parameters; v4: rope_theta + rope_scaling)."""
    return {"rope_parameters": {"rope_theta": theta, **scaling}} if V5 else {"rope_theta": theta, "rope_scaling": scaling}


def load(cls, folder, dtype, device):
    kw = {"dtype": dtype} if V5 else {"torch_dtype": dtype}
    return cls.from_pretrained(folder, attn_implementation="eager", **kw).to(device).eval()


CASES = [
    ("llama-float32", LlamaForCausalLM, lambda: LlamaConfig(**COMMON, tie_word_embeddings=False), torch.float32),
    ("llama-float16", LlamaForCausalLM, lambda: LlamaConfig(**COMMON, tie_word_embeddings=False), torch.float16),
    ("llama3rope-bfloat16", LlamaForCausalLM, lambda: LlamaConfig(**COMMON, tie_word_embeddings=False, **rope(
        500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64})), torch.bfloat16),
    ("mistral-float32", MistralForCausalLM, lambda: MistralConfig(**COMMON, sliding_window=24), torch.float32),
    ("mistral-float16", MistralForCausalLM, lambda: MistralConfig(**COMMON, sliding_window=24), torch.float16),
    ("qwen2-float32", Qwen2ForCausalLM, lambda: Qwen2Config(**COMMON, tie_word_embeddings=True), torch.float32),
    ("qwen2-bfloat16", Qwen2ForCausalLM, lambda: Qwen2Config(**COMMON, tie_word_embeddings=True), torch.bfloat16),
]


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompt", type=int, default=40)
    ap.add_argument("--gen", type=int, default=24)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference in float32, not tf32
    failed = []
    for name, cls, make_config, dtype in CASES:
        try:
            build_case(args, name, cls, make_config(), dtype)
        except Exception as e:  # one case's failure (say, a config this Transformers rejects) is reported, the rest still run
            failed.append(name)
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
    if failed:
        raise SystemExit(f"hf_reference: {len(failed)} case(s) failed: {', '.join(failed)}")


def build_case(args, name, cls, config, dtype):
    torch.manual_seed(sum(map(ord, name)))
    config._attn_implementation = "eager"
    model = cls(config).to(torch.float32).eval()
    # Biases are zero at init; random ones make Qwen2's q/k/v bias path matter.
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            m.bias.normal_(0, 0.05)
    for m in model.modules():  # RMSNorm weights are ones at init: perturb them too
        if type(m).__name__.endswith("RMSNorm"):
            m.weight.normal_(1, 0.1)
    folder = os.path.join(args.out, name)
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    # The float32 reference holds exactly the saved weights (rounded to the case's dtype).
    ref = load(cls, folder, torch.float32, args.device)
    hf = load(cls, folder, dtype, args.device)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, config.vocab_size, (1, args.prompt), generator=g).to(args.device)
    for _ in range(args.gen):
        nxt = hf(ids).logits[0, -1].float().argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    ref_logits = ref(ids).logits[0].float().cpu().contiguous()
    hf_logits = hf(ids).logits[0].float().cpu().contiguous()
    ref_logits.numpy().tofile(os.path.join(folder, "logits-ref.f32"))
    hf_logits.numpy().tofile(os.path.join(folder, "logits-hf.f32"))
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump({"case": name, "dtype": str(dtype)[6:], "promptLength": args.prompt,
                   "tokenIds": ids[0].tolist(), "vocabSize": config.vocab_size,
                   "transformers": transformers.__version__, "torch": torch.__version__,
                   "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}, f)
    print(f"{name}: {ids.shape[1]} tokens, saved to {folder}", flush=True)


if __name__ == "__main__":
    main()
