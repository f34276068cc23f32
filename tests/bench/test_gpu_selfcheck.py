"""The selfcheck phase of make gpu-check: every check's result as it comes, from several
processes, and a check that raises (a kernel that does not compile) recorded, not fatal."""

from __future__ import annotations

from foveal.bench.gpu_selfcheck import format_row, run_checks


def test_checks_run_in_worker_processes_and_hand_over_each_result():
    got = []
    run_checks([("conv1d", "float32"), ("conv2d pointwise", "bfloat16")], 2,
               lambda row, kernels: got.append((row, kernels)))
    rows = sorted((row for row, _ in got), key=lambda r: r["check"])
    assert [(r["check"], r["dtype"]) for r in rows] == [("conv1d", "float32"),
                                                        ("conv2d pointwise", "bfloat16")]
    for row in rows:
        assert row["passed"] and row["error"] is None and row["backend"] == "interpreter"
        assert 0 <= row["max_error"] <= row["tolerance"] and row["seconds"] > 0
    assert all(kernels == [] for _, kernels in got)  # the interpreter compiles nothing


def test_a_check_that_raises_is_a_failed_row_and_the_next_still_runs(monkeypatch):
    from foveal.kernels import selfcheck

    def broken(device, dtype):
        raise RuntimeError("PTX assembly aborted\nptxas fatal: details")

    monkeypatch.setitem(selfcheck.CHECKS, "broken", broken)
    rows = []
    run_checks([("broken", "float16"), ("conv1d", "float16")], 1,
               lambda row, kernels: rows.append(row))
    assert [r["check"] for r in rows] == ["broken", "conv1d"]
    assert rows[0]["passed"] is False and rows[0]["max_error"] is None
    assert rows[0]["error"] == "RuntimeError: PTX assembly aborted"
    assert format_row(rows[0]).endswith("FAIL: RuntimeError: PTX assembly aborted")
    assert rows[1]["passed"] and format_row(rows[1]).endswith("pass")
