"""specopt: spectral optimizers for PyTorch, backed by the specopt C++ core.

    specopt.spectral_power(O, p, method="auto", **options)   Psi_p(O) = U S^p V^T
    specopt.SpectralAdamW / specopt.SpectralSGD               torch.optim.Optimizer subclasses
    specopt.Muon(params, lr=0.02, p=0)                         torch.optim.Muon, any p (docs/muon.md)
    specopt.make_optimizer(model, "AdamS", lr=1e-3)            one optimizer for a whole model
    specopt.set_cpu_threads(n)                                 consistent LibTorch/OpenBLAS pools
    specopt.load_checkpoint(path)                              a C++ trainer checkpoint as Python objects

Method names, variant names and every default come from the C++ tables
(specopt.methods(), specopt.named_variants(), specopt.spectral_option_defaults(),
specopt.optimizer_spec_defaults()). See docs/python.md.

The C++ extension works only with the torch it was built against (same LibTorch ABI);
specopt.build_info says which, and importing under another torch raises ImportError.
"""
from . import _build_info as build_info

__version__ = build_info.VERSION


def _check_torch():
    import torch

    if torch.__version__ != build_info.TORCH_VERSION:
        raise ImportError(
            f"specopt was built against torch {build_info.TORCH_VERSION} (LibTorch "
            f"{build_info.LIBTORCH_VERSION}), but this Python imports torch {torch.__version__} "
            f"from {torch.__file__}; its C++ extension cannot load under another torch. Rebuild "
            f"it with this torch: pip install --no-build-isolation . (docs/python.md)")


_check_torch()
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
from .optim import SpectralAdamW, SpectralSGD  # noqa: F401
from .muon import Muon  # noqa: F401
from .factory import make_optimizer  # noqa: F401
from .checkpoint import load_checkpoint  # noqa: F401

__all__ = [
    "spectral_power", "methods", "spectral_option_defaults",
    "Variant", "parse_variant", "named_variants", "optimizer_spec_defaults",
    "SpectralAdamW", "SpectralSGD", "Muon", "make_optimizer", "__version__", "set_cpu_threads", "build_info",
    "load_checkpoint",
]
