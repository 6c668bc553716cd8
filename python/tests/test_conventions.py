"""torch.optim conventions (issue 15, items 2-4): torch's option names and params forms in
make_optimizer, unsupported torch options, __version__, one set of defaults, load_state_dict
refusing another algorithm, and on_nonfinite."""
import copy
import io
import os
import re

import pytest
import torch

import specopt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x)))


def train(net, opt, steps=3):
    torch.manual_seed(1)
    x = torch.randn(16, 4)
    for _ in range(steps):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()


def snapshot(net):
    return [p.detach().clone() for p in net.parameters()]


def test_torch_names_map_onto_the_spec():
    opt = specopt.make_optimizer(Net(), "AdamS", lr=1e-2, betas=(0.8, 0.9), weight_decay=0.05)
    matrix, vector = opt.param_groups
    assert (matrix["role"], vector["role"]) == ("matrix", "vector")
    assert matrix["lr"] == vector["lr"] == 1e-2
    assert matrix["betas"] == vector["betas"] == (0.8, 0.9)
    assert (matrix["weight_decay"], vector["weight_decay"]) == (0.05, 0.0)  # vectors: weight_decay_vector
    opt = specopt.make_optimizer(Net(), "AdamS", lr=1e-2, lr_vector=1e-3)  # explicit lr_vector wins
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-3]
    with pytest.raises(ValueError, match="give 'betas' or 'beta1', not both"):
        specopt.make_optimizer(Net(), "AdamS", betas=(0.9, 0.9), beta1=0.8)
    with pytest.raises(TypeError, match="'betas' must be a pair of floats"):
        specopt.make_optimizer(Net(), "AdamS", betas=0.9)


def test_every_params_form_gives_the_same_training():
    torch.manual_seed(0)
    base = Net()
    results = []
    forms = [lambda n: n, lambda n: n.parameters(), lambda n: list(n.named_parameters()),
             lambda n: [{"params": list(n.parameters())}]]
    for form in forms:
        net = copy.deepcopy(base)
        opt = specopt.make_optimizer(form(net), "mSGDS", lr=0.05, method="svd")
        train(net, opt)
        results.append(snapshot(net))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    assert not torch.equal(results[0][0], base.fc.weight)


def test_param_group_dicts_take_their_own_options():
    net = Net()
    opt = specopt.make_optimizer([{"params": net.fc.parameters(), "lr": 0.1},
                                  {"params": net.out.parameters(), "weight_decay": 0.2}], "AdamQ", lr=0.01)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [0.1, 0.1, 0.01, 0.01]  # fc: matrix + vector group, out: matrix + vector group
    assert [g["weight_decay"] for g in opt.param_groups][2] == 0.2
    with pytest.raises(ValueError, match="make_optimizer: param group 1: unknown option 'momentun'"):
        specopt.make_optimizer([{"params": net.fc.parameters()}, {"params": net.out.parameters(), "momentun": 0.9}])


def test_bad_params_say_what_was_expected():
    with pytest.raises(TypeError, match="an iterable of tensors.*got a single Tensor \\(wrap it in a list\\)"):
        specopt.make_optimizer(torch.randn(3, 3, requires_grad=True), "AdamS")
    with pytest.raises(ValueError, match="empty parameter list"):
        specopt.make_optimizer([], "AdamS")
    with pytest.raises(TypeError, match="not mixed.*got items of type"):
        specopt.make_optimizer([torch.randn(2, 2, requires_grad=True), ("b", torch.randn(2))], "AdamS")
    with pytest.raises(TypeError, match="got int"):
        specopt.make_optimizer(3, "AdamS")


@pytest.mark.parametrize("option", ["maximize", "foreach", "amsgrad", "fused", "capturable", "differentiable"])
def test_unsupported_torch_options_raise(option):
    with pytest.raises(TypeError, match=f"torch.optim option {option}=True is not supported by specopt"):
        specopt.make_optimizer(Net(), "AdamS", **{option: True})
    with pytest.raises(TypeError, match=f"{option}=True is not supported"):
        specopt.SpectralAdamW(Net().parameters(), **{option: True})
    with pytest.raises(TypeError, match=f"{option}=True is not supported"):
        specopt.Muon([torch.randn(3, 3, requires_grad=True)], **{option: True})
    # the no-op values of torch's defaults pass, so torch.optim code runs unchanged
    specopt.make_optimizer(Net(), "AdamS", **{option: None if option == "foreach" else False})


