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

__all__ = ["SpectralAdamW", "SpectralSGD"]

_ADAMW = _C.adamw_defaults()
_SGD = _C.sgd_defaults()
_CHECK = {"adamw": _C.check_adamw_group, "sgd": _C.check_sgd_group, "muon": _C.check_muon_group}
ON_NONFINITE = ("raise", "skip_step")
# The group keys that define the algorithm: load_state_dict refuses to change them
# unless allow_variant_change=True (the other keys -- lr, betas, ... -- are tuning).
_ALGORITHM_KEYS = ("update", "p")


def _check_group(group, index):
    """ValueError/TypeError naming the group (index, role) and its bad option (C++ check())."""
    where = f"param_groups[{index}]" + (f" (role {group['role']!r})" if "role" in group else "")
    if group.get("update") not in _CHECK:
        raise ValueError(f"{where}: 'update' must be one of {sorted(_CHECK)}, got {group.get('update')!r}")
    try:
        _CHECK[group["update"]](group)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}, update={group['update']!r}: {e}") from None


# torch.optim options specopt does not implement. Their no-op values (None / False, and
# dampening=0) are accepted, so code written for torch.optim runs; others raise TypeError.
UNSUPPORTED_TORCH_OPTIONS = ("maximize", "foreach", "amsgrad", "fused", "capturable",
                             "differentiable", "dampening", "decoupled_weight_decay")


def reject_unsupported(options, where, strict=True):
    """Pop the unsupported torch.optim options from ``options``: TypeError unless no-op.
    strict: any other key left is an unexpected keyword argument (TypeError) too."""
    for key in UNSUPPORTED_TORCH_OPTIONS:
        if key in options:
            value = options.pop(key)
            no_op = value is None or value is False or (key == "dampening" and value == 0)
            if not no_op:
                raise TypeError(f"{where}: torch.optim option {key}={value!r} is not supported by "
                                f"specopt (only its no-op value None/False is accepted)")
    if strict and options:
        raise TypeError(f"{where}: unexpected keyword argument {sorted(options)[0]!r}")


def _check_on_nonfinite(value):
    if value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {value!r}")
    return value


def _describe(groups):
    """'AdamS'-like description of the algorithm of some param groups, for error messages."""
    return ", ".join(f"update={g.get('update')!r} p={g.get('p')!r}" for g in groups)


