#!/usr/bin/env python3
"""How fast can an eigendecomposition-based Psi_p be on this CPU? (docs/transform.md, auto target)

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2 /usr/bin/python3 bench/eigh_floor.py [--n 768] [--reps 7]

Times, interleaved, at n x n: one float32 GEMM, torch.linalg.eigh in float64 and float32, scipy's
LAPACK syevd driver (when scipy is installed), and float32 torch.linalg.svd; and reports the
relative Frobenius error of Psi_p (p = 1/2, 1/4) on the cond-1e3 geometric-spectrum family for:
  eigh64   float64 Gram + float64 eigh (specopt's auto on CPU)
  eigh32   float32 Gram + float32 eigh
  ray32    eigh32 with the eigenvalues recomputed as ||O v_i||^2 (Rayleigh quotients)
  svd32    float32 SVD of O
Prints one JSON object.
"""
import argparse
import json
import statistics
import time

import torch


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def geometric(n, cond, gen):
    u, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    return (u * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)) @ v.T


def psi_eigh(o, p, dtype, rayleigh=False):
    x = o.to(dtype)
    lam, v = torch.linalg.eigh(x.T @ x)
    xv = x @ v
    if rayleigh:
        lam = (xv * xv).sum(0)
    f = lam.clamp_min(torch.finfo(dtype).tiny).pow(-(1 - p) / 2)
    return (xv * f) @ v.T


def psi_svd(o, p, dtype):
    u, s, vh = torch.linalg.svd(o.to(dtype), full_matrices=False)
    return (u * s.pow(p)) @ vh


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=768)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    n, reps = args.n, args.reps
    gen = torch.Generator().manual_seed(0)
    o64 = geometric(n, 1e3, gen)
    o32 = o64.float()
    a64, a32 = o64.T @ o64, o32.T @ o32
    timings = {
        "gemm_f32": lambda: o32 @ o32,
        "eigh_f64": lambda: torch.linalg.eigh(a64),
        "eigh_f32": lambda: torch.linalg.eigh(a32),
        "svd_f32": lambda: torch.linalg.svd(o32, full_matrices=False),
    }
    try:
        import scipy.linalg as sl
        a64n, a32n = a64.numpy(), a32.numpy()
        timings["scipy_syevd_f64"] = lambda: sl.eigh(a64n, driver="evd", check_finite=False)
        timings["scipy_syevd_f32"] = lambda: sl.eigh(a32n, driver="evd", check_finite=False)
    except ImportError:
        pass
    ms = {k: [] for k in timings}
    for _ in range(3):  # interleave: the machine's speed drifts
        for k, fn in timings.items():
            ms[k].append(median_ms(fn, reps))
    result = {"n": n, "torch": torch.__version__, "intra_op_threads": torch.get_num_threads(),
              "ms": {k: statistics.median(v) for k, v in ms.items()}, "err_cond1e3": {}}
    for p in (0.5, 0.25):
        u, s, vh = torch.linalg.svd(o32.double(), full_matrices=False)
        ref = (u * s.pow(p)) @ vh
        rel = lambda y: ((y.double() - ref).norm() / ref.norm()).item()
        result["err_cond1e3"][str(p)] = {
            "eigh64": rel(psi_eigh(o32.double(), p, torch.float64)),
            "eigh32": rel(psi_eigh(o32, p, torch.float32)),
            "ray32": rel(psi_eigh(o32, p, torch.float32, rayleigh=True)),
            "svd32": rel(psi_svd(o32, p, torch.float32)),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
