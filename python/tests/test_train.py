"""A small model trains with every variant of the C++ table (through the example script)."""
import importlib.util
import math
import os
import subprocess
import sys

import pytest

import specopt

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_variants.py")


def load_example():
    spec = importlib.util.spec_from_file_location("train_variants", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()
DATA = example.load_data("synthetic", 2048)


@pytest.mark.parametrize("variant", [v.name for v in specopt.named_variants()])
def test_every_variant_trains(variant):
    r = example.train(variant, DATA, steps=40, batch_size=64)
    assert math.isfinite(r["last_train_loss"]) and math.isfinite(r["val_loss"])
    assert r["last_train_loss"] < 0.8 * r["first_train_loss"], r
    assert r["val_acc"] > 0.3, r  # 10 classes: chance is ~0.1


def test_example_script_runs(tmp_path):
    out = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, EXAMPLE, "--data", "synthetic", "--n-train", "512",
                           "--steps", "5", "--variants", "AdamS,mSGDZ", "--threads", "1",
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "AdamS" in proc.stdout and "mSGDZ" in proc.stdout
    assert out.exists()
