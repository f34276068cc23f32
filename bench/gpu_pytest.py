"""pytest plugin of `make gpu-check`'s tests phase (`-p foveal.bench.gpu_pytest`).

Each test's outcome goes into the run record as soon as it is known (in the controlling
process only, under pytest-xdist), and after each test the process that ran it writes the
kernels it has loaded to the work folder, for the kernel-metadata phase. The record and the
folder come from FOVEAL_GPU_CHECK_RECORD, _LOCK and _WORK; without them the plugin does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

_state: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    record, lock, work = (os.environ.get(f"FOVEAL_GPU_CHECK_{k}") for k in
                          ("RECORD", "LOCK", "WORK"))
    if not (record and lock and work):
        return
    from .gpu_record import Record
    from .loaded_kernels import record_compiles

    record_compiles()
    _state.update(record=Record(Path(record), Path(lock)), work=Path(work),
                  worker=hasattr(config, "workerinput"))


def _message(report: pytest.TestReport) -> str:
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    return (report.longreprtext.strip().splitlines() or [""])[-1][:500]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _state or _state["worker"]:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        _state["record"].append("tests", {"nodeid": report.nodeid, "outcome": outcome,
                                          "seconds": round(report.duration, 3),
                                          "message": _message(report)})


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    if _state:
        from .loaded_kernels import dump

        dump(_state["work"] / f"kernels-tests-{os.getpid()}.json", "tests")
