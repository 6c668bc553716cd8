"""SpectralAdamW / SpectralSGD / make_optimizer: against the C++ optimizer classes, torch.optim,
SVD references, state_dict round trips, lr schedulers and error types."""
import copy
import io

import pytest
import torch

import specopt
from specopt import _C

SHAPES = [(6, 4), (4, 6), (6, 4), (9, 3), (2, 3, 2), (5,)]  # same-shape pair: one batched call


def make_params(dtype=torch.float64):
    return [torch.randn(*s, dtype=dtype, requires_grad=True) for s in SHAPES]


def grad_sequence(params, steps):
    return [[torch.randn_like(p) for p in params] for _ in range(steps)]


def run_python(opt_factory, params, grads):
    params = [p.detach().clone().requires_grad_(True) for p in params]
    opt = opt_factory(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return params


class TinyNet(torch.nn.Module):
    """Names like a transformer block: a packed 'c_attn' (3d x d), a projection, norms."""

    def __init__(self, d=4):
        super().__init__()
        self.c_attn = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(3 * d, d)
        self.norm = torch.nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(self.proj(torch.tanh(self.c_attn(x))))


# ---- the Python optimizers run exactly the C++ optimizer classes' arithmetic ----------------

GROUPS = [
    ("adamw", dict(p=1.0, method="auto")),
    ("adamw", dict(p=0.5, method="svd", weight_decay=0.1)),
    ("adamw", dict(p=0.25, method="eigh", decay_vectors=True, weight_decay=0.05)),
    ("adamw", dict(p=0.0, method="svd", scale="shape", row_blocks=1)),
    ("adamw", dict(p=0.0, method="eigh", scale="rms", spectral={"rank_tol": 1e-6})),
    ("sgd", dict(p=1.0, nesterov=True)),
    ("sgd", dict(p=0.5, method="eigh", momentum=0.8, weight_decay=0.1)),
    ("sgd", dict(p=0.0, method="svd", scale="auto")),
    ("sgd", dict(p=0.25, method="svd", scale="none", nesterov=True, decay_vectors=True,
                 weight_decay=0.01)),
]


@pytest.mark.parametrize("kind,options", GROUPS)
def test_python_optimizer_matches_cpp_class(kind, options):
    params = make_params()
    grads = grad_sequence(params, 4)
    if kind == "adamw":
        group = dict(_C.adamw_defaults(), lr=0.01, **options)
        cls = specopt.SpectralAdamW
    else:
        group = dict(_C.sgd_defaults(), lr=0.01, **options)
        cls = specopt.SpectralSGD
    ref = _C._cpp_optimizer_run(kind, params, group, grads)
    kwargs = {k: v for k, v in group.items() if k != "update"}
    out = run_python(lambda ps: cls(ps, **kwargs), params, grads)
    for a, b in zip(out, ref):
        assert torch.equal(a.detach(), b.detach())
    assert not any(torch.equal(a.detach(), p.detach()) for a, p in zip(out, params))


@pytest.mark.parametrize("variant", [v.name for v in specopt.named_variants()] + ["adam:p=0.3"])
def test_make_optimizer_matches_cpp_make_optimizer(variant):
    net = TinyNet().double()
    named = list(net.named_parameters())
    names = [n for n, _ in named]
    params = [p for _, p in named]
    grads = grad_sequence(params, 3)
    # Every key stated: Python's make_optimizer defaults are the classes' (torch's), the C++
    # OptimizerSpec's the study's.
    spec = dict(variant=variant, lr_matrix=0.02, lr_vector=0.003, weight_decay_matrix=0.1,
                weight_decay_vector=0.01, beta1=0.9, beta2=0.95, eps=1e-8, momentum=0.9,
                nesterov=False, split_rows_patterns=["c_attn"], split_rows_blocks=3, method="svd")
    ref = _C._cpp_make_optimizer_run(names, params, spec, grads)

    copies = [p.detach().clone().requires_grad_(True) for p in params]
    opt = specopt.make_optimizer(list(zip(names, copies)), **spec)
    for step_grads in grads:
        for p, g in zip(copies, step_grads):
            p.grad = g.clone()
        opt.step()
    for a, b in zip(copies, ref):
        assert torch.equal(a.detach(), b.detach())


def test_make_optimizer_groups():
    net = TinyNet()
    opt = specopt.make_optimizer(net, "mSGDZ", lr_matrix=0.05, lr_vector=1e-3,
                                 split_rows_patterns=["c_attn"])
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, specopt.SpectralSGD)
    assert opt.variant.name == "mSGDZ"
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert by_name["c_attn.weight"]["row_blocks"] == 3 and by_name["proj.weight"]["row_blocks"] == 1
    for n in ["c_attn.weight", "proj.weight"]:
        g = by_name[n]
        assert (g["role"], g["update"], g["p"], g["lr"]) == ("matrix", "sgd", 0.0, 0.05)
    for n in ["c_attn.bias", "proj.bias", "norm.weight", "norm.bias"]:
        g = by_name[n]
        assert (g["role"], g["update"], g["p"], g["lr"]) == ("vector", "adamw", 1.0, 1e-3)
    # The study's rule goes by shape: c_attn (12 x 4) is split, proj (4 x 12) is not.
    assert specopt.optimizer_spec_defaults()["split_rows_by_shape"] is False
    opt = specopt.make_optimizer(net, "AdamS", split_rows_by_shape=True)
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert by_name["c_attn.weight"]["row_blocks"] == 3 and by_name["proj.weight"]["row_blocks"] == 1
    opt = specopt.make_optimizer(net, "AdamQ")
    assert isinstance(opt, specopt.SpectralAdamW)
    assert {g["update"] for g in opt.param_groups} == {"adamw"}
    # make_optimizer's defaults are SpectralAdamW's (docs/python.md, "Defaults")
    assert [g["lr"] for g in opt.param_groups] == [_C.adamw_defaults()["lr"]] * 2


