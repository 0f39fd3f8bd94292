"""examples/digits.py end to end: it trains, writes its learning curves and reaches 97 % on held-out digits."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("sklearn", reason="examples/digits.py takes its data from scikit-learn")
pytest.importorskip("matplotlib", reason="examples/digits.py plots with matplotlib")

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "digits.py")


def test_digits_example_reaches_97_percent_and_writes_its_plot(tmp_path):
    proc = subprocess.run([sys.executable, EXAMPLE, "--out", str(tmp_path), "--seed", "0", "--verbose", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    match = re.search(r"^test accuracy: ([0-9.]+)", proc.stdout, re.MULTILINE)
    assert match, f"no test accuracy line in the output:\n{proc.stdout}"
    assert float(match.group(1)) >= 0.97
    png = tmp_path / "digits_learning_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
