"""The optional CUDA backend: ``model.compile(..., backend='cuda')``.

It is a second extension, ``fastmlp._cuda``, built only on request::

    pip install . -Ccmake.define.FASTMLP_CUDA=ON      # needs nvcc, and cuBLASLt: pip install nvidia-cublas

``fastmlp.cuda_available()`` says whether it can run here, and ``fastmlp.cuda_unavailable_reason()``
why not (not built with CUDA, no driver, no device). The weights, gradients, optimizer state and
the training data stay on the GPU for the whole fit; the layers' ``kernel`` and ``bias`` arrays are
host copies, refreshed after every epoch (set weights with ``model.set_weights``). Runs the same
semantics as the CPU engine; not (yet) on 'cuda': weight regularizers, ``clipnorm`` and
``global_clipnorm`` (``clipvalue`` is), which raise ``NotImplementedError`` at ``compile``.
"""

import ctypes
import importlib
import os
import re
import weakref

_NOT_BUILT = "fastmlp was built without the CUDA backend"
_BUILD_HINT = ("Reinstall fastmlp with it: pip install . -Ccmake.define.FASTMLP_CUDA=ON (needs the CUDA compiler "
               "nvcc and cuBLASLt: pip install nvidia-cublas).")
_state = {}


def _preload(soname):
    """Load `soname` (libcublasLt.so.13, ...) from an nvidia-cublas wheel, so that fastmlp._cuda finds it
    wherever fastmlp was installed. True when loaded."""
    try:
        import nvidia
    except ImportError:
        return False
    for root in nvidia.__path__:
        for sub in ("cu13", "cu12", "cublas"):
            path = os.path.join(root, sub, "lib", soname)
            if os.path.exists(path):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    return True
                except OSError:
                    continue
    return False


