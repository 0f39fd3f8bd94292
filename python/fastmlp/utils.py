"""Utilities: seeding (``set_random_seed``) and the package's seed stream."""

import random as _py_random

import numpy as np

_state = {"rng": np.random.default_rng()}


def set_random_seed(seed):
    """Seed Python's ``random``, NumPy's global generator and fastmlp's own generator.

    fastmlp draws weight initializations and the shuffling seed of each ``fit`` from its own
    generator, so the same seed gives the same trained weights, bit for bit, on the ``cpu`` backend.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected `seed` to be a non-negative integer. Received: seed={seed!r}")
    seed = int(seed)
    _py_random.seed(seed)
    np.random.seed(seed % 2**32)
    _state["rng"] = np.random.default_rng(seed)


def rng():
    """fastmlp's generator (for initializers)."""
    return _state["rng"]


def next_seed():
    """Draw a 63-bit seed from fastmlp's generator (one per ``fit`` call for shuffling)."""
    return int(_state["rng"].integers(0, 2**63))