class _SpectralOptimizer(torch.optim.Optimizer):
    """Shared step: gradient check over all groups, then one C++ step per group.

    ``on_nonfinite`` ("raise" | "skip_step") says what a step does when a gradient holds
    NaN or Inf: raise RuntimeError naming it, or skip the whole step (``skipped_steps``
    counts them); either way nothing changes.
    """

    on_nonfinite = "raise"  # instances set their own (class default for old pickles)
    skipped_steps = 0

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        try:
            group = self.param_groups[-1]
            _check_group(group, len(self.param_groups) - 1)
            if group["update"] == "muon":  # as torch.optim.Muon
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon only supports 2-D parameters, got one of shape "
                                         f"{tuple(p.shape)} (put embeddings, the head and vectors "
                                         f"in an AdamW group: docs/muon.md)")
        except Exception:
            del self.param_groups[-1]
            raise

    def __getstate__(self):  # torch keeps only defaults/state/param_groups; keep ours too
        state = super().__getstate__()
        for key in ("variant", "on_nonfinite", "skipped_steps"):
            if key in self.__dict__:
                state[key] = self.__dict__[key]
        return state

    def load_state_dict(self, state_dict, *, allow_variant_change=False):
        """torch.optim.Optimizer.load_state_dict, refusing a state_dict of another algorithm.

        Raises ValueError, before anything changes, when a saved group's algorithm (its
        ``update`` kind or ``p``) differs from this optimizer's, naming both (e.g. an AdamS
        state_dict loaded into make_optimizer(m, "mSGDZ")). ``allow_variant_change=True``
        loads it anyway: the groups then take the saved algorithm (``.variant`` is updated
        when the saved state_dict records one). A state_dict of torch.optim.Muon (groups
        without specopt's keys) loads into specopt.Muon: the missing keys keep this
        optimizer's values.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) == len(self.param_groups):
            saved_groups = [dict({k: v for k, v in mine.items() if k != "params" and k not in saved}, **saved)
                            for mine, saved in zip(self.param_groups, saved_groups)]
            state_dict = dict(state_dict, param_groups=saved_groups)
        # (a group-count mismatch is torch's own ValueError below)
        mine = getattr(self, "variant", None)
        saved_variant = state_dict.get("specopt_variant")
        differs = [(i, g, s) for i, (g, s) in enumerate(zip(self.param_groups, saved_groups))
                   if any(g.get(k) != s.get(k) for k in _ALGORITHM_KEYS)]
        if differs and not allow_variant_change:
            i, g, s = differs[0]
            this = f"{type(self).__name__}" + (f" {mine.name}" if mine is not None else "")
            that = f" ({saved_variant})" if saved_variant else ""
            raise ValueError(
                f"load_state_dict: the state_dict is of another algorithm{that}: its param group {i} "
                f"has update={s.get('update')!r} p={s.get('p')!r}, this optimizer ({this}) has "
                f"update={g.get('update')!r} p={g.get('p')!r}. Pass allow_variant_change=True to "
                f"switch algorithms deliberately.")
        super().load_state_dict(state_dict)
        if differs and saved_variant is not None:
            from . import parse_variant
            try:
                self.variant = parse_variant(saved_variant)
            except ValueError:
                self.__dict__.pop("variant", None)
        for g, group in enumerate(self.param_groups):
            _check_group(group, g)

    def state_dict(self):
        """torch's state_dict, plus ``specopt_variant`` (the variant name) when there is one."""
        sd = super().state_dict()
        if getattr(self, "variant", None) is not None:
            sd["specopt_variant"] = self.variant.name
        return sd

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
        for g, group in enumerate(self.param_groups):
            _check_group(group, g)
        if not _C.grads_finite(grads, names, self.on_nonfinite):
            self.skipped_steps += 1
            return loss
        steps = {"adamw": self._adamw_step, "sgd": self._sgd_step, "muon": self._muon_step}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            steps[group["update"]](group, params)
        return loss

    def _muon_step(self, group, params):
        buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        buffers = _C.muon_step(params, [p.grad for p in params], buffers, group)
        for p, b in zip(params, buffers):
            self.state[p]["momentum_buffer"] = b

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
        on_nonfinite: "raise" (default) or "skip_step" on a NaN/Inf gradient.
    """

    def __init__(self, params, lr=_ADAMW["lr"], betas=_ADAMW["betas"], eps=_ADAMW["eps"],
                 weight_decay=_ADAMW["weight_decay"], *, p=_ADAMW["p"], method=_ADAMW["method"],
                 scale=_ADAMW["scale"], row_blocks=_ADAMW["row_blocks"],
                 decay_vectors=_ADAMW["decay_vectors"], spectral=None, on_nonfinite="raise",
                 **torch_options):
        reject_unsupported(torch_options, "SpectralAdamW")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, p=p,
                        method=method, scale=scale, row_blocks=row_blocks,
                        decay_vectors=decay_vectors, spectral=dict(spectral or {}), update="adamw")
        _C.check_adamw_group(defaults)
        self.on_nonfinite = _check_on_nonfinite(on_nonfinite)
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
                 decay_vectors=_SGD["decay_vectors"], spectral=None, on_nonfinite="raise",
                 **torch_options):
        reject_unsupported(torch_options, "SpectralSGD")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        p=p, method=method, scale=scale, row_blocks=row_blocks,
                        decay_vectors=decay_vectors, spectral=dict(spectral or {}), update="sgd")
        _C.check_sgd_group(defaults)
        self.on_nonfinite = _check_on_nonfinite(on_nonfinite)
        super().__init__(params, defaults)