def _load():
    """(fastmlp._cuda or None, its device status dict or None, reason it cannot run or None); once."""
    if "module" in _state:
        return _state["module"], _state["status"], _state["reason"]
    module = status = reason = None
    name = f"{__package__}._cuda"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        missing = re.search(r"(libcublas(?:Lt)?\.so\.\d+)", str(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name == name:
            reason = _NOT_BUILT
        elif missing and _preload(missing.group(1)):
            try:
                module = importlib.import_module(name)
            except ImportError as again:
                reason = f"fastmlp._cuda could not be loaded: {again}"
        elif missing:
            reason = (f"fastmlp._cuda needs {missing.group(1)}, found neither beside it nor in an nvidia-cublas wheel "
                      "of this Python environment (pip install nvidia-cublas)")
        else:
            reason = f"fastmlp._cuda could not be loaded: {exc}"
    if module is not None:
        status = module.device_status()
        if not status["available"]:
            reason = status["reason"]
    _state.update(module=module, status=status, reason=reason)
    return module, status, reason


def cuda_available():
    """Whether ``backend='cuda'`` can run here: built with CUDA, a driver, and a usable GPU."""
    return _load()[2] is None


def cuda_unavailable_reason():
    """Why ``backend='cuda'`` cannot run here (a sentence), or None when it can."""
    return _load()[2]


def cuda_info():
    """What the CUDA backend sees: ``{'available', 'reason', 'built', 'device', 'compute_capability',
    'device_count', 'runtime_version', 'driver_version', 'cublaslt_version'}``."""
    module, status, reason = _load()
    info = {"available": reason is None, "reason": reason, "built": module is not None}
    if status is not None:
        info.update(device=status["name"] or None, compute_capability=tuple(status["compute_capability"]),
                    device_count=status["device_count"], runtime_version=status["runtime_version"],
                    driver_version=status["driver_version"], cublaslt_version=status["cublaslt_version"])
    return info


def require():
    """Raise RuntimeError saying why ``backend='cuda'`` cannot run here, and what to do."""
    module, _status, reason = _load()
    if reason is None:
        return
    if reason == _NOT_BUILT:
        raise RuntimeError(f"backend='cuda' is not available: {reason}. {_BUILD_HINT}")
    if module is None:
        raise RuntimeError(f"backend='cuda' is not available: {reason}.")
    raise RuntimeError(f"backend='cuda' is not available: {reason}. It needs an NVIDIA GPU of compute capability 7.5 "
                       "or newer and its driver; use backend='cpu' on this machine.")


def _native_module():
    module = _load()[0]
    if module is None:
        require()
    return module


# Added to the CPU engine after the CUDA kernels were written; refused here until they exist there.
_UNSUPPORTED_ACTIVATIONS = ("gelu", "silu", "swish")


def _no_weights(sample_weight):
    if sample_weight is not None:
        raise NotImplementedError("sample_weight and class_weight are not supported on backend='cuda' yet; use "
                                  "backend='cpu'.")


class CudaEngine:
    """The training engine on the GPU, with the interface ``fastmlp.models.Sequential`` uses
    (see ``fastmlp.reference.ReferenceEngine``).

    The training data is uploaded once per fit: at the first ``train_steps`` of a fit (a new
    shuffling seed, or the epochs starting over) or when other arrays are passed, and stays on the
    device. ``emulate=True`` runs the same kernels and steps as loops on the host, without a GPU:
    slow, for tests.
    """

    def __init__(self, layers, loss, metrics, optimizer, dtype="float32", emulate=False, epilogues=True):
        module = _native_module()
        cls = module.Engine64 if str(dtype) == "float64" else module.Engine32
        specs = []
        for i, spec in enumerate(layers):
            spec = tuple(spec)
            if spec[2] in _UNSUPPORTED_ACTIVATIONS:
                raise NotImplementedError(f"Activation {spec[2]!r} (layer {i}) is not supported on backend='cuda' yet; "
                                          "use backend='cpu'.")
            if len(spec) > 8 and spec[8] > 0:
                raise NotImplementedError("Dropout is not supported on backend='cuda' yet; use backend='cpu'.")
            if len(spec) > 10 and (spec[10] is not None or spec[11] is not None):
                raise NotImplementedError("BatchNormalization is not supported on backend='cuda' yet; use "
                                          "backend='cpu'.")
            specs.append(spec[:8])  # (in, out, activation, use_bias, kernel l1, l2, bias l1, l2)
        self._native = cls(specs, loss, list(metrics), dict(optimizer), emulate=emulate, epilogues=epilogues)
        self._data = None  # weak references to the (x, y) whose copy is on the device
        self._last_epoch = None  # (seed, epoch) of the last begin_epoch
        self._pending = None  # begin_epoch's arguments, applied once the data is on the device

    # ---- state ----

    @property
    def target_cols(self):
        return self._native.target_cols

    def weight_views(self, arena="params"):
        """[kernel, bias] per layer: host copies of an arena (params are refreshed after every epoch);
        what is written into them reaches the device at the next call."""
        return self._native.weight_views(arena)

    def params_copy(self):
        return self._native.params_copy()

    def set_params(self, values):
        self._native.set_params(values)

    @property
    def iterations(self):
        return self._native.iterations

    @iterations.setter
    def iterations(self, value):
        self._native.iterations = value

    def set_loss_options(self, huber_delta=1.0, label_smoothing=0.0):
        self._native.set_loss_options(huber_delta, label_smoothing)

    def set_option(self, name, value):
        self._native.set_option(name, value)

    # ---- training ----

    def begin_fit(self):
        """A new fit: its data goes to the device again at the first train_steps."""
        self._data = None

    def begin_epoch(self, n, batch_size, shuffle, seed, epoch):
        if self._last_epoch is None or seed != self._last_epoch[0] or epoch <= self._last_epoch[1]:
            self._data = None  # a new fit: its data goes to the device again
        self._last_epoch = (seed, epoch)
        self._pending = (n, batch_size, shuffle, seed, epoch)

    def set_weighted_metrics(self, weighted):
        if any(weighted):
            raise NotImplementedError("weighted_metrics are not supported on backend='cuda' yet; use backend='cpu'.")

    def train_steps(self, x, y, max_steps=0, sample_weight=None):
        _no_weights(sample_weight)
        if self._data is None or self._data[0]() is not x or self._data[1]() is not y:
            if self._pending is None:
                raise RuntimeError("The training data changed in the middle of an epoch; call begin_epoch first.")
            self._native.set_train_data(x, y)
            self._data = (weakref.ref(x), weakref.ref(y))
        if self._pending is not None:
            self._native.begin_epoch(*self._pending)
            self._pending = None
        return self._native.train_steps(max_steps)

    def predict(self, x, batch_size=32):
        return self._native.predict(x, batch_size)

    def evaluate(self, x, y, batch_size=32, sample_weight=None):
        _no_weights(sample_weight)
        return self._native.evaluate(x, y, batch_size)

    def compute_gradients(self, x, y, sample_weight=None):
        _no_weights(sample_weight)
        return self._native.compute_gradients(x, y)

    # ---- CUDA specifics (tests and benchmarks) ----

    @property
    def path(self):
        """The current epoch's training path: 'fused' (one block per launch, tiny networks),
        'graphs' (the multi-kernel step replayed as a CUDA Graph) or 'kernels' (not captured)."""
        return self._native.path

    def set_path(self, path):
        """'auto' (the default), 'fused', 'graphs' or 'kernels'."""
        self._native.set_path(path)

    def set_gemm(self, gemm):
        """'cublaslt' (the default) or 'naive' (the reference kernel)."""
        self._native.set_gemm(gemm)

    @property
    def gemm_report(self):
        """For each cuBLASLt epilogue, how many of the products that asked for it so far took it
        (the others ran plain, with the bias and activation in a kernel of ours)."""
        return self._native.gemm_report
