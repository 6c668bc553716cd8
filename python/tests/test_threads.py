"""set_cpu_threads: the LibTorch and OpenBLAS pools, checked in fresh processes (the
pool sizes and the libgomp environment are process-wide)."""
import json
import os
import subprocess
import sys

import pytest

import specopt

PROBE = (
    "import json, sys, torch, specopt\n"
    "info = specopt.set_cpu_threads(int(sys.argv[1]))\n"
    "info['torch_threads'] = torch.get_num_threads()\n"
    "print(json.dumps(info))\n"
)


def probe(n, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", PROBE, str(n)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_reports_what_torch_uses():
    info = probe(2)
    assert info["intra_op"] == info["torch_threads"]
    assert info["blas_kind"] in ("openblas-pthreads", "openblas-openmp", "openblas-serial", "other")
    assert info["gomp_wait_set"] is False


@pytest.mark.skipif(specopt.set_cpu_threads(1)["blas_kind"] != "openblas-pthreads",
                    reason="the two-pool rule applies to the pthreads OpenBLAS only")
def test_pthreads_openblas_gets_the_threads_and_libgomp_one_unless_told_not_to_spin():
    info = probe(2)
    assert (info["intra_op"], info["blas"]) == (1, 2)
    info = probe(2, OMP_WAIT_POLICY="passive")
    assert info["gomp_wait_set"] is True
    assert (info["intra_op"], info["blas"]) == (2, 2)
    info = probe(3, GOMP_SPINCOUNT="1000")
    assert (info["intra_op"], info["blas"]) == (3, 3)


def test_zero_means_omp_num_threads():
    info = probe(0, OMP_NUM_THREADS="3", OMP_WAIT_POLICY="passive")
    assert info["intra_op"] == 3
    if info["blas_kind"].startswith("openblas"):
        assert info["blas"] == 3
