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
    variant this CPU runs. Every variant computes the same bits; pinning one is for benchmarking
    and for checking exactly that.
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
    """What the native engine can use here: ``{'isa', 'supported', 'built'}``."""
    from . import _core

    return {"isa": get_isa(), "supported": list(_core.supported_isas()), "built": list(_core.built_isas())}
