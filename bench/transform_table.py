#!/usr/bin/env python3
"""Markdown tables from a bench_transform JSON file (docs/transform.md is made with it).

Usage: /usr/bin/python3 bench/transform_table.py docs/bench/transform_newton_cpu.json
Prints the newton-vs-paper table (FLOPs and dominant-subspace errors), the synthetic table and,
when the run had --real, the real-update suite table.
"""
import json
import sys

FAMILIES = ("gaussian", "cond1e3", "cond1e8", "rank4_noise")


def e(x):
    return "n/a" if x is None else f"{x:.1e}"


def main(path):
    doc = json.load(open(path))
    rows = [r for r in doc["results"] if r.get("supported", True)]
    key = {(r["rows"], r["cols"], r["method"], r["p"]): r for r in rows}
    shapes = sorted({(r["rows"], r["cols"]) for r in rows})

    print(f"Command: `{doc['command']}` ({doc['total_seconds']:.0f} s; {doc['threads']} intra-op / "
          f"{doc.get('blas_threads', '?')} BLAS threads, {doc.get('blas_kind', '?')}, torch {doc['torch_version']}).\n")

    print("| shape | p | newton/paper FLOPs | newton dom. err (max over families) | paper dom. err | "
          "Muon 5-step dom. err | Polar Express dom. err |")
    print("|---|---|---|---|---|---|---|")
    for (m, n) in shapes:
        for p in (0.0, 0.25, 0.5):
            nw, pa = key.get((m, n, "newton", p)), key.get((m, n, "paper", p))
            if not nw or not pa:
                continue
            dom = lambda r: max(r["families"][f]["err_dominant"] for f in FAMILIES) if r else None
            ns = key.get((m, n, "newton_schulz", p))
            pe = key.get((m, n, "polar_express", p))
            print(f"| {m}×{n} | {p:g} | {nw['matmul_flops'] / pa['matmul_flops']:.2f} | {e(dom(nw))} | "
                  f"{e(dom(pa))} | {e(dom(ns)) if p == 0 else '—'} | {e(dom(pe)) if p == 0 else '—'} |")

    print("\n| shape | method | p | time [s] | dom. Gaussian | dom. cond-1e3 | dom. cond-1e8 | dom. rank4+noise | "
          "full (max) | GFLOP | GFLOP/s | GEMM eff. | iters |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        method = r["method"] if r["method"] != "auto" else f"auto ({r['resolved_method']})"
        doms = " | ".join(e(r["families"][f]["err_dominant"]) for f in FAMILIES)
        print(f"| {r['rows']}×{r['cols']} | {method} | {r['p']:g} | {r['time_s']:.4f} | {doms} | "
              f"{e(r['err_full_max'])} | {r['matmul_flops'] / 1e9:.3f} | {r['gflops_per_s']:.1f} | "
              f"{r['gemm_efficiency']:.2f} | {r['iterations']} |")

    real = doc.get("real_updates") or []
    if real:
        print(f"\nReal-update suite ({real[0]['matrices']} matrices):\n")
        print("| method | p | dom. err max | dom. err median | full err max | GFLOP (sum) | time [s] (sum) |")
        print("|---|---|---|---|---|---|---|")
        for r in real:
            print(f"| {r['method']} | {r['p']:g} | {e(r['err_dominant_max'])} | {e(r['err_dominant_median'])} | "
                  f"{e(r['err_full_max'])} | {r['matmul_flops'] / 1e9:.2f} | {r['time_s']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
