#!/usr/bin/env python3
"""lowband <-> Hugging Face transformers, both ways (issue 21 item 3).

Builds a small GPT2LMHeadModel and LlamaForCausalLM (grouped-query
attention) in transformers, saves each with save_pretrained (safetensors),
and writes its logits for fixed tokens; runs lowband's "hf interop" test,
which imports them, checks its logits against transformers' and exports
them again; then loads lowband's exports in transformers and checks their
logits against lowband's. Needs torch, transformers and safetensors.

    tests/hf/transformers_check.py --bin build-gpu/bin [--dir /tmp/hf-check]
"""
import argparse
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def models():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                      activation_function="gelu", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False))
    # Non-trivial norms and biases, so that a name or orientation mix-up shows.
    with torch.no_grad():
        for m in (gpt2, llama):
            for name, p in m.named_parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
    return {"gpt2": gpt2.eval(), "llama": llama.eval()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--dir", default="/tmp/lowband-hf-check")
    args = ap.parse_args()
    torch.manual_seed(1)
    tokens = torch.randint(0, 256, (2, 48))
    for arch, model in models().items():
        d = os.path.join(args.dir, arch)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(os.path.join(d, "hf"), safe_serialization=True)
        with torch.no_grad():
            logits = model(tokens).logits.float()
        save_file({"tokens": tokens.float().contiguous(), "logits": logits.contiguous()},
                  os.path.join(d, "ref.safetensors"))
    env = dict(os.environ, LOWBAND_HF_CHECK_DIR=args.dir)
    run = subprocess.run([os.path.join(args.bin, "lowband_torch_tests"), "[hf_interop]"], env=env)
    if run.returncode != 0:
        sys.exit("lowband could not import transformers' models (see above)")
    worst = 0.0
    for arch in ("gpt2", "llama"):
        d = os.path.join(args.dir, arch)
        model = AutoModelForCausalLM.from_pretrained(os.path.join(d, "lowband"), torch_dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(tokens).logits.float()
        want = load_file(os.path.join(d, "lowband_logits.safetensors"))["logits"]
        diff = (logits - want).abs().max().item()
        worst = max(worst, diff)
        print(f"{arch}: transformers on lowband's export vs lowband: max |diff| {diff:.3g} "
              f"(logits up to {want.abs().max().item():.3g})")
        if diff > 1e-4 * max(1.0, want.abs().max().item()):
            sys.exit(f"{arch}: lowband's export gives other logits in transformers")
    print(f"hf interop: both ways within tolerance (worst {worst:.3g})")


if __name__ == "__main__":
    main()
