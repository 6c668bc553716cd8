"""A bad param group's error names the group (issue 15 item 8)."""
import pytest
import torch

import specopt


def test_adamw_group_without_betas_names_the_group():
    w, b = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(3))
    # A SpectralSGD's defaults have no betas/eps: an "adamw" group must bring its own.
    with pytest.raises(ValueError, match=r"param_groups\[1\] \(role 'vector'\), update='adamw': "
                                         r"param group has no 'betas'"):
        specopt.SpectralSGD([{"params": [w]},
                             {"params": [b], "update": "adamw", "role": "vector", "eps": 1e-8}], lr=0.1)


def test_group_edited_between_steps_is_named_at_step():
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = specopt.SpectralAdamW([{"params": [w]}, {"params": [torch.nn.Parameter(torch.randn(2, 2))]}])
    del opt.param_groups[1]["betas"]
    w.grad = torch.ones_like(w)
    before = w.detach().clone()
    with pytest.raises(ValueError, match=r"param_groups\[1\], update='adamw': param group has no 'betas'"):
        opt.step()
    assert torch.equal(w, before)  # checked before anything changed
