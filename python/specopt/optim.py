"""Spectral optimizers as torch.optim.Optimizer subclasses, stepping through the C++ core.

The arithmetic is the C++ functional update rules (include/specopt/core/update_rules.h:
spectral_adamw_step, spectral_sgd_step) -- the same code the C++ SpectralAdamW /
SpectralSGD classes run. The state tensors live in ``self.state`` like any torch
optimizer's, so ``state_dict()`` / ``load_state_dict()``, ``torch.save`` and
``torch.optim.lr_scheduler`` work unchanged (lr and every other option are read
from the param group at each step).

Each param group has an ``update`` kind, ``"adamw"`` or ``"sgd"``; SpectralAdamW
and SpectralSGD differ only in their default kind and options. A SpectralSGD
with an ``"adamw"`` group is how :func:`make_optimizer` gives the mSGD family its
AdamW vector group, in one optimizer object.

Option defaults come from the C++ option structs (``_C.adamw_defaults()``,
``_C.sgd_defaults()``); options are validated by the C++ ``check()`` of those
structs when a group is added and at every step.
"""
import torch

from . import _C

__all__ = ["SpectralAdamW", "SpectralSGD", "make_optimizer"]

_ADAMW = _C.adamw_defaults()
_SGD = _C.sgd_defaults()
_CHECK = {"adamw": _C.check_adamw_group, "sgd": _C.check_sgd_group}


def _check_group(group):
    """ValueError/TypeError naming the bad option of a param group (C++ check())."""
    if group.get("update") not in _CHECK:
        raise ValueError(f"param group 'update' must be 'adamw' or 'sgd', got {group.get('update')!r}")
    _CHECK[group["update"]](group)


class _SpectralOptimizer(torch.optim.Optimizer):
    """Shared step: gradient check over all groups, then one C++ step per group."""

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        try:
            _check_group(self.param_groups[-1])
        except Exception:
            del self.param_groups[-1]
            raise

    def __getstate__(self):  # torch keeps only defaults/state/param_groups; keep .variant too
        state = super().__getstate__()
        if hasattr(self, "variant"):
            state["variant"] = self.variant
        return state

    def _param_name(self, g, i, group):
        names = group.get("param_names")
        if names is not None and i < len(names):
            return names[i]
        return f"param_groups[{g}]['params'][{i}]"

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step. Before anything changes, raises ValueError/TypeError if a
        group's options are bad (groups may be edited between steps) and RuntimeError if
        a gradient holds NaN or Inf (naming the parameter)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads, names = [], []
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.grad is not None:
                    grads.append(p.grad)
                    names.append(self._param_name(g, i, group))
        _C.check_finite_grads(grads, names)
        for group in self.param_groups:
            _check_group(group)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["update"] == "adamw":
                self._adamw_step(group, params)
            else:
                self._sgd_step(group, params)
        return loss

    def _adamw_step(self, group, params):
        # Lazy state as torch.optim.AdamW, stored only once the C++ step went through.
        states = []
        for p in params:
            state = self.state.get(p)
            if not state:
                state = {"step": 0,
                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            states.append(state)
        steps = [int(s["step"]) + 1 for s in states]
        _C.adamw_step(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                      [s["exp_avg_sq"] for s in states], steps, group)
        for p, state, t in zip(params, states, steps):
            state["step"] = t
            self.state[p] = state

    def _sgd_step(self, group, params):
        buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        buffers = _C.sgd_step(params, [p.grad for p in params], buffers, group)
        for p, b in zip(params, buffers):
            self.state[p]["momentum_buffer"] = b


class SpectralAdamW(_SpectralOptimizer):
    r"""The Adam family (Adam, AdamS, AdamQ, AdamZ, or any p): AdamW whose matrix updates
    (dim >= 2) are replaced by s * Psi_p(u), u = m_hat / (sqrt(v_hat) + eps).

    With p = 1 this is torch.optim.AdamW, except that weight decay applies to matrices
    only unless ``decay_vectors=True``. Every argument is also a per-group option.

    Args:
        params: parameters or param-group dicts.
        lr, betas, eps, weight_decay: as torch.optim.AdamW.
        p: exponent of Psi_p in [-0.5, 1] (1: Adam, 0.5: AdamS, 0.25: AdamQ, 0: AdamZ).
        method: how Psi_p is computed, one of ``specopt.methods()``.
        scale: "auto" | "none" | "shape" | "rms" (see docs/python.md).
        row_blocks: split dim 0 of each matrix into this many blocks (packed QKV: 3).
        decay_vectors: apply weight decay to vectors (dim < 2) too.
        spectral: dict of further spectral options (``specopt.spectral_option_defaults()``).
    """

    def __init__(self, params, lr=_ADAMW["lr"], betas=_ADAMW["betas"], eps=_ADAMW["eps"],
                 weight_decay=_ADAMW["weight_decay"], *, p=_ADAMW["p"], method=_ADAMW["method"],
                 scale=_ADAMW["scale"], row_blocks=_ADAMW["row_blocks"],
                 decay_vectors=_ADAMW["decay_vectors"], spectral=None):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, p=p,
                        method=method, scale=scale, row_blocks=row_blocks,
                        decay_vectors=decay_vectors, spectral=dict(spectral or {}), update="adamw")
        _C.check_adamw_group(defaults)
        super().__init__(params, defaults)


