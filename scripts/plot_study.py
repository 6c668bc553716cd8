#!/usr/bin/env python3
"""Plots of a specopt study, drawn from the files `specopt study` writes.

Usage: /usr/bin/python3 scripts/plot_study.py STUDY_DIR

Reads STUDY_DIR/results.csv (final val loss per variant and lr), curves.csv (loss curves at each
variant's best lr) and, when present, reference_results.csv (the paper's numbers, same format), and
writes:
  lr_sweep.png            final val loss vs lr, Adam family | mSGD family panels, log-x
  curves.png              training (line) and validation (dots) loss at each variant's best lr
  lr_sweep_reference.png  the same lr panels for the paper's published numbers
Diverged cells (inf) are drawn as crosses on the top edge of their panel.
"""
import csv
import math
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAMILIES = ("Adam", "mSGD")
# One colour per p, shared by both families (p = 1, 1/2, 1/4, 0).
P_COLOURS = {1.0: "tab:blue", 0.5: "tab:orange", 0.25: "tab:green", 0.0: "tab:red"}


def number(text):
    if text in ("", None):
        return math.nan
    return float(text)  # accepts "inf"


def read_results(path):
    """{family: {variant: {"p": p, "rows": [(lr, mean, std, stable, best)]}}}"""
    out = {f: {} for f in FAMILIES}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            fam = out.setdefault(row["family"], {})
            entry = fam.setdefault(row["variant"], {"p": float(row["p"]), "rows": []})
            entry["rows"].append((float(row["lr"]), number(row["mean_val_loss"]),
                                  number(row["std_val_loss"]), row["stable"] == "1",
                                  row["best"] == "1"))
    return out


def colour(p, k):
    return P_COLOURS.get(p, plt.get_cmap("tab10")(k % 10))


def lr_sweep(results, title, out_path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, family in zip(axes, FAMILIES):
        variants = results.get(family, {})
        finite = [m for v in variants.values() for (_, m, _, _, _) in v["rows"] if math.isfinite(m)]
        top = None
        if finite:
            lo, hi = min(finite), max(finite)
            top = hi + 0.08 * max(hi - lo, 1e-3)
        for k, (name, v) in enumerate(variants.items()):
            rows = sorted(v["rows"])
            c = colour(v["p"], k)
            xs = [r[0] for r in rows if math.isfinite(r[1])]
            ys = [r[1] for r in rows if math.isfinite(r[1])]
            es = [0.0 if math.isnan(r[2]) else r[2] for r in rows if math.isfinite(r[1])]
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=2, color=c,
                        label=f"{name} (p={v['p']:g})")
            for lr, m, _, _, best in rows:
                if best and math.isfinite(m):
                    ax.plot([lr], [m], marker="*", ms=12, color=c, zorder=5)
            div = [r[0] for r in rows if math.isinf(r[1])]
            if div and top is not None:
                ax.plot(div, [top] * len(div), linestyle="none", marker="x", ms=8, color=c)
        if top is not None:
            ax.set_ylim(top=top + 0.02 * abs(top))
        ax.set_xscale("log")
        ax.set_xlabel("matrix learning rate")
        ax.set_ylabel("final validation loss")
        ax.set_title(f"{family} family")
        ax.grid(True, which="both", alpha=0.3)
        if variants:
            ax.legend(fontsize=8)
    fig.suptitle(title + "  (x on top = diverged, * = best lr)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def curves(path, out_path):
    series = defaultdict(lambda: defaultdict(list))  # (variant, lr) -> seed -> [(step, train, val)]
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            series[(row["variant"], row["lr"])][row["seed"]].append(
                (int(row["step"]), number(row["train_loss"]), number(row["val_loss"])))
    if not series:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for k, ((variant, lr), seeds) in enumerate(sorted(series.items())):
        ax = axes[0] if variant.lower().startswith("adam") else axes[1]
        c = plt.get_cmap("tab10")(k % 10)
        for j, (seed, pts) in enumerate(sorted(seeds.items())):
            pts.sort()
            # Training loss as a thin line, validation loss as dots on top of it.
            train = [(s, t) for s, t, _ in pts if math.isfinite(t)]
            val = [(s, v) for s, _, v in pts if math.isfinite(v)]
            if train:
                ax.plot([s for s, _ in train], [t for _, t in train], color=c, alpha=0.45, lw=0.9,
                        label=f"{variant} lr={lr}" if j == 0 else None)
            if val:
                ax.plot([s for s, _ in val], [v for _, v in val], color=c, marker="o", ms=4,
                        lw=1.6, label=None if train or j else f"{variant} lr={lr}")
    for ax, family in zip(axes, FAMILIES):
        ax.set_title(f"{family} family at each variant's best lr (all seeds)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("loss (line: training, dots: validation)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    lr_sweep(read_results(os.path.join(d, "results.csv")), "this study",
             os.path.join(d, "lr_sweep.png"))
    curves(os.path.join(d, "curves.csv"), os.path.join(d, "curves.png"))
    ref = os.path.join(d, "reference_results.csv")
    if os.path.exists(ref):
        lr_sweep(read_results(ref), "the paper (GPT-2 124M, OpenWebText, 1 seed)",
                 os.path.join(d, "lr_sweep_reference.png"))


if __name__ == "__main__":
    main()
