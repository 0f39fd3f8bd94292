"""Keras 3's serialized-object form, shared by the modules that read and write ``config.json``.

An object is ``{"module": ..., "class_name": ..., "config": {...}, "registered_name": None}``
(``keras.saving.serialize_keras_object``); a bare string names a built-in (``'relu'``,
``'glorot_uniform'``, ``'mse'``).
"""


def keras_object(module, class_name, config):
    """The Keras 3 serialized form of a built-in object."""
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None}


def unpack(identifier, what):
    """``(class_name, config)`` of a serialized Keras object; ValueError naming `what` otherwise."""
    if not isinstance(identifier, dict) or "class_name" not in identifier:
        raise ValueError(f"Expected a serialized Keras {what} (a dict with 'class_name' and 'config'). "
                         f"Received: {identifier!r}")
    config = identifier.get("config")
    if config is None:
        config = {}
    return identifier["class_name"], config


def keyword_args(cls, config, allowed, what, ignored=()):
    """The entries of `config` that `cls(**...)` takes, from the names in `allowed`.

    Keys in `ignored`, and any other key whose value is None, False or Keras's default are
    dropped; any other key is a setting fastmlp does not implement and raises ValueError.
    """
    kwargs = {}
    for key, value in config.items():
        if key in allowed:
            kwargs[key] = value
        elif key not in ignored and value not in (None, False):
            raise ValueError(f"{what} {cls.__name__}: the setting {key}={value!r} is not supported by fastmlp.")
    return kwargs
