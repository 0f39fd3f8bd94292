"""Instruction-set variants of the native engine: every variant this CPU runs gives the same bits."""

import re
import shutil
import subprocess

import numpy as np
import pytest

import fastmlp
from fastmlp import _core
from fastmlp.layers import Dense
from fastmlp.models import Sequential


@pytest.fixture(autouse=True)
def _restore_isa():
    yield
    fastmlp.backend.set_isa(None)


def _train(isa, widths, acts, loss, x, y, epochs=3):
    fastmlp.backend.set_isa(isa)
    fastmlp.utils.set_random_seed(7)
    model = Sequential([Dense(widths[1], activation=acts[0], input_dim=widths[0])])
    for units, act in zip(widths[2:], acts[1:]):
        model.add(Dense(units, activation=act))
    model.compile(loss=loss, optimizer=fastmlp.optimizers.SGD(learning_rate=0.05, momentum=0.9, decay=1e-3),
                  metrics=["accuracy"])
    assert model._engine.isa == isa
    history = model.fit(x, y, epochs=epochs, batch_size=37, verbose=0)
    return model.get_weights(), history.history, model.predict(x)


@pytest.mark.parametrize(
    "widths, acts, loss",
    [
        # narrow (feature-major) path: the seed's shape
        ((2, 4, 4, 2), ("relu", "relu", "softmax"), "binary_crossentropy"),
        # row-major path with packed products: layers wider than the narrow limit
        ((20, 40, 24, 5), ("tanh", "sigmoid", "softmax"), "categorical_crossentropy"),
    ],
)
def test_every_supported_isa_gives_identical_bits(widths, acts, loss):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, widths[0])).astype(np.float32)
    labels = (x[:, : widths[-1]].sum(axis=1) > 0).astype(int) if widths[-1] == 2 else x[:, : widths[-1]].argmax(1)
    y = np.eye(widths[-1], dtype=np.float32)[labels]
    results = {isa: _train(isa, widths, acts, loss, x, y) for isa in _core.supported_isas()}
    first = next(iter(results.values()))
    for isa, (weights, history, pred) in results.items():
        for a, b in zip(weights, first[0]):
            assert np.array_equal(a, b), isa
        assert history == first[1], isa
        assert np.array_equal(pred, first[2]), isa


def test_cpu_info_reports_the_choice():
    info = fastmlp.cpu_info()
    assert info["isa"] in info["supported"]
    assert set(info["supported"]) <= set(info["built"])
    assert info["supported"][-1] == "base"
    fastmlp.backend.set_isa("base")
    assert fastmlp.cpu_info()["isa"] == "base"


def test_unknown_isa_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="Expected one of"):
        fastmlp.backend.set_isa("avx9000")
    with pytest.raises(ValueError, match="not available"):
        _core.Engine32([(2, 2, "linear", True)], "mean_squared_error", [], {}, "avx9000")


def test_environment_variable_pins_the_isa(monkeypatch):
    monkeypatch.setenv("FASTMLP_ISA", "base")
    assert fastmlp.backend.get_isa() == "base"
    monkeypatch.setenv("FASTMLP_ISA", "bogus")
    with pytest.raises(ValueError, match="FASTMLP_ISA"):
        fastmlp.backend.get_isa()


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_each_built_variant_is_exercised_or_reported(isa):
    if isa not in _core.built_isas():
        pytest.skip(f"this build has no {isa} variant")
    if isa not in _core.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} variant: its bit-equality is unchecked here")
    assert isa in fastmlp.cpu_info()["supported"]


def _functions_with_vex_code(path):
    """Demangled names of the functions in `path` that contain VEX/EVEX (AVX) instructions."""
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    found, name = set(), None
    for line in out.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = header.group(1)
            continue
        parts = line.split("\t")
        if name and len(parts) >= 2 and (parts[1].startswith("v") or "%ymm" in line or "%zmm" in line):
            found.add(name)
    return found


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_avx_code_lives_only_in_the_avx_variants():
    # The variants are separate compilations of the same sources; the linker keeps one copy of each
    # shared inline function. This checks that no AVX instruction is reachable outside the variant
    # namespaces, where a CPU without AVX would fault.
    if "avx2" not in _core.built_isas():
        pytest.skip("no AVX variant in this build")
    functions = _functions_with_vex_code(_core.__file__)
    assert functions, "no symbols: is the extension stripped? (pyproject: install.strip = false)"
    stray = sorted(f for f in functions if "fastmlp::avx2::" not in f and "fastmlp::avx512::" not in f)
    assert not stray, stray[:10]
