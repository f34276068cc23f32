"""bench/gpu_check.sh: valid bash, output under $OUT, a summary, failure reported by status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_unknown_phase_fails_with_a_summary_and_a_log_under_out(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_PHASES": "nonsense",
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    known = "(known: tests selfcheck forward backward compile models)"
    assert f"unknown phase 'nonsense' {known}" in done.stdout
    assert "gpu_check summary" in done.stdout
    log = (tmp_path / "gpu_check.log").read_text()
    assert "unknown phase 'nonsense'" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.log"]
