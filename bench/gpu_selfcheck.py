"""The selfcheck phase of `make gpu-check`: every kernel compiled and run once on the device,
in fp16, bf16 and fp32, against PyTorch in float64 (`foveal.kernels.selfcheck`'s checks).

Unlike `foveal selfcheck`, one check that fails to compile or raises is a finding recorded
with its error, not the end of the run, and each result is recorded as it comes. A first lease
spends most of this phase compiling, so the checks are spread over several processes (each
compiles on its own core; the GPU is shared, nothing is timed).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any

Task = tuple[str, str]  # (check name, dtype)


def run_check(task: Task) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One check on the default device; with the kernels this process has loaded so far."""
    import torch

    from foveal.kernels.backend import backend_for
    from foveal.kernels.selfcheck import CHECKS, TOLERANCE

    from .harness import describe_error
    from .loaded_kernels import loaded_kernels, record_compiles

    name, dtype_name = task
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype_name)
    record_compiles()
    torch.manual_seed(0)
    result: dict[str, Any] = {"check": name, "dtype": dtype_name, "backend": backend_for(device),
                              "tolerance": TOLERANCE[dtype]}
    start = time.perf_counter()
    try:
        error = CHECKS[name](device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as err:  # a kernel that does not compile or run is a finding
        result.update(max_error=None, passed=False, error=describe_error(err))
    else:
        result.update(max_error=error if error == error else None,  # NaN: no figure
                      passed=bool(error <= TOLERANCE[dtype]), error=None)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result, loaded_kernels()


def run_checks(tasks: Sequence[Task], workers: int,
               on_result: Callable[[dict[str, Any], list[dict[str, Any]]], None]) -> None:
    """Run `tasks` in `workers` processes (in this one when 1), handing over each result."""
    if workers <= 1:
        for task in tasks:
            on_result(*run_check(task))
        return
    context = multiprocessing.get_context("spawn")  # CUDA does not survive a fork
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for future in concurrent.futures.as_completed([pool.submit(run_check, t)
                                                       for t in tasks]):
            on_result(*future.result())


def format_row(row: dict[str, Any]) -> str:
    error = "-" if row["max_error"] is None else f"{row['max_error']:.2e}"
    verdict = "pass" if row["passed"] else "FAIL" + (f": {row['error']}" if row["error"] else "")
    return (f"selfcheck {row['check']:<24} {row['dtype']:<9} {row['backend']:<12} {error:>9} "
            f"(tolerance {row['tolerance']:.0e}) {row['seconds']:6.1f} s  {verdict}")