class SpectralSGD(_SpectralOptimizer):
    r"""The mSGD family (mSGD, mSGDS, mSGDQ, mSGDZ, or any p): momentum SGD
    (b_1 = g, b <- mu b + g; d = b, or g + mu b with Nesterov) whose matrix updates are
    s * Psi_p(d). Vectors take the plain momentum step, unless their group sets
    ``update="adamw"`` (then it also needs ``betas`` and ``eps``), as make_optimizer does.

    Args: as SpectralAdamW, with ``momentum`` and ``nesterov`` instead of betas/eps;
    ``lr`` is required (as in torch.optim.SGD).
    """

    def __init__(self, params, lr, momentum=_SGD["momentum"], nesterov=_SGD["nesterov"],
                 weight_decay=_SGD["weight_decay"], *, p=_SGD["p"], method=_SGD["method"],
                 scale=_SGD["scale"], row_blocks=_SGD["row_blocks"],
                 decay_vectors=_SGD["decay_vectors"], spectral=None):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        p=p, method=method, scale=scale, row_blocks=row_blocks,
                        decay_vectors=decay_vectors, spectral=dict(spectral or {}), update="sgd")
        _C.check_sgd_group(defaults)
        super().__init__(params, defaults)


def make_optimizer(model, variant=None, **spec):
    """The study's optimizer for ``model`` (a torch.nn.Module or an iterable of
    (name, parameter) pairs), as one torch.optim.Optimizer.

    The split is the C++ make_optimizer's (one implementation): matrices (dim >= 2) form
    the spectral group(s) at ``lr_matrix`` with the variant's p (matrices whose name contains
    one of ``split_rows_patterns``, and with ``split_rows_by_shape=True`` those whose row count
    is ``split_rows_blocks`` times their column count, get ``row_blocks = split_rows_blocks``);
    vectors form a
    group at ``lr_vector`` with p = 1 and ``weight_decay_vector``.
      * Adam family -> a SpectralAdamW with those groups;
      * mSGD family -> a SpectralSGD whose vector group has ``update="adamw"`` (the study's
        AdamW for vectors, same betas/eps).
    Every group has ``role`` ("matrix" / "vector") and ``param_names``; the returned
    optimizer has ``.variant`` (a ``specopt.Variant``).

    ``variant`` is any name of the C++ variant table (``specopt.named_variants()``,
    "adam:p=0.3", ...). The other options and their defaults are those of the C++
    OptimizerSpec: ``specopt.optimizer_spec_defaults()``.
    """
    if isinstance(model, torch.nn.Module):
        named = list(model.named_parameters())
    else:
        named = list(model)
    named = [(n, p) for n, p in named if p.requires_grad]
    if variant is not None:
        spec["variant"] = variant
    parsed, groups = _C.make_optimizer_groups(named, spec)
    if parsed.family == "Adam":
        opt = SpectralAdamW(groups)
    else:
        opt = SpectralSGD(groups, lr=spec.get("lr_matrix", _C.optimizer_spec_defaults()["lr_matrix"]))
    opt.variant = parsed
    return opt
