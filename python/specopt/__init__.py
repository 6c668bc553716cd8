"""specopt: spectral optimizers for PyTorch, backed by the specopt C++ core."""
from ._C import spectral_power  # noqa: F401
