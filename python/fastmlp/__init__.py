"""fastmlp: Keras-compatible dense neural networks on native C++ kernels.

    from fastmlp.models import Sequential
    from fastmlp.layers import Dense
    import fastmlp.optimizers
"""

from . import _core, activations, backend, callbacks, cuda, initializers, layers, losses, metrics, models, optimizers
from . import plot, reference, regularizers, saving, utils
from .backend import cpu_info, get_num_threads, set_num_threads
from .cuda import cuda_available, cuda_info, cuda_unavailable_reason
from .layers import Dense, Input
from .models import Sequential

__version__ = "0.1.0"

__all__ = [
    "_core",
    "activations",
    "backend",
    "callbacks",
    "cuda",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "plot",
    "reference",
    "regularizers",
    "saving",
    "utils",
    "Dense",
    "Input",
    "Sequential",
    "cpu_info",
    "get_num_threads",
    "set_num_threads",
    "cuda_available",
    "cuda_info",
    "cuda_unavailable_reason",
]
