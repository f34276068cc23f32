"""bench/serve_load.py runs end to end on a tiny setting (CPU, PyTorch's ops)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"


def test_serve_load_sweep_reports_throughput_and_latency(tmp_path):
    out = tmp_path / "serve_load.json"
    result = subprocess.run([sys.executable, str(BENCH), "--size", "16", "--batch", "4",
                             "--concurrency", "1", "3", "--requests", "12",
                             "--offline-repeats", "2", "--backend", "torch", "--out", str(out)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["offline"]["batch"] == 4 and data["offline"]["throughput_images_per_s"] > 0
    for setting in ("batching", "no-batching"):
        rows = data["served"][setting]
        assert [r["concurrency"] for r in rows] == [1, 3]
        for row in rows:
            assert row["requests"] == 12 and row["throughput_images_per_s"] > 0
            assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert "of offline" in result.stdout and "no-batching" in result.stdout


def test_scaling_mode_compares_one_instance_with_instances_and_replicas(tmp_path):
    out = tmp_path / "scaling.json"
    result = subprocess.run([sys.executable, str(BENCH), "--size", "16", "--batch", "2",
                             "--concurrency", "4", "--requests", "8",
                             "--backend", "torch", "--instances", "2", "--replicas", "2",
                             "--devices", "cpu", "--out", str(out)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    scaling = json.loads(out.read_text())["scaling"]
    assert {k: (v["instances"], v["replicas"], v["devices"]) for k, v in scaling.items()} == {
        "1 instance": (1, 1, ["cpu"]), "2 instances": (2, 1, ["cpu"]),
        "2 replicas": (1, 2, ["cpu", "cpu"])}
    for setting in scaling.values():
        (row,) = setting["rows"]
        assert row["concurrency"] == 4 and row["requests"] == 8
        assert row["throughput_images_per_s"] > 0
    assert "x one" in result.stdout and "2 replicas" in result.stdout
