"""bench/extract_videos.py runs end to end on a tiny setting (CPU, PyTorch's ops)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "extract_videos.py"


def test_extract_benchmark_reports_rates_and_the_time_split(tmp_path):
    out = tmp_path / "extract.json"
    result = subprocess.run([sys.executable, str(BENCH), "--videos", "2", "--seconds", "0.8",
                             "--video-size", "32", "--model-size", "24", "--frames", "8",
                             "--stride", "4", "--jobs", "2", "--modes", "server", "local",
                             "--backend", "torch", "--out", str(out)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["identical_outputs"] is True
    for mode in ("server", "local"):
        row = data["modes"][mode]
        assert row["videos"] == 2 and row["clips"] == 2 * 4  # (20 - 8) // 4 + 1 per video
        assert row["videos_per_s"] > 0 and row["wall_s"] > 0
        assert row["decode_s"] > 0 and row["compute_s"] > 0 and row["transfer_s"] >= 0
        assert 0 < row["compute_load"] <= 1.05 and 0 < row["decode_load"] <= 1.05
    assert "compute load" in result.stdout and "identical features in every mode: True" in \
        result.stdout
