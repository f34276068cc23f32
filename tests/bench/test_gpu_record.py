"""The run record of make gpu-check: findings added by several processes under a lock, none
lost, and what a resumed run reads of an earlier record."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing

import pytest

from foveal.bench.gpu_record import Record, finished, load_previous, phase_findings
from foveal.bench.harness import INTERRUPTED
from foveal.bench.report import write_json


def _append_many(path: str, lock: str, who: int) -> None:
    record = Record(path, lock)
    for i in range(25):
        record.append("tests", {"nodeid": f"{who}-{i}", "outcome": "passed"})


def test_processes_adding_at_once_lose_nothing(tmp_path):
    record = Record(tmp_path / "gpu_check.json", tmp_path / "lock")
    record.create({"phases": {}})
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=context) as pool:
        list(pool.map(_append_many, [str(record.path)] * 3, [str(record.lock_path)] * 3,
                      range(3)))
    ids = [t["nodeid"] for t in record.read()["tests"]]
    assert len(ids) == len(set(ids)) == 75
    assert record.read()["schema"] == "foveal-gpu-check/1"
    assert not list(tmp_path.glob(".*partial"))  # every write was whole


def _result(workload, status="ok", message=""):
    return {"workload": workload, "dtype": "float16", "direction": "forward", "status": status,
            "variants": {"foveal": {"message": message}, "pytorch": {"message": ""}}}


def test_a_resumed_run_reads_what_the_earlier_one_finished(tmp_path):
    bench = {"schema": "foveal-bench/1", "results": [
        _result("a"), _result("b", status="wrong"), _result("c", status="skipped"),
        _result("d", message=INTERRUPTED)]}
    write_json(bench, tmp_path / "headline.json")
    record = {"schema": "foveal-gpu-check/1", "files": {"headline": "headline.json"},
              "selfcheck": [{"check": "conv1d", "dtype": "float16", "passed": False}],
              "tests": [{"nodeid": "t1", "outcome": "passed"},
                        {"nodeid": "t2", "outcome": "skipped"},
                        {"nodeid": "t3", "outcome": "error"}],
              "kernels": {"loaded": [{"kernel": "k"}], "rows": [{"id": "x", "verdict": "same"}]}}
    (tmp_path / "gpu_check.json").write_text(json.dumps(record))
    previous = load_previous(tmp_path / "gpu_check.json")
    assert previous.done("headline") == {"a float16 forward", "b float16 forward"}
    assert previous.done("suite") == set()
    assert previous.done("selfcheck") == {"conv1d float16"}
    assert previous.done("tests") == {"t1", "t3"}  # a skipped test is run again
    assert previous.kernel_entries() == [{"kernel": "k"}]
    assert previous.kernel_rows() == {"x": {"id": "x", "verdict": "same"}}
    assert [finished(r) for r in bench["results"]] == [True, True, False, False]
    assert phase_findings("tests", record) == " (1 passed, 1 skipped, 1 error)"
    assert phase_findings("selfcheck", record) == " (1 failed)"
    assert phase_findings("headline", record) == ""


def test_resume_names_a_file_that_is_not_a_record(tmp_path):
    write_json({"schema": "foveal-bench/1", "results": []}, tmp_path / "headline.json")
    with pytest.raises(ValueError, match="is not a gpu-check record"):
        load_previous(tmp_path / "headline.json")
    with pytest.raises(ValueError, match="cannot read it"):
        load_previous(tmp_path / "missing.json")


def test_what_earlier_runs_measured_is_carried_through_a_chain_of_resumes(tmp_path):
    first = {"schema": "foveal-gpu-check/1", "files": {},
             "tests": [{"nodeid": "t1", "outcome": "passed"}],
             "carried": {"headline": ["x float16 forward"]}}
    (tmp_path / "first.json").write_text(json.dumps(first))
    carried = load_previous(tmp_path / "first.json").carried(["tests", "headline", "suite"])
    assert carried == {"tests": ["t1"], "headline": ["x float16 forward"], "suite": []}
    second = {"schema": "foveal-gpu-check/1", "files": {}, "carried": carried,
              "tests": [{"nodeid": "t2", "outcome": "failed"}]}
    (tmp_path / "second.json").write_text(json.dumps(second))
    previous = load_previous(tmp_path / "second.json")
    assert previous.done("tests") == {"t1", "t2"}
    assert previous.done("headline") == {"x float16 forward"}