# ---- independent references -------------------------------------------------------------------

def assert_same_training(net, opt, ref_net, ref, x, steps):
    """Train two copies of a model in lockstep on the same loss; their parameters must agree."""
    for _ in range(steps):
        for model, o in ((net, opt), (ref_net, ref)):
            o.zero_grad()
            model(x).pow(2).mean().backward()
            o.step()
    for a, b in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_p1_adamw_matches_torch_adamw():
    torch.manual_seed(1)
    net = TinyNet().double()
    ref_net = copy.deepcopy(net)
    x = torch.randn(16, 4, dtype=torch.float64)
    opt = specopt.SpectralAdamW(net.parameters(), lr=0.01, betas=(0.9, 0.95), eps=1e-8,
                                weight_decay=0.1, decay_vectors=True)
    ref = torch.optim.AdamW(ref_net.parameters(), lr=0.01, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1)
    assert_same_training(net, opt, ref_net, ref, x, steps=5)


def test_make_optimizer_adam_is_two_group_torch_adamw():
    # Adam (p = 1): matrices at lr_matrix with weight_decay_matrix, vectors at lr_vector
    # with weight_decay_vector: torch AdamW with those two groups.
    net = TinyNet().double()
    ref_net = copy.deepcopy(net)
    x = torch.randn(8, 4, dtype=torch.float64)
    opt = specopt.make_optimizer(net, "Adam", lr_matrix=0.02, lr_vector=0.005,
                                 weight_decay_matrix=0.1, weight_decay_vector=0.2)
    matrices = [p for p in ref_net.parameters() if p.dim() >= 2]
    vectors = [p for p in ref_net.parameters() if p.dim() < 2]
    ref = torch.optim.AdamW([dict(params=matrices, lr=0.02, weight_decay=0.1),
                             dict(params=vectors, lr=0.005, weight_decay=0.2)],
                            betas=(0.9, 0.999), eps=1e-8)  # make_optimizer's default betas: AdamW's
    assert_same_training(net, opt, ref_net, ref, x, steps=4)


@pytest.mark.parametrize("nesterov", [False, True])
def test_p1_sgd_matches_torch_sgd(nesterov):
    params = make_params()
    grads = grad_sequence(params, 5)
    out = run_python(lambda ps: specopt.SpectralSGD(ps, lr=0.05, momentum=0.9, nesterov=nesterov),
                     params, grads)
    ref = run_python(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=nesterov),
                     params, grads)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def polar(M):
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return U @ Vh


