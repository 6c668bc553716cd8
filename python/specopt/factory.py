"""make_optimizer: one torch.optim.Optimizer for a whole model, with torch.optim's conventions.

    make_optimizer(model, "AdamS", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    make_optimizer(model.parameters(), "mSGDZ", lr=0.02)
    make_optimizer(model, "Muon", lr=0.02, exclude_embeddings_and_head=True)
    make_optimizer([dict(params=hidden, use_muon=True, lr=0.02),          # KellerJordan's
                    dict(params=rest, use_muon=False, lr=3e-4)])          # MuonWithAuxAdam groups

See docs/python.md ("make_optimizer") and docs/muon.md ("Coming from Muon").
"""
import torch

from . import _C
from .muon import _MUON, Muon
from .optim import (_ADAMW, _SGD, UNSUPPORTED_TORCH_OPTIONS, SpectralAdamW, SpectralSGD,
                    _check_on_nonfinite, reject_unsupported)

__all__ = ["make_optimizer", "UNSUPPORTED_TORCH_OPTIONS", "EMBEDDING_AND_HEAD_NAMES"]

# The name rule of exclude_embeddings_and_head when no torch.nn.Module is given: a matrix
# whose dotted name has one of these components (before ".weight") is an embedding or a head.
EMBEDDING_AND_HEAD_NAMES = ("embed", "embedding", "embeddings", "embed_tokens", "tok_embeddings",
                            "wte", "wpe", "lm_head", "head", "output", "classifier")

# KellerJordan's MuonWithAuxAdam: the keys and defaults of its two group kinds.
_KJ_DEFAULTS = {"muon": dict(lr=0.02, momentum=0.95, weight_decay=0.0),
                "adamw": dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)}

# The keys each explicit group kind accepts (besides params / param_names / use_muon / update).
_GROUP_KEYS = {
    "muon": ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
             "adjust_lr_fn", "p", "method", "spectral"),
    "adamw": ("lr", "betas", "eps", "weight_decay", "p", "method", "scale", "row_blocks",
              "decay_vectors", "spectral"),
    "sgd": ("lr", "momentum", "nesterov", "weight_decay", "p", "method", "scale", "row_blocks",
            "decay_vectors", "spectral"),
}
_DEFAULTS = {"muon": dict(_MUON, spectral={}), "adamw": _ADAMW, "sgd": dict(_SGD, lr=None)}


def _named_from(params):
    """(named parameters, module or None, groups or None) from make_optimizer's first argument."""
    expected = ("a torch.nn.Module, an iterable of tensors, an iterable of (name, tensor) pairs, "
                "or an iterable of param-group dicts")
    if isinstance(params, torch.nn.Module):
        return list(params.named_parameters()), params, None
    if isinstance(params, (torch.Tensor, dict, str)):
        raise TypeError(f"make_optimizer: params must be {expected}, got a single "
                        f"{type(params).__name__}" + (" (wrap it in a list)" if not isinstance(params, str) else ""))
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"make_optimizer: params must be {expected}, got {type(params).__name__}") from None
    if not items:
        raise ValueError("make_optimizer: got an empty parameter list")
    if all(isinstance(x, dict) for x in items):
        return None, None, items
    if all(isinstance(x, torch.Tensor) for x in items):
        return [(f"param{i}", x) for i, x in enumerate(items)], None, None
    if all(isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[0], str)
           and isinstance(x[1], torch.Tensor) for x in items):
        return [tuple(x) for x in items], None, None
    kinds = sorted({type(x).__name__ for x in items})
    raise TypeError(f"make_optimizer: params must be {expected} (one kind, not mixed); got items of "
                    f"type {', '.join(kinds)}")


