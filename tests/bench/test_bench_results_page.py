"""The results page is generated from result JSON only: from a sample file this test writes
(a CPU run relabelled as a GPU run, inside tmp_path), never from numbers in the repository."""

from __future__ import annotations

import copy
import json

import pytest

from foveal.bench import results_page
from foveal.bench.report import write_json

PAGE = f"# Benchmarks\n\nintro\n\n{results_page.BEGIN}\nstale\n{results_page.END}\n\nfooter\n"


def _as_gpu_run(document, device="Test GPU 80GB", date="2026-01-02T03:04:05+00:00",
                label="bench"):
    sample = copy.deepcopy(document)
    sample["meaningful"] = True
    sample["label"] = label
    sample["environment"].update(device=device, date=date, git_commit="abc123")
    sample["ceilings"]["meaningful"] = True
    for row in sample["results"]:
        for variant in row["variants"].values():
            variant["timing_meaningful"], variant["timing_note"] = True, None
    return sample


def _generate(tmp_path, *documents):
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    for i, doc in enumerate(documents):
        write_json(doc, results / f"run{i}.json")
    readme = tmp_path / "README.md"
    readme.write_text(PAGE)
    assert results_page.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    return readme, results


def _section(readme) -> str:
    text = readme.read_text()
    return text.split(results_page.BEGIN)[1].split(results_page.END)[0]


def test_page_shows_the_measured_table(tmp_path, small_document):
    sample = _as_gpu_run(small_document)
    readme, results = _generate(tmp_path, sample)
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nintro") and text.endswith("\n\nfooter\n")
    section = _section(readme)
    assert "stale" not in section and "No measured results" not in section
    assert "### Test GPU 80GB: bench, 2026-01-02T03:04:05+00:00" in section
    assert "code: abc123" in section and "measured ceilings" in section
    for row in sample["results"]:
        time_ms = row["variants"]["foveal"]["time_ms"]
        direction = {"forward": "fwd", "backward": "bwd"}[row["direction"]]
        line = next(line for line in section.splitlines()
                    if line.startswith(f"| {row['workload']} | {row['dtype']} | {direction} |"))
        assert f"| {time_ms:.4g} |" in line  # the number the JSON holds, unmarked
        assert f"| {row['speedup']['pytorch']:.3g}x |" in line
    assert "not meaningful" not in section
    # --check agrees the page is current, and notices a hand edit.
    check = ["--results-dir", str(results), "--readme", str(readme), "--check"]
    assert results_page.main(check) == 0
    readme.write_text(text.replace("Test GPU 80GB", "Typed By Hand"))
    assert results_page.main(check) == 1


def test_every_kept_run_newest_first(tmp_path, small_document):
    old = _as_gpu_run(small_document, date="2026-01-01T00:00:00+00:00")
    new = _as_gpu_run(small_document, date="2026-02-01T00:00:00+00:00")
    compiled = _as_gpu_run(small_document, date="2026-01-15T00:00:00+00:00", label="compile")
    other = _as_gpu_run(small_document, device="Other GPU", date="2025-12-01T00:00:00+00:00")
    readme, _ = _generate(tmp_path, new, old, compiled, other)
    headings = [line for line in _section(readme).splitlines() if line.startswith("### ")]
    assert headings == ["### Headline: the newest measurement of each row",
                        "### Test GPU 80GB: bench, 2026-02-01T00:00:00+00:00",
                        "### Test GPU 80GB: compile, 2026-01-15T00:00:00+00:00",
                        "### Test GPU 80GB: bench, 2026-01-01T00:00:00+00:00",
                        "### Other GPU: bench, 2025-12-01T00:00:00+00:00"]


def test_headline_table_takes_each_row_from_the_newest_run_that_measured_it(tmp_path,
                                                                            small_document):
    old = _as_gpu_run(small_document, date="2026-01-01T00:00:00+00:00")
    new = _as_gpu_run(small_document, date="2026-02-01T00:00:00+00:00", device="New GPU")
    for row in new["results"]:
        row["variants"]["foveal"]["time_ms"] *= 2
    readme, _ = _generate(tmp_path, old, new)
    table = _section(readme).split("### Headline: the newest measurement of each row")[1]
    table = table.split("###")[0]
    [grouped] = [r for r in new["results"] if r["workload"] == "smoke.conv2d.grouped"]
    foveal = grouped["variants"]["foveal"]
    cudnn = grouped["variants"]["pytorch"]["time_ms"]
    line = next(line for line in table.splitlines() if line.startswith("| ResNeXt-50"))
    assert line == (f"| ResNeXt-50 grouped 3x3 (g=32) | smoke.conv2d.grouped | float32 | "
                    f"{foveal['time_ms']:.4g} | cuDNN | {cudnn:.4g} | "
                    f"{cudnn / foveal['time_ms']:.3g}x | "
                    f"{100 * foveal['fraction_of_roofline']:.0f}% | New GPU | 2026-02-01, "
                    f"`run1.json` |")
    assert "| ResNet-50 3x3 | resnet50.layer1.0.conv2 | float16 | - | cuDNN | - | - | - | - | "\
        "not measured yet |" in table


