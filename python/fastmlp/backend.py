"""Global numeric settings, as in ``keras.backend``: the float type models are compiled in."""

_FLOATX = "float32"
_VALID = ("float32", "float64")


def floatx():
    """Return the default float type of compiled models: ``'float32'`` or ``'float64'``."""
    return _FLOATX


def set_floatx(value):
    """Set the float type used by models compiled from now on (``'float32'`` or ``'float64'``)."""
    global _FLOATX
    if value not in _VALID:
        raise ValueError(f"Unknown `floatx` value. Expected one of {_VALID}. Received: floatx={value!r}")
    _FLOATX = value


_ISA = {"pinned": None}


def _env_isa():
    import os

    return os.environ.get("FASTMLP_ISA") or None


def set_isa(name):
    """Pin the instruction-set variant of the native engine for models compiled from now on.

    ``None`` restores the default: the ``FASTMLP_ISA`` environment variable if set, else the best
    variant this CPU runs. The variants with fused multiply-add (``avx2``, ``avx512``) compute the
    same bits; ``base`` (no FMA) agrees to float32 rounding. Pinning one variant makes results
    bitwise equal across machines that run it.
    """
    from . import _core

    if name is not None and name not in _core.supported_isas():
        raise ValueError(
            f"Instruction set {name!r} is not available here. Expected one of {_core.supported_isas()} or None."
        )
    _ISA["pinned"] = name


def get_isa():
    """The instruction-set variant the next compiled model will use."""
    from . import _core

    name = _ISA["pinned"] or _env_isa()
    if name is None:
        return _core.supported_isas()[0]
    if name not in _core.supported_isas():
        raise ValueError(
            f"FASTMLP_ISA={name!r} is not available here. Expected one of {_core.supported_isas()}."
        )
    return name


def cpu_info():
    """What the native engine can use here: ``{'isa', 'supported', 'built', 'threads'}``."""
    from . import _core

    return {"isa": get_isa(), "supported": list(_core.supported_isas()), "built": list(_core.built_isas()),
            "threads": _core.get_num_threads()}


def set_num_threads(n):
    """Set the threads the native kernels use (the calling one included), as ``torch.set_num_threads``.

    The default is the ``FASTMLP_NUM_THREADS`` environment variable if set, else the CPUs this
    process may run on. Results are bitwise the same whatever the count: threads split output
    tiles, never a sum.
    """
    from . import _core

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        raise ValueError(f"Expected `n` to be a positive integer of at most 1024. Received: n={n!r}")
    _core.set_num_threads(n)


def get_num_threads():
    """The threads the native kernels use."""
    from . import _core

    return _core.get_num_threads()