def embeddings_and_head(named, module=None):
    """Names of the matrices exclude_embeddings_and_head takes out of the spectral group.

    With a module: the weights of its torch.nn.Embedding / EmbeddingBag submodules and the
    weight of its last torch.nn.Linear (in module registration order: the output head).
    Without one: the matrices whose dotted name has a component in EMBEDDING_AND_HEAD_NAMES.
    """
    names = {n for n, _ in named}
    if module is not None:
        by_id = {id(p): n for n, p in named}
        out, last_linear = [], None
        for m in module.modules():
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                out += [by_id[id(p)] for p in m.parameters(recurse=False) if id(p) in by_id and p.ndim >= 2]
            elif isinstance(m, torch.nn.Linear):
                last_linear = m
        if last_linear is not None and id(last_linear.weight) in by_id:
            out.append(by_id[id(last_linear.weight)])
        return sorted(set(out) & names, key=[n for n, _ in named].index)
    return [n for n, p in named if p.ndim >= 2 and any(c in EMBEDDING_AND_HEAD_NAMES for c in n.split(".")[:-1])]


def _torch_names(spec, where):
    """Map torch's lr / betas / weight_decay onto the OptimizerSpec keys (in place)."""
    def take(torch_key, spec_keys, convert):
        if torch_key not in spec:
            return
        value = spec.pop(torch_key)
        clash = [k for k in spec_keys if k in spec and torch_key != "lr"]
        if clash:
            raise ValueError(f"{where}: give {torch_key!r} or {clash[0]!r}, not both")
        for k, v in zip(spec_keys, convert(value)):
            spec.setdefault(k, v)  # lr: explicit lr_matrix / lr_vector win

    def betas(value):
        try:
            b1, b2 = value
        except (TypeError, ValueError):
            raise TypeError(f"{where}: 'betas' must be a pair of floats, got {value!r}") from None
        return b1, b2

    take("lr", ("lr_matrix", "lr_vector"), lambda v: (v, v))
    take("betas", ("beta1", "beta2"), betas)
    take("weight_decay", ("weight_decay_matrix",), lambda v: (v,))


def _study_groups(named, variant, spec):
    """(Variant, groups) of the C++ make_optimizer split, Python defaults applied."""
    spec = dict(spec)
    if variant is not None:
        spec["variant"] = variant
    # One set of defaults for SpectralAdamW / SpectralSGD and make_optimizer: the classes'
    # (torch.optim.AdamW's and SGD's), docs/python.md ("Defaults").
    b1, b2 = _ADAMW["betas"]
    for key, value in dict(lr_matrix=_ADAMW["lr"], lr_vector=_ADAMW["lr"], beta1=b1, beta2=b2,
                           eps=_ADAMW["eps"], weight_decay_matrix=_ADAMW["weight_decay"],
                           momentum=_SGD["momentum"], nesterov=_SGD["nesterov"]).items():
        spec.setdefault(key, value)
    return _C.make_optimizer_groups(named, spec)


def _muon_groups(named, spec, excluded):
    """The "Muon" variant: 2-D matrices (not excluded) in a Muon group, the rest AdamW."""
    spec = dict(spec)
    muon_keys = ("momentum", "nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn", "p", "method",
                 "spectral")
    muon = dict(_MUON, spectral={}, update="muon", role="matrix")
    for key in muon_keys:
        if key in spec:
            muon[key] = spec.pop(key)
    muon["lr"] = spec.pop("lr_matrix", muon["lr"])
    muon["weight_decay"] = spec.pop("weight_decay_matrix", muon["weight_decay"])
    aux = dict(_ADAMW, update="adamw", role="vector", decay_vectors=True)
    aux["lr"] = spec.pop("lr_vector", aux["lr"])
    b1, b2 = aux["betas"]
    aux["betas"] = (spec.pop("beta1", b1), spec.pop("beta2", b2))
    aux["eps"] = spec.pop("eps", aux["eps"])
    aux["weight_decay"] = spec.pop("weight_decay_vector", 0.0)
    if spec:
        raise ValueError(f"make_optimizer(variant='Muon'): unknown option {sorted(spec)[0]!r} (Muon takes "
                         f"lr/lr_matrix, lr_vector, betas, eps, weight_decay, weight_decay_vector and "
                         f"{', '.join(muon_keys)})")
    is_muon = [p.ndim == 2 and n not in excluded for n, p in named]
    groups = []
    for group, want in ((muon, True), (aux, False)):
        members = [(n, p) for (n, p), m in zip(named, is_muon) if m == want]
        if members:
            groups.append(dict(group, params=[p for _, p in members], param_names=[n for n, _ in members]))
    return groups