def test_p0_svd_steps_are_polar_factors():
    W = torch.randn(8, 3, dtype=torch.float64)
    G1, G2 = torch.randn(2, 8, 3, dtype=torch.float64)
    lr, mu = 0.1, 0.9
    # mSGDZ, scale none: W1 = W - lr UV^T(g1), W2 = W1 - lr UV^T(mu g1 + g2)
    w = W.clone().requires_grad_(True)
    opt = specopt.SpectralSGD([w], lr=lr, momentum=mu, p=0.0, method="svd", scale="none")
    w.grad = G1.clone(); opt.step()
    w.grad = G2.clone(); opt.step()
    expected = W - lr * polar(G1) - lr * polar(mu * G1 + G2)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-12)
    # AdamZ, scale auto (= the study's max(1, rows/cols)^1/2 at p = 0), first step:
    # u = m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps)
    w = W.clone().requires_grad_(True)
    opt = specopt.SpectralAdamW([w], lr=lr, eps=1e-8, weight_decay=0.0, p=0.0, method="svd")
    w.grad = G1.clone(); opt.step()
    expected = W - lr * (8 / 3) ** 0.5 * polar(G1 / (G1.abs() + 1e-8))
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-12)


# ---- state_dict, schedulers -------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["AdamS", "mSGDQ"])
def test_state_dict_round_trip_mid_run(variant):
    torch.manual_seed(2)
    net = TinyNet()
    x = torch.randn(16, 4)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    kw = dict(lr_matrix=0.02, lr_vector=0.003, split_rows_patterns=["c_attn"], method="eigh")
    opt = specopt.make_optimizer(net, variant, **kw)
    train(net, opt, 3)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)

    resumed_net = TinyNet()
    resumed = specopt.make_optimizer(resumed_net, variant, **kw)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed_net.load_state_dict(ckpt["model"])
    resumed.load_state_dict(ckpt["opt"])
    train(net, opt, 3)
    train(resumed_net, resumed, 3)
    for a, b in zip(net.parameters(), resumed_net.parameters()):
        assert torch.equal(a, b)
    # and the resumed state is the continued one, not a fresh start
    fresh_net = TinyNet()
    fresh_net.load_state_dict(ckpt["model"])
    train(fresh_net, specopt.make_optimizer(fresh_net, variant, **kw), 3)
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), fresh_net.parameters()))


def test_lr_scheduler_drives_the_step():
    params = make_params()
    grads = grad_sequence(params, 6)

    def with_scheduler(factory):
        ps = [p.detach().clone().requires_grad_(True) for p in params]
        opt = factory(ps)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
        lrs = []
        for step_grads in grads:
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        return ps, lrs

    out, lrs = with_scheduler(lambda ps: specopt.SpectralAdamW(ps, lr=0.1, decay_vectors=True))
    ref, _ = with_scheduler(lambda ps: torch.optim.AdamW(ps, lr=0.1))
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- errors -----------------------------------------------------------------------------------

def test_bad_options_raise_value_error():
    w = [torch.randn(3, 3, requires_grad=True)]
    with pytest.raises(ValueError, match="invalid learning rate: -1"):
        specopt.SpectralAdamW(w, lr=-1.0)
    with pytest.raises(ValueError, match="invalid beta1"):
        specopt.SpectralAdamW(w, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="p"):
        specopt.SpectralAdamW(w, p=2.0)
    with pytest.raises(ValueError, match="unknown spectral method 'fast'"):
        specopt.SpectralSGD(w, lr=0.1, method="fast")
    with pytest.raises(ValueError, match="unknown scale mode 'big'"):
        specopt.SpectralSGD(w, lr=0.1, scale="big")
    with pytest.raises(ValueError, match="invalid momentum"):
        specopt.SpectralSGD(w, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match="unknown spectral option 'tolerance'"):
        specopt.SpectralSGD(w, lr=0.1, spectral={"tolerance": 1e-3})
    with pytest.raises(ValueError, match="unknown optimizer variant 'Lion'"):
        specopt.make_optimizer(TinyNet(), "Lion")
    with pytest.raises(ValueError, match="invalid lr_vector"):
        specopt.make_optimizer(TinyNet(), "AdamS", lr_vector=-1.0)
    with pytest.raises(ValueError, match="unknown option 'lr_matrx'"):
        specopt.make_optimizer(TinyNet(), "AdamS", lr_matrx=1e-3)
    with pytest.raises(TypeError, match="'lr' must be a float"):
        specopt.SpectralAdamW(w, lr="fast")
    opt = specopt.SpectralAdamW(w)
    with pytest.raises(ValueError, match="invalid learning rate"):  # group added later
        opt.add_param_group({"params": [torch.randn(2, requires_grad=True)], "lr": -0.5})
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["p"] = 7.0  # edited in place: caught at the step, before any change
    w[0].grad = torch.randn(3, 3)
    before = w[0].detach().clone()
    with pytest.raises(ValueError):
        opt.step()
    assert torch.equal(w[0].detach(), before) and not opt.state


