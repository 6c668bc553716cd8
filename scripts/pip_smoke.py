"""Smoke test of a pip-installed specopt (scripts/torch2.sh pip-smoke): the installed
package (not the checkout) imports under the torch it was built for, its metadata pins
that torch and the MIT license, and a small model trains a few steps with make_optimizer."""
import os
import sys
import sysconfig
from importlib import metadata

import torch

import specopt

site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
assert any(os.path.abspath(specopt.__file__).startswith(d + os.sep) for d in site), \
    f"imported {specopt.__file__}, not the specopt pip installed into {sorted(site)}"
requires = metadata.requires("specopt") or []
pin = f"torch=={metadata.version('torch')}"
assert pin in requires, f"metadata Requires-Dist {requires}, expected {pin}"
meta = metadata.metadata("specopt")
assert meta["License"] == "MIT", meta["License"]  # pyproject.toml; the text is LICENSE
assert "License :: OSI Approved :: MIT License" in (meta.get_all("Classifier") or []), meta.get_all("Classifier")
assert specopt.build_info.TORCH_VERSION == torch.__version__, specopt.build_info.TORCH_VERSION

torch.manual_seed(0)
X = torch.randn(512, 20)
y = (X[:, :5].sum(1) > 0).long()
model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
opt = specopt.make_optimizer(model, "AdamS", lr_matrix=1e-2, lr_vector=1e-2)
losses = []
for step in range(60):
    idx = torch.randint(0, 512, (64,))
    loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
assert last < 0.7 * first, losses
print(f"pip smoke: specopt {metadata.version('specopt')} from {os.path.dirname(specopt.__file__)}, "
      f"built for torch {specopt.build_info.TORCH_VERSION} (Requires-Dist {pin}); "
      f"AdamS loss {first:.3f} -> {last:.3f} in 60 steps")
sys.exit(0)