def _explicit_group(g, i):
    """A group dict with use_muon (KellerJordan) or update (specopt): completed and checked."""
    g = dict(g)
    if "use_muon" in g and "update" in g:
        raise ValueError(f"make_optimizer: param group {i} has both 'use_muon' and 'update'; give one")
    if "use_muon" in g:
        use = g.pop("use_muon")
        if not isinstance(use, bool):
            raise TypeError(f"make_optimizer: param group {i}: 'use_muon' must be True or False, got {use!r}")
        kind = "muon" if use else "adamw"
        defaults = dict(_DEFAULTS[kind], **_KJ_DEFAULTS[kind])
        if kind == "adamw":
            defaults["decay_vectors"] = True  # its weight decay applies to every tensor, as KJ's
    else:
        kind = g.pop("update")
        if kind not in _GROUP_KEYS:
            raise ValueError(f"make_optimizer: param group {i}: 'update' must be one of {sorted(_GROUP_KEYS)}, "
                             f"got {kind!r}")
        defaults = dict(_DEFAULTS[kind])
    unknown = sorted(set(g) - set(_GROUP_KEYS[kind]) - {"params", "param_names"})
    if unknown:
        raise ValueError(f"make_optimizer: param group {i} ({kind}) has unknown key {unknown[0]!r}; "
                         f"a {kind} group takes: params, {', '.join(_GROUP_KEYS[kind])}")
    params = g.pop("params")
    if isinstance(params, torch.Tensor):
        params = [params]
    params = list(params)
    names = g.pop("param_names", None)
    if params and all(isinstance(x, (tuple, list)) and len(x) == 2 for x in params):
        names, params = [n for n, _ in params], [p for _, p in params]
    if names is None:
        names = [f"param_groups[{i}]['params'][{j}]" for j in range(len(params))]
    out = dict(defaults, **g, params=params, param_names=list(names), update=kind)
    out["spectral"] = dict(out.get("spectral") or {})  # the group's own, not the defaults' dict
    if out.get("lr") is None:
        raise ValueError(f"make_optimizer: param group {i} ({kind}) needs 'lr'")
    out["role"] = "matrix" if kind == "muon" or out["p"] != 1.0 else "vector"
    return out


