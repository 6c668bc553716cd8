"""Checkpoints PyTorch can read (issue 15 item 6): specopt.load_checkpoint on a checkpoint the
C++ trainer wrote, and `specopt export`'s file through plain torch.load into a nanoGPT-style
module. The CLI is the one built next to this extension (<build>/specopt)."""
import os
import subprocess

import pytest
import torch

import specopt
from specopt import _C

CLI = os.path.normpath(os.path.join(os.path.dirname(_C.__file__), "..", "..", "specopt"))
pytestmark = pytest.mark.skipif(not os.access(CLI, os.X_OK), reason=f"no CLI at {CLI} (pip install)")

TINY_GPT = ["model.kind=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
            "model.block_size=16", "data.kind=kjv", "data.val_limit=8192", "train.batch_size=4",
            "train.steps=2", "train.eval_batches=1", "train.checkpoint_every=2", "run.threads=1"]


def cli(*args):
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc


def train(run_dir, sets):
    args = ["train", "--quiet", "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return os.path.join(run_dir, "checkpoint.pt")


@pytest.fixture(scope="module")
def gpt_checkpoint(tmp_path_factory):
    return train(tmp_path_factory.mktemp("gpt"), TINY_GPT + ["optim.variant=AdamS"])


def test_load_checkpoint_names_model_and_optimizer_state(gpt_checkpoint):
    ck = specopt.load_checkpoint(gpt_checkpoint)
    model = ck["model"]
    assert list(model)[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert model["transformer.h.0.attn.c_attn.weight"].shape == (48, 16)
    assert ck["step"] == 2
    assert ck["config"]["optim"]["variant"] == "AdamS" and ck["config"]["train"]["steps"] == 2
    assert "[optim]" in ck["config_toml"]
    opt = ck["optimizer"]
    assert opt["family"] == "Adam"
    # Every model parameter is in exactly one group, and its state fits it.
    grouped = [n for g in opt["param_groups"] for n in g["params"]]
    assert sorted(grouped) == sorted(model)
    for g in opt["param_groups"]:
        assert g["optimizer"] == "SpectralAdamW"
        matrix = model[g["params"][0]].dim() >= 2
        assert g["p"] == (0.5 if matrix else 1.0)  # AdamS on matrices, AdamW on vectors
    for name, state in opt["state"].items():
        assert state["step"] == 2
        assert state["exp_avg"].shape == model[name].shape == state["exp_avg_sq"].shape
        assert bool((state["exp_avg_sq"] > 0).any())
    assert ck["extra"]["data_step"] == 2 and ck["extra"]["rng_cpu"].dtype == torch.uint8


def test_sgd_state_is_momentum_buffers(tmp_path):
    ck = specopt.load_checkpoint(train(tmp_path, TINY_GPT + ["optim.variant=mSGDZ", "optim.lr_matrix=0.01"]))
    opt = ck["optimizer"]
    assert opt["family"] == "mSGD"
    kinds = {g["optimizer"] for g in opt["param_groups"]}
    assert kinds == {"SpectralSGD", "SpectralAdamW"}  # the study's AdamW vector group
    for g in opt["param_groups"]:
        for name in g["params"]:
            state = opt["state"][name]
            if g["optimizer"] == "SpectralSGD":
                assert g["p"] == 0.0 and set(state) == {"momentum_buffer"}
                assert state["momentum_buffer"].shape == ck["model"][name].shape
            else:
                assert set(state) == {"step", "exp_avg", "exp_avg_sq"}


def test_bad_files_are_named(tmp_path, gpt_checkpoint):
    data = open(gpt_checkpoint, "rb").read()
    cases = {"junk.pt": (b"hello, not a checkpoint" * 2, "not a specopt checkpoint"),
             "short.pt": (data[:10], "shorter than the 24-byte header"),
             "truncated.pt": (data[:-100], "truncated"),
             "corrupt.pt": (data[:500] + bytes([data[500] ^ 1]) + data[501:], "CRC-32"),
             "version.pt": (data[:8] + b"\x02" + data[9:], "format version 2")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message) as e:
            specopt.load_checkpoint(str(path))
        assert name in str(e.value)


class _LayerNorm(torch.nn.Module):  # nanoGPT's LayerNorm with bias=False
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class _Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1, self.ln_2 = _LayerNorm(d), _LayerNorm(d)
        self.attn = torch.nn.Module()
        self.attn.c_attn = torch.nn.Linear(d, 3 * d, bias=False)
        self.attn.c_proj = torch.nn.Linear(d, d, bias=False)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc = torch.nn.Linear(d, 4 * d, bias=False)
        self.mlp.c_proj = torch.nn.Linear(4 * d, d, bias=False)


class _NanoGPT(torch.nn.Module):
    """nanoGPT's module tree (model.py, bias=False): only the names and shapes matter here."""

    def __init__(self, vocab, block, n_layer, d):
        super().__init__()
        self.transformer = torch.nn.ModuleDict(dict(
            wte=torch.nn.Embedding(vocab, d), wpe=torch.nn.Embedding(block, d),
            h=torch.nn.ModuleList([_Block(d) for _ in range(n_layer)]), ln_f=_LayerNorm(d)))
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying


def _torch_load(path):
    try:
        return torch.load(path, weights_only=True)  # torch >= 1.13: only tensors and containers
    except TypeError:
        return torch.load(path)


def test_export_is_a_plain_state_dict_nanogpt_loads(tmp_path, gpt_checkpoint):
    out = tmp_path / "model.pt"
    proc = cli("export", gpt_checkpoint, str(out))
    assert proc.returncode == 0, proc.stderr
    sd = _torch_load(str(out))
    ck = specopt.load_checkpoint(gpt_checkpoint)
    assert isinstance(sd, dict) and set(sd) == set(ck["model"]) | {"lm_head.weight"}
    for name, t in ck["model"].items():
        assert torch.equal(sd[name], t), name  # the two readers agree bit for bit
    assert torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    nano = _NanoGPT(vocab=256, block=16, n_layer=1, d=16)
    nano.load_state_dict(sd, strict=True)
    assert torch.equal(nano.transformer.h[0].attn.c_attn.weight, ck["model"]["transformer.h.0.attn.c_attn.weight"])


def test_export_of_a_bad_checkpoint_exits_one(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"x" * 64)
    proc = cli("export", str(tmp_path / "junk.pt"), str(tmp_path / "out.pt"))
    assert proc.returncode == 1 and "not a specopt checkpoint" in proc.stderr
    assert not (tmp_path / "out.pt").exists()
