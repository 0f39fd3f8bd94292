"""Instruction-set variants of the native engine.

The variants with fused multiply-add (avx2, avx512) compute the same chains and give the same bits;
the baseline (SSE2, no FMA) rounds each product separately, so it agrees to float32 rounding. Pinning
a variant (FASTMLP_ISA, backend.set_isa) is what makes results equal across machines.
"""

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
def test_fma_variants_give_identical_bits_and_the_baseline_agrees(widths, acts, loss):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, widths[0])).astype(np.float32)
    labels = (x[:, : widths[-1]].sum(axis=1) > 0).astype(int) if widths[-1] == 2 else x[:, : widths[-1]].argmax(1)
    y = np.eye(widths[-1], dtype=np.float32)[labels]
    results = {isa: _train(isa, widths, acts, loss, x, y) for isa in _core.supported_isas()}
    fma = [isa for isa in results if isa != "base"]
    for isa in fma[1:]:  # the FMA variants: the same bits
        weights, history, pred = results[isa]
        for a, b in zip(weights, results[fma[0]][0]):
            assert np.array_equal(a, b), isa
        assert history == results[fma[0]][1], isa
        assert np.array_equal(pred, results[fma[0]][2]), isa
    if fma:  # the baseline: the same to float32 rounding (3 epochs of training amplify it a little)
        base, other = results["base"], results[fma[0]]
        for a, b in zip(base[0], other[0]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(base[2], other[2], rtol=1e-4, atol=1e-5)
        for key in base[1]:
            np.testing.assert_allclose(base[1][key], other[1][key], rtol=1e-4, atol=1e-6)


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
