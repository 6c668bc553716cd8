"""specopt.Muon: torch.optim.Muon's signature, defaults and arithmetic, stepping through the
C++ core (include/specopt/muon.h: muon_step, the code the C++ specopt::Muon runs), plus ``p``:
``specopt.Muon(params, p=0.5)`` is Muon with Psi_1/2 in place of the polar factor.

    B <- mu B + (1 - mu) g;   d = g.lerp(B, mu) (nesterov) or B
    O = NS(d)  (p = 0, method "auto": torch.optim.Muon's Newton-Schulz, operation for operation)
      = Psi_p(d) (otherwise, specopt.spectral_power with `method` and `spectral`)
    W <- W (1 - lr wd) - lr a(m, n) O     a: adjust_lr_fn's ratio

See docs/muon.md ("Coming from Muon").
"""
from . import _C
from .optim import _SpectralOptimizer, _check_on_nonfinite, reject_unsupported

__all__ = ["Muon"]

_MUON = _C.muon_defaults()


class Muon(_SpectralOptimizer):
    r"""Muon (torch.optim.Muon, PyTorch >= 2.9) for 2-D parameters, any p.

    Args (as torch.optim.Muon):
        params: 2-D parameters or param-group dicts (embeddings, the head and vectors belong
            to AdamW: use ``specopt.make_optimizer(model, "Muon")`` or groups with ``use_muon``).
        lr (default 1e-3), weight_decay (0.1, decoupled, with the unadjusted lr),
        momentum (0.95, EMA), nesterov (True), ns_coefficients ((3.4445, -4.7750, 2.0315)),
        eps (1e-7), ns_steps (5), adjust_lr_fn (None = "original"; "match_rms_adamw",
        "spectral_unclamped").
    specopt's own (keyword only):
        p: exponent of Psi_p in [-0.5, 1]; 0 (default) is Muon.
        method: "auto" (p = 0: torch's Newton-Schulz; else specopt's fastest accurate
            method) or any of ``specopt.methods()``.
        spectral: dict of further spectral options (``specopt.spectral_option_defaults()``).
        on_nonfinite: "raise" (default) or "skip_step" on a NaN/Inf gradient.
    """

    def __init__(self, params, lr=_MUON["lr"], weight_decay=_MUON["weight_decay"],
                 momentum=_MUON["momentum"], nesterov=_MUON["nesterov"],
                 ns_coefficients=_MUON["ns_coefficients"], eps=_MUON["eps"],
                 ns_steps=_MUON["ns_steps"], adjust_lr_fn=_MUON["adjust_lr_fn"], *,
                 p=_MUON["p"], method=_MUON["method"], spectral=None, on_nonfinite="raise",
                 **torch_options):
        reject_unsupported(torch_options, "Muon")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, p=p, method=method,
                        spectral=dict(spectral or {}), update="muon")
        _C.check_muon_group(defaults)
        self.on_nonfinite = _check_on_nonfinite(on_nonfinite)
        super().__init__(params, defaults)