@pytest.mark.parametrize("variant", ["AdamZ", "mSGDS"])
def test_non_finite_gradient_raises_before_any_change(variant):
    net = TinyNet()
    opt = specopt.make_optimizer(net, variant)
    x = torch.randn(4, 4)
    net(x).sum().backward()
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in net.parameters()]
    net(x).sum().backward()
    net.norm.bias.grad[0] = float("inf")
    with pytest.raises(RuntimeError, match="norm.bias"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), params))
    after = opt.state_dict()
    for k, s in state["state"].items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(after["state"][k][key]))


def test_optimizer_deepcopies_and_pickles():
    import pickle

    opt = specopt.make_optimizer(TinyNet(), "adam:p=0.3")
    assert copy.deepcopy(opt).variant == opt.variant
    assert pickle.loads(pickle.dumps(opt.variant)) == specopt.parse_variant("adam:p=0.3")


@pytest.mark.parametrize("cls,kw", [(specopt.SpectralAdamW, {}), (specopt.SpectralSGD, {"lr": 0.1})])
def test_row_blocks_must_divide_rows(cls, kw):
    w = torch.randn(4, 3, requires_grad=True)
    opt = cls([w], row_blocks=3, **kw)
    w.grad = torch.randn(4, 3)
    before = w.detach().clone()
    with pytest.raises(RuntimeError, match="row_blocks"):
        opt.step()
    assert torch.equal(w.detach(), before) and not opt.state_dict()["state"]


# ---- the C++ field tables drive the group dicts and make_optimizer's options ----------------

SPECTRAL = dict(tol=3e-5, iterations=7, newton_lower=2e-3, ns_steps=9, ns_coefficients="polar_express",
                compute_dtype=torch.float64, neg_eps=5e-4, rank_tol=1e-9, check_finite=False)


@pytest.mark.parametrize("kind,group", [
    ("adamw", dict(lr=2e-3, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.05, decay_vectors=True, p=0.25,
                   method="newton", scale="rms", row_blocks=3, spectral=SPECTRAL, update="adamw")),
    ("sgd", dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.01, decay_vectors=True, p=0.5,
                 method="eigh", scale="shape", row_blocks=2, spectral=SPECTRAL, update="sgd")),
])
def test_group_dict_round_trips_every_field(kind, group):
    """Every option non-default: a field missing from the C++ table would come back at its default."""
    assert _C._group_round_trip(kind, group) == group
    defaults = _C.adamw_defaults() if kind == "adamw" else dict(_C.sgd_defaults(), lr=0.0)
    assert set(defaults) == set(group)


def test_make_optimizer_spec_round_trips_every_field():
    spec = dict(variant="mSGDQ", lr_matrix=0.02, lr_vector=0.004, weight_decay_matrix=0.1,
                weight_decay_vector=0.2, beta1=0.8, beta2=0.99, eps=1e-6, momentum=0.7, nesterov=True,
                method="newton", scale="rms", split_rows_patterns=["a"], split_rows_by_shape=True,
                split_rows_blocks=4, exclude_from_spectral=["w"], on_nonfinite="skip_step",
                spectral=SPECTRAL)
    assert _C._spec_round_trip(spec) == spec
    assert set(_C.optimizer_spec_defaults()) == set(spec)