def test_a_row_over_several_directions_adds_their_times():
    from foveal.bench.headline import ROWS, measure_row

    row = next(r for r in ROWS if r.directions == ("forward", "backward"))

    def result(direction, ours, theirs, roofline):
        return {"workload": row.workload, "dtype": "float16", "direction": direction,
                "layout": "channels_last",
                "variants": {"foveal": {"time_ms": ours, "fraction_of_roofline": roofline},
                             "pytorch": {"time_ms": theirs}}}

    figures = measure_row(row, {"results": [result("forward", 2.0, 4.0, 0.5),
                                            result("backward", 3.0, 6.0, 0.2)]})
    assert figures["foveal_ms"] == 5.0 and figures["baseline_ms"] == 10.0
    assert figures["speedup"] == 2.0 and figures["baseline"] == "torchvision"
    assert figures["fraction_of_roofline"] == pytest.approx((2 * 0.5 + 3 * 0.2) / 5)
    assert measure_row(row, {"results": [result("forward", 2.0, 4.0, 0.5)]}) is None


def test_cpu_runs_are_left_out(tmp_path, small_document):
    readme, _ = _generate(tmp_path, small_document)
    section = _section(readme)
    assert results_page.NO_RESULTS in section
    assert "Not shown (timings not meaningful: no GPU): `run0.json`" in section


def test_bad_inputs_are_named(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "other.json").write_text(json.dumps({"hello": 1}))
    readme = tmp_path / "README.md"
    readme.write_text(PAGE)
    assert results_page.main(["--results-dir", str(results), "--readme", str(readme)]) == 2
    assert "other.json is not a foveal benchmark result" in capsys.readouterr().err
    (results / "other.json").unlink()
    readme.write_text("# no markers\n")
    assert results_page.main(["--results-dir", str(results), "--readme", str(readme)]) == 2
    assert "has no generated section" in capsys.readouterr().err


def test_committed_page_matches_committed_results():
    """bench/README.md is exactly what bench/results/*.json generate: nothing typed by hand."""
    assert results_page.main(["--check"]) == 0



def test_page_shows_kept_compile_results(tmp_path):
    from foveal.bench import compile_page

    compile_dir = tmp_path / "compile"
    compile_dir.mkdir()
    summary = {"kernel": "igemm_kernel", "arch": "sm_90", "dtype": "float16", "compiled": 7,
               "failed": 0, "spill_free": 7, "max_registers": 168, "worst_stack_bytes": 0,
               "max_shared_bytes": 98304, "tensor_cores": "wgmma", "widest_load_bytes": "16",
               "min_blocks_per_sm": 1, "compile_seconds": 12.5}
    document = {"arch": {"name": "sm_90", "gpu": "H100/H200"},
                "environment": {"triton": "3.8.0", "torch": "2.14.1",
                                "date": "2026-12-01T00:00:00+00:00", "git_commit": "abc"},
                "settings": {"workloads": ["a", "b"], "dtypes": ["float16"],
                             "modes": ["inference"]},
                "summary": {"jobs": 7, "compile_errors": 0, "spilling": 0, "violations": 0},
                "kernels": [summary]}
    (compile_dir / "triton-3.8.0_sm_90.json").write_text(json.dumps(document))
    readme = tmp_path / "README.md"
    readme.write_text(PAGE + f"\n{compile_page.BEGIN}\nold\n{compile_page.END}\n")
    assert results_page.main(["--results-dir", str(tmp_path / "none"), "--compile-results-dir",
                               str(compile_dir), "--readme", str(readme)]) == 0
    section = readme.read_text().split(compile_page.BEGIN)[1].split(compile_page.END)[0]
    assert "### Triton 3.8.0, sm_90 (H100/H200)" in section and "old" not in section
    assert "| igemm_kernel | sm_90 | float16 | 7 | 7 | 168 | 0 | 96 | wgmma | 16 | 1 | 12 |" \
        in section
