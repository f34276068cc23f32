"""Keeping a fetched make gpu-check run under bench/results/: its result files and its record,
the page regenerated with them, and a later run able to resume from the kept record."""

from __future__ import annotations

import copy
import json

from foveal.bench import results_page
from foveal.bench.gpu_keep import keep
from foveal.bench.gpu_record import load_previous
from foveal.bench.report import write_json

PAGE = f"# Benchmarks\n\n{results_page.BEGIN}\nstale\n{results_page.END}\n"
DATE = "2026-03-04T05:06:07+00:00"


def _fetched_run(tmp_path, document, meaningful=True):
    out = tmp_path / "fetched"
    out.mkdir()
    headline = copy.deepcopy(document)
    headline["meaningful"] = meaningful
    headline["label"] = "headline"
    headline["environment"].update(device="NVIDIA H200", date=DATE, git_commit="abc123")
    write_json(headline, out / "headline.json")
    record = {"schema": "foveal-gpu-check/1", "meaningful": meaningful,
              "environment": headline["environment"], "budget_s": 480, "suite": "full",
              "autotune_max_configs": 2, "files": {"headline": "headline.json"},
              "phases": {"selfcheck": {"status": "ok"}, "headline": {"status": "timed out"}},
              "selfcheck": [{"check": "conv1d", "dtype": "float16", "passed": True}]}
    (out / "gpu_check.json").write_text(json.dumps(record))
    return out, headline


def test_a_gpu_run_is_kept_and_can_be_resumed_from(tmp_path, small_document):
    out, headline = _fetched_run(tmp_path, small_document)
    results, readme = tmp_path / "results", tmp_path / "README.md"
    readme.write_text(PAGE)
    assert keep(out, results, readme) == 0
    kept = results / "2026-03-04T0506_NVIDIA-H200_headline.json"
    assert json.loads(kept.read_text()) == headline
    record_path = results / "gpu-check" / "2026-03-04T0506_NVIDIA-H200.json"
    record = json.loads(record_path.read_text())
    assert record["files"] == {"headline": f"../{kept.name}"}
    previous = load_previous(record_path)
    assert previous.done("headline") == {
        f"{r['workload']} {r['dtype']} {r['direction']}" for r in headline["results"]}
    section = readme.read_text().split(results_page.BEGIN)[1]
    assert "### Headline: the newest measurement of each row" in section
    assert f"### NVIDIA H200: headline, {DATE}" in section
    assert ("- 2026-03-04T05:06:07+00:00, NVIDIA H200, commit abc123: budget 480 s, suite "
            "full, autotuning capped at 2 configs per launch: selfcheck ok (1 passed); "
            "headline timed out. File `bench/results/gpu-check/"
            "2026-03-04T0506_NVIDIA-H200.json`") in section


def test_a_cpu_run_is_not_kept(tmp_path, small_document, capsys):
    out, _ = _fetched_run(tmp_path, small_document, meaningful=False)
    assert keep(out, tmp_path / "results") == 1
    assert "not measured on a GPU" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()
