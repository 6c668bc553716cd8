#!/usr/bin/env python3
"""Plots of a specopt study, drawn from the files `specopt study` writes.

Usage: /usr/bin/python3 scripts/plot_study.py STUDY_DIR

Reads STUDY_DIR/runs.csv (every run's final val loss), results.csv (per variant and lr),
widths.csv (stable widths and best losses with bootstrap intervals), curves.csv (loss curves at
each variant's best lr) and, when present, reference_results.csv (the paper's numbers), and writes:
  lr_sweep.png            final val loss vs lr (mean over seeds, bars: min-max over seeds),
                          Adam family | mSGD family, log-x; x on the top edge: a diverged seed
  widths.png              stable width per variant with its 95 % interval, at each tolerance
  p_sweep.png             best final loss and stable width against p per family (only when a
                          family has at least 3 values of p)
  curves.png              training loss (line: mean over seeds, band: min-max) and validation
                          loss (dots) at each variant's best lr
  lr_sweep_reference.png  the lr panels for the paper's published numbers (one seed)
Every figure gives a variant the same colour (variant_colour).
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
# The eight named variants: one fixed colour each, in every figure of every study.
NAMED_COLOURS = {
    "Adam": "tab:blue", "AdamS": "tab:cyan", "AdamQ": "tab:green", "AdamZ": "navy",
    "mSGD": "tab:red", "mSGDS": "tab:orange", "mSGDQ": "tab:brown", "mSGDZ": "tab:purple",
}
FAMILY_COLOURS = {"Adam": "tab:blue", "mSGD": "tab:red"}
FAMILY_MAPS = {"Adam": "winter", "mSGD": "autumn"}
TOL_MARKERS = ("o", "s", "^", "D")


def number(text):
    if text in ("", None):
        return math.nan
    return float(text)  # accepts "inf"


def variant_colour(variant, family, p):
    """A variant's colour: fixed for the eight names, else from its family's colormap by p."""
    if variant in NAMED_COLOURS:
        return NAMED_COLOURS[variant]
    return plt.get_cmap(FAMILY_MAPS.get(family, "viridis"))(0.9 * (1.0 - p))


def family_of(variant):
    return "Adam" if variant.lower().startswith("adam") else "mSGD"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_variants(results_path):
    """{variant: (family, p)} in file order."""
    out = {}
    for row in read_csv(results_path):
        out.setdefault(row["variant"], (row["family"], float(row["p"])))
    return out


def read_cells(runs_path, results_path):
    """{variant: {lr: [final losses of the seeds with a result (inf = diverged)]}}."""
    cells = defaultdict(lambda: defaultdict(list))
    if runs_path and os.path.exists(runs_path):
        for row in read_csv(runs_path):
            if row["status"] == "missing":
                continue
            loss = math.inf if row["status"] == "diverged" else number(row["final_val_loss"])
            cells[row["variant"]][float(row["lr"])].append(loss)
    else:  # the paper: results.csv has one seed per cell
        for row in read_csv(results_path):
            cells[row["variant"]][float(row["lr"])].append(number(row["mean_val_loss"]))
    return cells


def lr_sweep(results_path, runs_path, title, out_path):
    variants = read_variants(results_path)
    cells = read_cells(runs_path, results_path)
    best = {(r["variant"], float(r["lr"])) for r in read_csv(results_path) if r["best"] == "1"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, family in zip(axes, FAMILIES):
        names = [v for v, (f, _) in variants.items() if f == family]
        finite = [x for v in names for ls in cells[v].values() for x in ls if math.isfinite(x)]
        top = None
        if finite:
            lo, hi = min(finite), max(finite)
            top = hi * 1.08
        for name in names:
            fam, p = variants[name]
            c = variant_colour(name, fam, p)
            xs, ys, lo_err, hi_err, div = [], [], [], [], []
            for lr in sorted(cells[name]):
                ls = cells[name][lr]
                ok = [x for x in ls if math.isfinite(x)]
                if len(ok) < len(ls):
                    div.append(lr)
                if ok:
                    m = sum(ok) / len(ok)
                    xs.append(lr)
                    ys.append(m)
                    lo_err.append(m - min(ok))
                    hi_err.append(max(ok) - m)
            ax.errorbar(xs, ys, yerr=[lo_err, hi_err], marker="o", ms=4, capsize=2, color=c,
                        label=f"{name} (p={p:g})")
            for lr, m in zip(xs, ys):
                if (name, lr) in best:
                    ax.plot([lr], [m], marker="*", ms=13, color=c, mec="black", mew=0.6, zorder=5)
            if div and top is not None:
                ax.plot(div, [top] * len(div), linestyle="none", marker="x", ms=8, mew=2, color=c,
                        clip_on=False)
        if top is not None:
            ax.set_ylim(top=top * 1.04)
        ax.set_xscale("log")
        ax.set_yscale("log")  # the optimum's neighbourhood stays readable beside the blow-ups
        ax.set_xlabel("matrix learning rate (optim.lr_matrix)")
        ax.set_ylabel("final validation loss")
        ax.set_title(f"{family} family")
        ax.grid(True, which="both", alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    how = ("one seed; x on top: diverged; *: best lr" if runs_path is None else
           "mean over seeds, bars: min-max over seeds; x on top: a seed diverged "
           "(its cell is unstable); *: best lr")
    fig.suptitle(title + "\n" + how + "; log-log axes", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def read_widths(path):
    """(tolerances in file order, rows)"""
    rows = read_csv(path)
    tols = []
    for r in rows:
        t = float(r["tolerance"])
        if t not in tols:
            tols.append(t)
    return tols, rows


def widths_plot(path, out_path):
    tols, rows = read_widths(path)
    if not rows:
        return
    names = []
    for r in rows:
        if r["variant"] not in names:
            names.append(r["variant"])
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(names) + 2), 4.2))
    step = 0.8 / max(len(tols), 1)
    for j, t in enumerate(tols):
        for r in rows:
            if float(r["tolerance"]) != t:
                continue
            k = names.index(r["variant"])
            w, lo, hi = number(r["width"]), number(r["width_lo"]), number(r["width_hi"])
            x = k - 0.4 + step * (j + 0.5)
            c = variant_colour(r["variant"], r["family"], float(r["p"]))
            ax.errorbar([x], [w], yerr=[[w - lo], [hi - w]], marker=TOL_MARKERS[j % 4], ms=6,
                        capsize=3, color=c, mfc=c if j == 0 else "white")
            if r["bracketed"] != "1" and j == 0:
                ax.annotate("widen grid", (x, hi), textcoords="offset points", xytext=(0, 4),
                            ha="center", fontsize=7, color="dimgray")
    for j, t in enumerate(tols):  # legend: the marker of each tolerance, in neutral grey
        ax.plot([], [], linestyle="none", marker=TOL_MARKERS[j % 4], color="dimgray",
                mfc="dimgray" if j == 0 else "white", label=f"tolerance {100 * t:g} %")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("stable width (decades of lr)")
    ax.set_title("stable width per variant: mean over seeds, bars: 95 % bootstrap interval\n"
                 "(filled: the report's tolerance; open: the others)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def p_sweep_plot(path, out_path):
    tols, rows = read_widths(path)
    primary = [r for r in rows if float(r["tolerance"]) == tols[0]] if tols else []
    by_family = defaultdict(list)
    for r in primary:
        by_family[r["family"]].append(r)
    if not any(len({float(r["p"]) for r in rs}) >= 3 for rs in by_family.values()):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for family in FAMILIES:
        rs = sorted(by_family.get(family, []), key=lambda r: float(r["p"]))
        if not rs:
            continue
        # The families side by side at each p (their widths often coincide).
        dodge = -0.008 if family == "Adam" else 0.008
        ps = [float(r["p"]) + dodge for r in rs]
        fc = FAMILY_COLOURS[family]
        for ax, key in ((axes[0], "best_loss"), (axes[1], "width")):
            ys = [number(r[key]) for r in rs]
            lo = [number(r[key + "_lo"]) for r in rs]
            hi = [number(r[key + "_hi"]) for r in rs]
            ax.plot(ps, ys, color=fc, lw=1.5, label=f"{family} family")
            ax.fill_between(ps, lo, hi, color=fc, alpha=0.15, lw=0)
            for p, y, l, h, r in zip(ps, ys, lo, hi, rs):
                c = variant_colour(r["variant"], family, p - dodge)
                ax.errorbar([p], [y], yerr=[[y - l], [h - y]], marker="o", ms=6, capsize=3,
                            color=c, mec="black", mew=0.5)
    axes[0].set_ylabel("final validation loss at the best lr")
    axes[0].set_title("best final loss vs p (mean over seeds, 95 % interval)", fontsize=10)
    axes[1].set_ylabel("stable width (decades of lr)")
    axes[1].set_title(f"stable width vs p at tolerance {100 * tols[0]:g} % (95 % interval)",
                      fontsize=10)
    for ax in axes:
        ax.set_xlabel("p  (update Ψ_p: p = 1 plain, p = 0 polar factor)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return True


def curves(path, variants, out_path):
    series = defaultdict(lambda: defaultdict(dict))  # (variant, lr) -> step -> seed -> (train, val)
    for row in read_csv(path):
        series[(row["variant"], row["lr"])][int(row["step"])][row["seed"]] = (
            number(row["train_loss"]), number(row["val_loss"]))
    if not series:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for (variant, lr), steps in series.items():
        fam, p = variants.get(variant, (family_of(variant), math.nan))
        ax = axes[0] if fam == "Adam" else axes[1]
        c = variant_colour(variant, fam, p)
        xs, mean, lo, hi, vx, vy = [], [], [], [], [], []
        for step in sorted(steps):
            tr = [t for t, _ in steps[step].values() if math.isfinite(t)]
            va = [v for _, v in steps[step].values() if math.isfinite(v)]
            if tr:
                xs.append(step)
                mean.append(sum(tr) / len(tr))
                lo.append(min(tr))
                hi.append(max(tr))
            if va:
                vx.append(step)
                vy.append(sum(va) / len(va))
        ax.plot(xs, mean, color=c, lw=1.2, label=f"{variant} lr={lr}")
        ax.fill_between(xs, lo, hi, color=c, alpha=0.18, lw=0)
        if vx:
            ax.plot(vx, vy, color=c, marker="o", ms=4, lw=0, mec="black", mew=0.4)
    for ax, family in zip(axes, FAMILIES):
        ax.set_title(f"{family} family at each variant's best lr", fontsize=10)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("loss (log scale)")
    fig.suptitle("line: training loss, mean over seeds; band: min-max over seeds; "
                 "dots: validation loss (mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    results = os.path.join(d, "results.csv")
    lr_sweep(results, os.path.join(d, "runs.csv"), "this study", os.path.join(d, "lr_sweep.png"))
    widths = os.path.join(d, "widths.csv")
    if os.path.exists(widths):
        widths_plot(widths, os.path.join(d, "widths.png"))
        p_sweep_plot(widths, os.path.join(d, "p_sweep.png"))
    curves(os.path.join(d, "curves.csv"), read_variants(results), os.path.join(d, "curves.png"))
    ref = os.path.join(d, "reference_results.csv")
    if os.path.exists(ref):
        lr_sweep(ref, None, "the paper (GPT-2 124M, OpenWebText, 1 seed)",
                 os.path.join(d, "lr_sweep_reference.png"))


if __name__ == "__main__":
    main()
