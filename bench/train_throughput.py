#!/usr/bin/env python3
"""Plain PyTorch training loop of the same GPT as specopt's C++ model, for a throughput baseline.

Usage:
  /usr/bin/python3 bench/train_throughput.py --config RUN_DIR/config.toml [--steps N] [--warmup W]
  /usr/bin/python3 bench/train_throughput.py --n-layer 4 --n-head 4 --n-embd 128 --block-size 256 \
      --batch-size 16 --threads 2

The model mirrors include/specopt/train/models.h (nanoGPT, bias=False): token + position embeddings,
pre-LayerNorm blocks (weight-only LayerNorm, eps 1e-5) with packed-QKV causal attention written
out as softmax(q kᵀ/√h + causal mask) v (as the C++ model: LibTorch 1.13 has no fused attention)
and a 4d GELU (erf) MLP, final LayerNorm, LM head tied to the token embedding, nanoGPT init.
One step = forward + cross-entropy + backward + clip_grad_norm_(1.0) + torch.optim.AdamW step
(+ zero_grad), on random-offset batches of a byte stream (the KJV text file when --text is given
or the config's data is KJV and its cache exists; random bytes otherwise — throughput does not
depend on the bytes). When --config names a resolved specopt train config (RUN_DIR/config.toml),
model sizes, batch size, grad_accum, threads and the optimizer's lr/betas/eps are read from it.

Prints one JSON object: {"tokens_per_s", "step_s_median", "steps", "threads", ...}.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return F.layer_norm(x, (self.weight.shape[0],), self.weight, None, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(future, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1 = LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_head)
        self.ln_2 = LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer, n_head, d):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(block, d),
            h=nn.ModuleList([Block(d, n_head) for _ in range(n_layer)]), ln_f=LayerNorm(d)))
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        t = self.transformer
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = t.wte(idx) + t.wpe(pos)
        for block in t.h:
            x = block(x)
        logits = t.ln_f(x) @ t.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def read_config(path):
    import tomllib  # Python ≥ 3.11 (Debian 12's /usr/bin/python3)

    with open(path, "rb") as f:
        return tomllib.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="resolved specopt train config (RUN_DIR/config.toml)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--intra-op-threads", type=int, default=0,
                    help="torch.set_num_threads value overriding --threads/the config (the BLAS "
                         "pool follows OPENBLAS_NUM_THREADS/OMP_NUM_THREADS from the environment)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.95))
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--text", help="byte stream to sample batches from")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.config:
        cfg = read_config(args.config)
        m, t, o, r = cfg.get("model", {}), cfg.get("train", {}), cfg.get("optim", {}), cfg.get("run", {})
        if m.get("kind", "gpt") != "gpt":
            sys.exit(f"{args.config}: model.kind must be gpt for this benchmark")
        args.n_layer = m.get("n_layer", args.n_layer)
        args.n_head = m.get("n_head", args.n_head)
        args.n_embd = m.get("n_embd", args.n_embd)
        args.block_size = m.get("block_size", args.block_size)
        args.batch_size = t.get("batch_size", args.batch_size)
        args.grad_accum = t.get("grad_accum", args.grad_accum)
        args.threads = r.get("threads", args.threads)
        args.lr = o.get("lr_matrix", args.lr)
        args.betas = (o.get("beta1", args.betas[0]), o.get("beta2", args.betas[1]))
        args.eps = o.get("eps", args.eps)
        d = cfg.get("data", {})
        if not args.text and d.get("kind") == "kjv":
            cached = os.path.join(d.get("cache_dir", ""), "kjv.txt")
            if os.path.exists(cached):
                args.text = cached

    if args.intra_op_threads > 0:
        torch.set_num_threads(args.intra_op_threads)
    elif args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.text:
        with open(args.text, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    else:
        data = torch.randint(0, args.vocab_size, (1 << 20,), dtype=torch.long)

    model = GPT(args.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay}], lr=args.lr,
                            betas=tuple(args.betas), eps=args.eps, weight_decay=0.0)
    B, T = args.batch_size, args.block_size

    def step():
        for _ in range(args.grad_accum):
            ix = torch.randint(len(data) - T - 1, (B,))
            x = torch.stack([data[i:i + T] for i in ix])
            y = torch.stack([data[i + 1:i + T + 1] for i in ix])
            loss = model(x, y) / args.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    tokens = B * T * args.grad_accum
    med = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd,
        "block_size": args.block_size, "batch_size": B, "grad_accum": args.grad_accum,
        "steps": args.steps, "step_s_median": med, "tokens_per_s": tokens / med,
        "tokens_per_s_mean": tokens * len(times) / sum(times)}))


if __name__ == "__main__":
    main()
