#!/usr/bin/env python3
"""Train a small MLP on Fashion-MNIST with every specopt variant (Adam ... mSGDZ).

    PYTHONPATH=build/python /usr/bin/python3 python/examples/train_variants.py
    ... --steps 50 --variants AdamS,mSGDZ --json runs/variants.json

Each variant comes from the C++ variant table (specopt.named_variants()); the optimizer
is specopt.make_optimizer (matrices: the variant's Psi_p at lr_matrix; vectors: AdamW at
lr_vector), driven by a torch LambdaLR warmup + cosine schedule. Without the dataset
(--data synthetic, or the directory missing) it trains on 10 synthetic
Gaussian clusters instead.

The learning rates are hand-picked for this toy problem per family and p (not tuned
results of any study); pass --lr-matrix to override.
"""
import argparse
import gzip
import json
import math
import os
import time

import torch

import specopt

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """An IDX file (optionally .gz) as a uint8 tensor of its stated shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise ValueError(f"{path}: expected {math.prod(dims)} bytes of data, found {len(data) - offset}")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(dims)


def load_data(data_dir, n_train):
    """(x_train, y_train, x_val, y_val): flattened images scaled to [0, 1]."""
    if data_dir != "synthetic" and os.path.isdir(data_dir):
        def load(prefix):
            x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
            y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
            return x.reshape(len(x), -1).float() / 255.0, y.long()
        x_train, y_train = load("train")
        x_val, y_val = load("t10k")
        return x_train[:n_train], y_train[:n_train], x_val[:2000], y_val[:2000]
    # Synthetic stand-in: 10 Gaussian clusters around random "prototype images".
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.randn(10, 784, generator=g)
    y = torch.randint(10, (n_train + 2000,), generator=g)
    x = 0.5 + 0.1 * prototypes[y] + 0.3 * torch.randn(len(y), 784, generator=g)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def default_lr_matrix(variant):
    """Toy-problem learning rates (from a coarse 3-point look at this script, 100 steps):
    the uncompressed updates (p = 1) keep their usual scales, the spectrally compressed
    ones (p < 1, both families) share one larger lr."""
    if variant.p < 1:
        return 0.05
    return 3e-3 if variant.family == "Adam" else 0.2


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 64), torch.nn.GELU(),
                               torch.nn.Linear(64, 10))


def train(variant_name, data, steps=100, batch_size=128, lr_matrix=None, lr_vector=3e-3,
          method="auto", seed=0):
    """Train one variant; returns a result dict (losses, accuracy, time)."""
    x_train, y_train, x_val, y_val = data
    variant = specopt.parse_variant(variant_name)
    torch.manual_seed(seed)
    model = make_model()
    lr = lr_matrix if lr_matrix is not None else default_lr_matrix(variant)
    # The study's Adam settings, stated (make_optimizer's defaults are torch.optim.AdamW's).
    opt = specopt.make_optimizer(model, variant.name, lr_matrix=lr, lr_vector=lr_vector,
                                 betas=(0.9, 0.95), weight_decay=0.0, method=method)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(x_train), (batch_size,), generator=gen)
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(x_val)
        val_loss = loss_fn(logits, y_val).item()
        val_acc = (logits.argmax(1) == y_val).float().mean().item()
    head = min(10, steps)
    return {"variant": variant.name, "family": variant.family, "p": variant.p, "lr_matrix": lr,
            "lr_vector": lr_vector, "steps": steps,
            "first_train_loss": sum(losses[:head]) / head,
            "last_train_loss": sum(losses[-head:]) / head,
            "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--variants", default="", help="comma-separated (default: the whole table)")
    ap.add_argument("--lr-matrix", type=float, default=None)
    ap.add_argument("--lr-vector", type=float, default=3e-3)
    ap.add_argument("--method", default="auto", choices=specopt.methods())
    ap.add_argument("--data", default=DEFAULT_DATA, help="Fashion-MNIST directory or 'synthetic'")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants.split(",") if args.variants else [v.name for v in specopt.named_variants()]
    data = load_data(args.data, args.n_train)
    print(f"{'variant':8} {'p':>5} {'lr_matrix':>9} {'loss first':>10} {'loss last':>9} "
          f"{'val loss':>8} {'val acc':>7} {'time s':>6}")
    results = []
    for name in names:
        r = train(name, data, args.steps, args.batch_size, args.lr_matrix, args.lr_vector,
                  args.method)
        results.append(r)
        print(f"{r['variant']:8} {r['p']:5.2f} {r['lr_matrix']:9.3g} {r['first_train_loss']:10.3f} "
              f"{r['last_train_loss']:9.3f} {r['val_loss']:8.3f} {r['val_acc']:7.3f} "
              f"{r['seconds']:6.2f}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
