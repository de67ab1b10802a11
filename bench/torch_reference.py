#!/usr/bin/env python3
"""lowband's inner step against plain PyTorch loops of the same model, same run.

Runs on the GPU machine (PyTorch with CUDA):

    python3 bench/torch_reference.py --step-time build-gpu/bin/step_time

For each shape (default: the 85M and the 303M GPT of issue 20) it times
PyTorch training steps of the same architecture as ml/model.cc (token and
position embeddings, pre-norm blocks with one fused qkv projection, causal
attention, GELU MLP, tied output head, byte-level vocabulary, AdamW with
decay on matrices only, gradient clipping at 1.0) in four configurations:

    eager fp32          no TF32, attention through scaled_dot_product_attention
    eager tf32 + SDPA   TF32 tensor-core matmuls
    eager bf16 + SDPA   bf16 autocast, fp32 master weights, fused AdamW
    compile bf16        the same under torch.compile

then runs lowband's step_time on the same shape in fp32, tf32 and bf16 and
prints lowband's time over the best eager PyTorch configuration (target:
at most 1.1x) and each one's model FLOP utilisation.
"""
import argparse
import math
import re
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    "85M": dict(layers=12, d_model=768, heads=12, context=256, batch=16),
    "303M": dict(layers=24, d_model=1024, heads=16, context=512, batch=8),
}
PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16, as step_time's default
VOCAB = 256


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.mlp_fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, layers, d_model, heads, context):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        for name, p in self.named_parameters():
            if "ln_" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, tokens, targets):
        t = tokens.size(1)
        x = self.tok_emb(tokens) + self.pos_emb(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.tok_emb.weight.t()
        return F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))


def flops_per_token(shape, parameters):
    return 6.0 * parameters + 12.0 * shape["layers"] * shape["d_model"] * shape["context"]


def time_pytorch(shape, mode, steps, warmup):
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = mode != "eager fp32"
    torch.backends.cudnn.allow_tf32 = mode != "eager fp32"
    model = Gpt(shape["layers"], shape["d_model"], shape["heads"], shape["context"]).cuda()
    parameters = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    bf16 = "bf16" in mode
    forward = torch.compile(model) if mode.startswith("compile") else model
    b, t = shape["batch"], shape["context"]

    def step():
        x = torch.randint(0, VOCAB, (b, t + 1), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    ms = 1000.0 * (time.perf_counter() - start) / steps
    del model, opt, forward
    torch.cuda.empty_cache()
    return ms, parameters, float(loss.detach())


def time_lowband(step_time, campaign, shape, steps):
    cmd = [step_time, "--campaign", campaign, "--device", "cuda", "--no-cpu", "--steps", str(steps),
           "--precision", "fp32,tf32,bf16", "--layers", str(shape["layers"]), "--d-model", str(shape["d_model"]),
           "--heads", str(shape["heads"]), "--context", str(shape["context"]), "--batch", str(shape["batch"])]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"torch_reference: {' '.join(cmd)} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    out = run.stdout
    results = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            results[fields["precision"]] = (float(fields["ms_per_step"]), int(fields["parameters"]))
    return results


def main():
    # Line by line even into a pipe: a run stopped by a timeout keeps what it printed.
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-time", default="build-gpu/bin/step_time", help="lowband's step_time binary")
    ap.add_argument("--campaign", default="configs/quickstart.yaml", help="campaign whose first site gives the text")
    ap.add_argument("--shapes", default="85M,303M", help="comma-separated: " + ", ".join(SHAPES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to start)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_reference: needs a CUDA GPU")
    print(f"GPU: {torch.cuda.get_device_name()}, PyTorch {torch.__version__}; MFU against {PEAK_TFLOPS} TFLOP/s")
    modes = ["eager fp32", "eager tf32 + SDPA", "eager bf16 + SDPA"] + ([] if args.no_compile else ["compile bf16"])
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        tokens = shape["batch"] * shape["context"]
        print(f"\n== {name}: {shape}")
        reference = {}
        for mode in modes:
            ms, parameters, loss = time_pytorch(shape, mode, args.steps, args.warmup)
            reference[mode] = ms
            mfu = flops_per_token(shape, parameters) * tokens / (ms / 1000.0) / 1e12 / PEAK_TFLOPS
            print(f"  pytorch {mode:<20} {ms:8.2f} ms/step  MFU {100 * mfu:5.1f}%  ({parameters / 1e6:.1f}M params)")
            sys.stdout.flush()
        best_mode = min((m for m in reference if m.startswith("eager")), key=reference.get)
        best = reference[best_mode]
        ours = time_lowband(args.step_time, args.campaign, shape, args.steps)
        for precision, (ms, parameters) in ours.items():
            mfu = flops_per_token(shape, parameters) * tokens / (ms / 1000.0) / 1e12 / PEAK_TFLOPS
            print(f"  lowband {precision:<20} {ms:8.2f} ms/step  MFU {100 * mfu:5.1f}%  "
                  f"{ms / best:5.2f}x best eager ({best_mode}, {best:.2f} ms)")
        fastest = min(ms for ms, _ in ours.values())
        verdict = "meets" if fastest <= 1.1 * best else "misses"
        print(f"  lowband's fastest step is {fastest / best:.2f}x the best eager PyTorch step: {verdict} the 1.1x target")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
