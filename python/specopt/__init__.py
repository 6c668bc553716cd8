"""specopt: spectral optimizers for PyTorch, backed by the specopt C++ core.

    specopt.spectral_power(O, p, method="auto", **options)   Psi_p(O) = U S^p V^T
    specopt.SpectralAdamW / specopt.SpectralSGD               torch.optim.Optimizer subclasses
    specopt.make_optimizer(model, "AdamS", lr_matrix=..., lr_vector=...)
    specopt.set_cpu_threads(n)                                 consistent LibTorch/OpenBLAS pools

Method names, variant names and every default come from the C++ tables
(specopt.methods(), specopt.named_variants(), specopt.spectral_option_defaults(),
specopt.optimizer_spec_defaults()). See docs/python.md.
"""
from ._C import (  # noqa: F401
    Variant,
    methods,
    named_variants,
    optimizer_spec_defaults,
    parse_variant,
    set_cpu_threads,
    spectral_option_defaults,
    spectral_power,
)
from .optim import SpectralAdamW, SpectralSGD, make_optimizer  # noqa: F401

__all__ = [
    "spectral_power", "methods", "spectral_option_defaults",
    "Variant", "parse_variant", "named_variants", "optimizer_spec_defaults",
    "SpectralAdamW", "SpectralSGD", "make_optimizer", "set_cpu_threads",
]