def make_optimizer(params, variant=None, *, exclude_embeddings_and_head=False, on_nonfinite="raise",
                   **spec):
    """One torch.optim.Optimizer for ``params``: a torch.nn.Module, an iterable of tensors,
    of (name, tensor) pairs, or of param-group dicts.

    * ``variant`` is a study variant (``specopt.named_variants()``, "adam:p=0.3"; default
      "AdamW" = Adam) or "Muon". Study variants use the C++ make_optimizer's split (one
      implementation): matrices (dim >= 2) in the spectral group(s) at ``lr_matrix`` with
      the variant's p, vectors in an AdamW group at ``lr_vector`` (see optimizer_spec_defaults()
      for every key). "Muon": 2-D matrices in a specopt.Muon group (torch.optim.Muon's
      defaults; momentum, nesterov, ns_coefficients, ns_steps, adjust_lr_fn, p, method), the
      rest in an AdamW group.
    * torch.optim names: ``lr`` sets both groups' lr (``lr_matrix`` / ``lr_vector`` override
      it), ``betas`` = (beta1, beta2), ``weight_decay`` = the matrices' weight decay
      (``weight_decay_vector`` is the vectors'). Unsupported torch options (maximize,
      foreach, amsgrad, fused, ...) raise TypeError unless None/False.
    * Defaults are SpectralAdamW's / SpectralSGD's (torch.optim.AdamW's and SGD's: lr 1e-3,
      betas (0.9, 0.999), eps 1e-8, weight_decay 0.01 on matrices, momentum 0.9); the
      study's configs set their own values.
    * Param-group dicts: a group with ``use_muon`` (KellerJordan's MuonWithAuxAdam: its keys
      and defaults) or ``update`` ("muon" / "adamw" / "sgd", specopt's group keys) is taken
      as it is; a group with neither is split by ``variant`` with its own lr / betas /
      weight_decay / ... over the keyword options. Unknown group keys raise ValueError.
    * ``exclude_embeddings_and_head=True`` trains the embeddings and the output head with
      the vector AdamW instead (rule: specopt.factory.embeddings_and_head); explicit names:
      ``exclude_from_spectral=[...]``.
    * ``on_nonfinite``: "raise" (default) or "skip_step" on a NaN/Inf gradient.

    Every group has ``role`` ("matrix" / "vector") and ``param_names``; the optimizer has
    ``.variant`` (a specopt.Variant; None for "Muon" and explicit groups).
    """
    where = "make_optimizer"
    _check_on_nonfinite(on_nonfinite)
    reject_unsupported(spec, where, strict=False)
    _torch_names(spec, where)
    named, module, dict_groups = _named_from(params)
    is_muon = isinstance(variant, str) and variant.lower() == "muon"

    def split(named, spec, module):
        named = [(n, p) for n, p in named if p.requires_grad]
        if not named:
            raise ValueError(f"{where}: no parameter requires grad")
        spec = dict(spec)
        if exclude_embeddings_and_head:
            spec["exclude_from_spectral"] = list(spec.get("exclude_from_spectral", [])) + [
                n for n in embeddings_and_head(named, module) if n not in spec.get("exclude_from_spectral", [])]
        if is_muon:
            return None, _muon_groups(named, {k: v for k, v in spec.items() if k != "exclude_from_spectral"},
                                      set(spec.get("exclude_from_spectral", [])))
        parsed, groups = _study_groups(named, variant, spec)
        return parsed, list(groups)

    parsed = None
    if dict_groups is None:
        parsed, groups = split(named, spec, module)
    else:
        groups = []
        for i, g in enumerate(dict_groups):
            if "params" not in g:
                raise ValueError(f"{where}: param group {i} has no 'params'")
            if "use_muon" in g or "update" in g:
                groups.append(_explicit_group(g, i))
                continue
            own = dict(g)
            p = own.pop("params")
            p = [p] if isinstance(p, torch.Tensor) else list(p)
            names = own.pop("param_names", None)
            if p and all(isinstance(x, (tuple, list)) for x in p):
                named_g = [tuple(x) for x in p]
            else:
                named_g = list(zip(names or [f"param_groups[{i}]['params'][{j}]" for j in range(len(p))], p))
            reject_unsupported(own, f"{where}: param group {i}", strict=False)
            _torch_names(own, f"{where}: param group {i}")
            try:
                parsed, sub = split(named_g, dict(spec, **own), None)
            except ValueError as e:
                message = str(e)
                message = message[len(where) + 2:] if message.startswith(where + ": ") else message
                raise ValueError(f"{where}: param group {i}: {message}") from None
            groups += sub
    kinds = {g["update"] for g in groups}
    if "muon" in kinds:
        opt = Muon(groups, on_nonfinite=on_nonfinite)
    elif kinds == {"adamw"}:
        opt = SpectralAdamW(groups, on_nonfinite=on_nonfinite)
    else:
        opt = SpectralSGD(groups, lr=next(g["lr"] for g in groups if g["update"] == "sgd"),
                          on_nonfinite=on_nonfinite)
    explicit = dict_groups is not None and any("use_muon" in g or "update" in g for g in dict_groups)
    opt.variant = None if (is_muon or explicit) else parsed
    return opt
