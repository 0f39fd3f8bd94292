"""Pure-NumPy reference of fastmlp's maths: the test oracle and the benchmark baseline."""

from . import kernels
from .engine import ReferenceEngine

__all__ = ["kernels", "ReferenceEngine"]