def test_version_is_the_projects():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        version = re.search(r"project\(specopt VERSION ([0-9.]+)", f.read()).group(1)
    assert specopt.__version__ == version == specopt.build_info.VERSION


def test_one_set_of_defaults():
    """SpectralAdamW, SpectralSGD and make_optimizer share torch.optim's defaults (docs/python.md)."""
    import inspect

    adamw = inspect.signature(specopt.SpectralAdamW.__init__).parameters
    torch_adamw = inspect.signature(torch.optim.AdamW.__init__).parameters
    for key in ("lr", "betas", "eps", "weight_decay"):
        assert adamw[key].default == torch_adamw[key].default, key
    adam = specopt.make_optimizer(Net(), "AdamS")
    for g in adam.param_groups:
        assert (g["lr"], g["betas"], g["eps"]) == (adamw["lr"].default, adamw["betas"].default, adamw["eps"].default)
    assert adam.param_groups[0]["weight_decay"] == adamw["weight_decay"].default
    sgd = specopt.make_optimizer(Net(), "mSGD")
    assert sgd.param_groups[0]["momentum"] == inspect.signature(specopt.SpectralSGD.__init__).parameters[
        "momentum"].default


# ---- load_state_dict ----------------------------------------------------------------------------

def test_load_state_dict_refuses_another_variant():
    net = Net()
    adams = specopt.make_optimizer(net, "AdamS")
    train(net, adams)
    state = adams.state_dict()
    msgdz = specopt.make_optimizer(net, "mSGDZ")
    before = copy.deepcopy(msgdz.param_groups[0])
    with pytest.raises(ValueError, match=r"another algorithm \(AdamS\).*update='adamw' p=0\.5.*"
                                         r"SpectralSGD mSGDZ\) has update='sgd' p=0\.0.*allow_variant_change=True"):
        msgdz.load_state_dict(state)
    assert msgdz.param_groups[0]["update"] == before["update"] and msgdz.variant.name == "mSGDZ"
    assert not msgdz.state
    # deliberate: the groups and .variant become AdamS's, and training continues from its state
    msgdz.load_state_dict(state, allow_variant_change=True)
    assert (msgdz.param_groups[0]["update"], msgdz.param_groups[0]["p"], msgdz.variant.name) == ("adamw", 0.5, "AdamS")
    assert len(msgdz.state) == len(adams.state)
    # same variant: loads as before (through torch.save too)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    other = specopt.make_optimizer(net, "AdamS")
    other.load_state_dict(torch.load(buf))
    assert set(other.state_dict()["state"]) == set(state["state"])


def test_load_state_dict_refuses_a_p_change_within_a_family():
    net = Net()
    with pytest.raises(ValueError, match="p=0.5.*p=0.25"):
        specopt.make_optimizer(net, "AdamQ").load_state_dict(specopt.make_optimizer(net, "AdamS").state_dict())


# ---- on_nonfinite -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["AdamS", "mSGDZ"])
def test_on_nonfinite_skip_step_changes_nothing_and_counts(variant):
    net = Net()
    opt = specopt.make_optimizer(net, variant, on_nonfinite="skip_step")
    train(net, opt, 1)
    params, state = snapshot(net), copy.deepcopy(opt.state_dict())
    net(torch.randn(2, 4)).sum().backward()
    net.out.bias.grad[0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), params))
    for k, s in state["state"].items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt.state_dict()["state"][k][key]))
    train(net, opt, 1)  # finite again: steps
    assert opt.skipped_steps == 1 and not torch.equal(net.fc.weight, params[0])
    assert copy.deepcopy(opt).on_nonfinite == "skip_step"


def test_on_nonfinite_default_raises_and_bad_value_is_named():
    net = Net()
    opt = specopt.make_optimizer(net, "AdamS")
    net(torch.randn(2, 4)).sum().backward()
    net.fc.weight.grad[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite gradient for fc.weight"):
        opt.step()
    with pytest.raises(ValueError, match="on_nonfinite must be one of \\('raise', 'skip_step'\\), got 'warn'"):
        specopt.make_optimizer(net, "AdamS", on_nonfinite="warn")
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        specopt.SpectralSGD(net.parameters(), lr=0.1, on_nonfinite="warn")
