"""specopt.Muon: parity with torch.optim.Muon (torch >= 2.9: the torch-2 leg), the C++ class,
a float64 reference for p != 0, and KellerJordan-style / "Muon" groups in make_optimizer."""
import inspect
import io

import pytest
import torch

import specopt
from specopt import _C

HAS_TORCH_MUON = hasattr(torch.optim, "Muon")
needs_torch_muon = pytest.mark.skipif(
    not HAS_TORCH_MUON,
    reason=f"torch.optim.Muon needs torch >= 2.9, this is torch {torch.__version__}; the parity "
           f"tests run in the torch-2 leg (scripts/torch2.sh test)")


def muon_model():
    """A small model with 2-D float32 params only: tall, wide and square matrices."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(32, 24, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(24, 24, bias=False), torch.nn.Linear(24, 8, bias=False))


def run(factory, params, grads):
    params = [p.detach().clone().requires_grad_(True) for p in params]
    opt = factory(params)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return params, opt


def max_relative_difference(got, want):
    return max(((a.detach().double() - b.detach().double()).abs().max() / b.detach().double().abs().max()).item()
               for a, b in zip(got, want))


CONFIGS = [
    {},
    dict(lr=0.02, weight_decay=0.0),
    dict(lr=0.02, nesterov=False, momentum=0.9),
    dict(lr=0.01, adjust_lr_fn="match_rms_adamw"),
    dict(lr=0.01, adjust_lr_fn="spectral_unclamped", weight_decay=0.05),
    dict(lr=0.02, adjust_lr_fn="original", ns_coefficients=(3.0, -3.2, 1.2), ns_steps=3, eps=1e-6),
]


@needs_torch_muon
@pytest.mark.parametrize("kw", CONFIGS)
def test_ten_steps_equal_torch_optim_muon(kw):
    params = list(muon_model().parameters())
    grads = [[torch.randn_like(p) for p in params] for _ in range(10)]
    ours, _ = run(lambda ps: specopt.Muon(ps, **kw), params, grads)
    theirs, _ = run(lambda ps: torch.optim.Muon(ps, **kw), params, grads)
    assert all(p.dtype == torch.float32 for p in ours)
    assert max_relative_difference(ours, theirs) <= 1e-6  # the bound; measured: 0 (bit-identical)
    assert max_relative_difference(ours, params) > 1e-3  # the steps did move the parameters


@needs_torch_muon
def test_training_loop_equals_torch_optim_muon_and_resumes_from_its_state_dict():
    x, y = torch.randn(64, 16), torch.randn(64, 8)
    nets = [muon_model(), muon_model()]
    opts = [specopt.Muon(nets[0].parameters(), lr=0.02), torch.optim.Muon(nets[1].parameters(), lr=0.02)]
    for step in range(10):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        if step == 4:  # torch's state_dict (saved, as a checkpoint) loads into specopt.Muon
            buf = io.BytesIO()
            torch.save(opts[1].state_dict(), buf)
            buf.seek(0)
            opts[0] = specopt.Muon(nets[0].parameters(), lr=0.5)  # lr and state come from the file
            opts[0].load_state_dict(torch.load(buf))
            assert opts[0].param_groups[0]["lr"] == 0.02 and opts[0].param_groups[0]["update"] == "muon"
    assert max_relative_difference(list(nets[0].parameters()), list(nets[1].parameters())) <= 1e-6
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))  # measured: equal


@needs_torch_muon
def test_signature_and_defaults_are_torch_optim_muons():
    ours = inspect.signature(specopt.Muon.__init__).parameters
    theirs = inspect.signature(torch.optim.Muon.__init__).parameters
    for name, param in theirs.items():
        assert name in ours, name
        if param.default is not inspect.Parameter.empty:
            assert ours[name].default == param.default, name
    assert list(ours)[:len(theirs)] == list(theirs)  # same positional order


def test_defaults_are_torch_optim_muons_documented_values():
    sig = inspect.signature(specopt.Muon.__init__).parameters
    assert {k: sig[k].default for k in ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients",
                                        "eps", "ns_steps", "adjust_lr_fn", "p")} == dict(
        lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.7750, 2.0315),
        eps=1e-7, ns_steps=5, adjust_lr_fn=None, p=0.0)


@pytest.mark.parametrize("kw", CONFIGS + [dict(lr=0.02, p=0.5, method="eigh"), dict(p=0.25, method="svd")])
def test_python_muon_runs_the_cpp_class_arithmetic(kw):
    params = list(muon_model().parameters())
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    ours, _ = run(lambda ps: specopt.Muon(ps, **kw), params, grads)
    group = dict(_C.muon_defaults(), spectral={}, **kw)
    ref = _C._cpp_muon_run(params, group, grads)
    for a, b in zip(ours, ref):
        assert torch.equal(a.detach(), b.detach())


def psi(d, p):
    U, S, Vh = torch.linalg.svd(d.double(), full_matrices=False)
    return (U * S.pow(p)) @ Vh


@pytest.mark.parametrize("fn,ratio", [(None, lambda m, n: max(1, m / n) ** 0.5),
                                      ("match_rms_adamw", lambda m, n: 0.2 * max(m, n) ** 0.5),
                                      ("spectral_unclamped", lambda m, n: (m / n) ** 0.5)])
def test_muon_with_psi_half_matches_float64_reference(fn, ratio):
    params = [torch.randn(12, 5, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(6)]
    lr, wd, mu = 0.03, 0.1, 0.95
    ours, _ = run(lambda ps: specopt.Muon(ps, lr=lr, weight_decay=wd, adjust_lr_fn=fn, p=0.5, method="svd"),
                  params, grads)
    W = [p.clone() for p in params]
    B = [torch.zeros_like(p) for p in params]
    for step in grads:
        for i, g in enumerate(step):
            B[i] = mu * B[i] + (1 - mu) * g
            d = (1 - mu) * g + mu * B[i]
            W[i] = W[i] * (1 - lr * wd) - lr * ratio(*W[i].shape) * psi(d, 0.5)
    torch.testing.assert_close([p.detach() for p in ours], W, rtol=1e-10, atol=1e-10)


def test_muon_rejects_what_torch_rejects():
    with pytest.raises(ValueError, match="only supports 2-D parameters"):
        specopt.Muon([torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)])
    w = [torch.randn(4, 3, requires_grad=True)]
    with pytest.raises(ValueError, match="unknown adjust_lr_fn 'rms'"):
        specopt.Muon(w, adjust_lr_fn="rms")
    with pytest.raises(ValueError, match="invalid learning rate: -1"):
        specopt.Muon(w, lr=-1.0)
    with pytest.raises(ValueError, match=r"ns_steps must lie in \[1, 99\], got 100"):
        specopt.Muon(w, ns_steps=100)
    with pytest.raises(TypeError, match="'ns_coefficients' must be a tuple of 3 floats"):
        specopt.Muon(w, ns_coefficients=(1.0, 2.0))


def test_muon_on_nonfinite_skip_step():
    w = torch.randn(4, 3, requires_grad=True)
    opt = specopt.Muon([w], on_nonfinite="skip_step")
    before = w.detach().clone()
    w.grad = torch.full((4, 3), float("nan"))
    opt.step()
    assert torch.equal(w.detach(), before) and opt.skipped_steps == 1 and not opt.state
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        specopt.Muon([w], on_nonfinite="ignore")


# ---- make_optimizer: KellerJordan groups, "Muon", embeddings and head -------------------------

class LM(torch.nn.Module):
    """Embedding, two hidden matrices with biases, a norm and an untied head."""

    def __init__(self, vocab=11, d=6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.fc = torch.nn.Linear(d, 2 * d)
        self.proj = torch.nn.Linear(2 * d, d)
        self.norm = torch.nn.LayerNorm(d)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        return self.lm_head(self.norm(h + self.proj(torch.relu(self.fc(h)))))


def train(net, opt, steps=3):
    torch.manual_seed(5)
    idx = torch.randint(0, 11, (8, 5))
    for _ in range(steps):
        opt.zero_grad()
        net(idx).logsumexp(-1).mean().backward()
        opt.step()


def test_keller_jordan_groups_are_muon_plus_adamw():
    net = LM().double()
    hidden = [net.fc.weight, net.proj.weight]
    rest = [p for p in net.parameters() if all(p is not h for h in hidden)]
    opt = specopt.make_optimizer([dict(params=hidden, use_muon=True, lr=0.02, weight_decay=0.01),
                                  dict(params=rest, use_muon=False, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)])
    assert isinstance(opt, specopt.Muon) and [g["update"] for g in opt.param_groups] == ["muon", "adamw"]
    assert opt.param_groups[0]["momentum"] == 0.95 and opt.param_groups[1]["eps"] == 1e-10  # KJ's defaults

    ref_net = LM().double()
    ref_net.load_state_dict(net.state_dict())
    ref_hidden = [ref_net.fc.weight, ref_net.proj.weight]
    ref_rest = [p for p in ref_net.parameters() if all(p is not h for h in ref_hidden)]

    class Both:  # KJ's MuonWithAuxAdam: Muon for hidden, Adam (= AdamW, eps 1e-10) for the rest
        muon = specopt.Muon(ref_hidden, lr=0.02, weight_decay=0.01, momentum=0.95)
        adam = torch.optim.AdamW(ref_rest, lr=3e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.01)

        def zero_grad(self):
            ref_net.zero_grad()

        def step(self):
            self.muon.step()
            self.adam.step()

    train(net, opt)
    train(ref_net, Both())
    for a, b in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_group_keys_are_checked():
    net = LM()
    with pytest.raises(ValueError, match="param group 0 \\(muon\\) has unknown key 'betas'"):
        specopt.make_optimizer([dict(params=[net.fc.weight], use_muon=True, betas=(0.9, 0.9))])
    with pytest.raises(TypeError, match="'use_muon' must be True or False"):
        specopt.make_optimizer([dict(params=[net.fc.weight], use_muon="yes")])
    with pytest.raises(ValueError, match="'update' must be one of"):
        specopt.make_optimizer([dict(params=[net.fc.weight], update="lion", lr=0.1)])
    with pytest.raises(ValueError, match="only supports 2-D parameters"):
        specopt.make_optimizer([dict(params=[net.fc.bias], use_muon=True)])
    # our own key: update="muon" with specopt's p
    opt = specopt.make_optimizer([dict(params=[net.fc.weight], update="muon", lr=0.02, p=0.5),
                                  dict(params=[net.fc.bias], update="adamw", lr=1e-3)])
    assert (opt.param_groups[0]["p"], opt.param_groups[0]["weight_decay"]) == (0.5, 0.1)  # torch Muon's wd


def test_muon_variant_excludes_embeddings_and_head():
    net = LM()
    opt = specopt.make_optimizer(net, "Muon", lr=0.02, exclude_embeddings_and_head=True)
    muon, adamw = opt.param_groups
    assert muon["update"] == "muon" and muon["param_names"] == ["fc.weight", "proj.weight"]
    assert set(adamw["param_names"]) == {"embed.weight", "fc.bias", "proj.bias", "norm.weight", "norm.bias",
                                         "lm_head.weight"}
    assert adamw["update"] == "adamw" and adamw["p"] == 1.0 and muon["lr"] == adamw["lr"] == 0.02
    train(net, opt)
    # without the option every 2-D matrix is in the Muon group
    opt = specopt.make_optimizer(LM(), "Muon")
    assert opt.param_groups[0]["param_names"] == ["embed.weight", "fc.weight", "proj.weight", "lm_head.weight"]


def test_study_variant_excludes_embeddings_and_head_by_module_and_by_name():
    net = LM()
    for params in (net, list(net.named_parameters())):  # module: by type; names: by name rule
        opt = specopt.make_optimizer(params, "AdamZ", exclude_embeddings_and_head=True)
        by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
        assert by_name["fc.weight"]["p"] == 0.0 and by_name["proj.weight"]["p"] == 0.0
        assert by_name["embed.weight"]["p"] == 1.0 and by_name["lm_head.weight"]["p"] == 1.0
        assert by_name["embed.weight"]["role"] == "vector"
    with pytest.raises(ValueError, match="exclude_from_spectral names 'nope'"):
        specopt.make_optimizer(net, "AdamZ", exclude_from_spectral=["nope"])
