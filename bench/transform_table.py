#!/usr/bin/env python3
"""Markdown tables from a bench_transform JSON file (docs/transform.md is made with it).

Usage: /usr/bin/python3 bench/transform_table.py docs/bench/transform_cpu.json
Prints the target table (768² and 768×3072 rows of the issue's targets) and the full table.
"""
import json
import sys


def fmt_err(x):
    return "n/a" if x is None else f"{x:.1e}"


def main(path):
    doc = json.load(open(path))
    rows = [r for r in doc["results"] if r.get("supported", True)]
    key = {(r["rows"], r["cols"], r["method"], r["p"]): r for r in rows}

    print(f"Command: `{doc['command']}` ({doc['total_seconds']:.0f} s; {doc['threads']} intra-op / "
          f"{doc.get('blas_threads', '?')} BLAS threads, {doc.get('blas_kind', '?')}, torch {doc['torch_version']}).\n")
    print("| target | shape | p | measured | met |\n|---|---|---|---|---|")
    for (m, n) in ((768, 768), (768, 3072)):
        for p in (0.5, 0.25):
            nw, pa = key[(m, n, "newton", p)], key[(m, n, "paper", p)]
            ok = max(nw["err_gaussian"], nw["err_geometric_cond1e3"]) <= 1e-3 and nw["matmul_flops"] <= pa["matmul_flops"]
            ratio = nw["matmul_flops"] / pa["matmul_flops"]
            print(f"| newton err ≤ 1e-3, FLOPs ≤ paper (aim ⅓) | {m}×{n} | {p:g} | err {fmt_err(nw['err_gaussian'])} / "
                  f"{fmt_err(nw['err_geometric_cond1e3'])}; FLOPs {ratio:.2f}× paper (paper err "
                  f"{fmt_err(pa['err_gaussian'])} / {fmt_err(pa['err_geometric_cond1e3'])}) | "
                  f"{'yes' if ok else 'no'}{' (⅓ aim: no)' if ok and ratio > 1 / 3 else ''} |")
        nw = key[(m, n, "newton", 0.0)]
        ok = max(nw["err_gaussian"], nw["err_geometric_cond1e3"]) <= 1e-3
        print(f"| newton p = 0 err ≤ 1e-3 vs UVᵀ | {m}×{n} | 0 | {fmt_err(nw['err_gaussian'])} / "
              f"{fmt_err(nw['err_geometric_cond1e3'])} | {'yes' if ok else 'no'} |")
    for p in (0.5, 0.25):
        au, pa = key[(768, 768, "auto", p)], key[(768, 768, "paper", p)]
        speed = pa["time_s"] / au["time_s"]
        err = max(au["err_gaussian"], au["err_geometric_cond1e3"])
        print(f"| auto ≥ 15× faster than paper, err ≤ 1e-4 | 768×768 | {p:g} | {speed:.1f}× "
              f"({au['time_s']:.3f} s vs {pa['time_s']:.3f} s), err {err:.1e} | {'yes' if speed >= 15 and err <= 1e-4 else 'no'} |")

    print("\n| shape | method | p | time [s] | err Gaussian | err cond-1e3 | GFLOP | GFLOP/s | GEMM eff. | iters |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        method = r["method"] if r["method"] != "auto" else f"auto ({r['resolved_method']})"
        print(f"| {r['rows']}×{r['cols']} | {method} | {r['p']:g} | {r['time_s']:.4f} | {fmt_err(r['err_gaussian'])} | "
              f"{fmt_err(r['err_geometric_cond1e3'])} | {r['matmul_flops'] / 1e9:.2f} | {r['gflops_per_s']:.1f} | "
              f"{r['gemm_efficiency']:.2f} | {r['iterations']} |")


if __name__ == "__main__":
    main(sys.argv[1])
