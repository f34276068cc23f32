"""The `foveal` command line, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def foveal(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "foveal.clients.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_shapes_alexnet_first_layer():
    result = foveal("shapes", "--input", "227x227x3", "--filters", "96", "--kernel", "11",
                    "--stride", "4")
    assert result.returncode == 0, result.stderr
    assert "input 227x227x3 -> output 55x55x96" in result.stdout
    assert "parameters: 34,944 (weights 34,848 + bias 96)" in result.stdout
    # 55*55 positions * 96 filters * 363 multiply-accumulates each
    assert f"({55 * 55 * 96 * 363 / 1e6:.2f} M multiply-accumulates)" in result.stdout
    assert "tile the padded input exactly" in result.stdout


def test_shapes_explains_uneven_tiling():
    result = foveal("shapes", "--input", "224x224x3", "--filters", "96", "--kernel", "11",
                    "--stride", "4")
    assert result.returncode == 0, result.stderr
    assert "the last 1 input position(s)" in result.stdout
    assert "input size 223 or 227" in result.stdout


def test_shapes_rejects_kernel_that_does_not_fit():
    result = foveal("shapes", "--input", "5x5x3", "--filters", "8", "--kernel", "7")
    assert result.returncode != 0
    assert "kernel larger than" in result.stderr or "does not fit" in result.stderr


@pytest.mark.parametrize("bad", ["--stride", "--kernel"])
def test_shapes_rejects_malformed_sizes(bad):
    args = {"--input": "32x32x3", "--filters": "8", "--kernel": "3", bad: "3xfoo"}
    result = foveal("shapes", *[item for pair in args.items() for item in pair])
    assert result.returncode == 2
    assert "expected sizes like 227x227x3" in result.stderr


def test_selfcheck_passes_in_the_interpreter():
    result = foveal("selfcheck")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["op", "backend", "dtype"]
    rows = [line for line in lines[2:] if line.strip() and "passed" not in line]
    assert rows and all(row.split()[-1] == "pass" for row in rows)
    assert all("interpreter" in row for row in rows)
    assert "0 failed" in result.stdout
