"""Phase 2 of make gpu-check: kernels loaded on the GPU beside the CPU compile check. What a
compiled kernel reports is read from a real offline compile (Triton's own JIT cache, through
the same post-compile hook a GPU run uses); the device's own figures (registers, local
memory), which only a GPU gives, are set by hand where a verdict is tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foveal.bench import kernel_compare as kc
from foveal.bench import offline_compiler as oc

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def probe() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(HERE / "loaded_kernel_probe.py")], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_loaded_kernel_is_read_with_its_config_constexprs_and_dtype(probe):
    [entry] = probe["loaded"]
    first = probe["jobs"][0]
    assert (entry["kernel"], entry["module"]) == ("igemm_kernel", "foveal.kernels.igemm")
    assert entry["arch"] == "sm_90" and entry["dtype"] == "float16"
    assert entry["config"] == first["config"]  # blocks from the autotuner, warps and stages
    assert entry["config"]["num_warps"] in (2, 4, 8) and "BLOCK_M" in entry["config"]
    assert first["constexprs"].items() <= entry["constexprs"].items()
    assert entry["specialization"] == first["specialization"]
    assert entry["shared_bytes"] > 0
    assert entry["registers"] is entry["spills"] is entry["local_bytes"] is None  # no GPU here


def test_compile_check_jobs_match_only_the_same_kernel_config_constexprs_and_dtype(probe):
    [entry] = probe["loaded"]
    first, *others = probe["jobs"]
    assert kc.job_matches(first, entry)
    assert others and not any(kc.job_matches(job, entry) for job in others)
    assert not kc.job_matches({**first, "dtypes": ["bfloat16"]}, entry)
    assert not kc.job_matches({**first, "kernel": "wgrad_kernel"}, entry)
    changed = {**first["constexprs"], "HAS_RESIDUAL": not first["constexprs"]["HAS_RESIDUAL"]}
    assert not kc.job_matches({**first, "constexprs": changed}, entry)


def _entry(**figures) -> dict:
    return {"kernel": "igemm_kernel", "module": "foveal.kernels.igemm", "arch": "sm_90",
            "dtype": "float16", "config": {"BLOCK_M": 64, "num_warps": 4, "num_stages": 3},
            "constexprs": {"ACTIVATION": 1}, "specialization": "{}", "seen_in": "selfcheck",
            "registers": 96, "local_bytes": 0, "shared_bytes": 24576, **figures}


def test_same_specialization_compiled_offline_must_agree():
    same = oc.Compiled(registers=96, stack_bytes=0, shared_bytes=24576, spill_store_bytes=0,
                       spill_load_bytes=0)
    row = kc.row(_entry(), kc.against_compiled(_entry(), same))
    assert row["verdict"] == "same" and row["detail"] == ""
    assert row["gpu"] == {"registers": 96, "local_bytes": 0, "shared_bytes": 24576}
    more = oc.Compiled(registers=104, stack_bytes=16, shared_bytes=24576)
    verdict = kc.against_compiled(_entry(), more)
    assert verdict["verdict"] == "differs"
    assert verdict["detail"] == ("registers GPU 96 vs CPU 104; stack_bytes GPU 0 vs CPU 16")
    failed = kc.against_compiled(_entry(), oc.Compiled(error="PTXASError: ptxas died\nmore"))
    assert failed["verdict"] == "unmatched"
    assert failed["detail"] == "offline compile failed: PTXASError: ptxas died"


def test_kept_jobs_give_a_range():
    jobs = [{"registers": 90, "stack_bytes": 0, "shared_bytes": 24576},
            {"registers": 100, "stack_bytes": 0, "shared_bytes": 24576}]
    inside = kc.against_jobs(_entry(), jobs, "kept triton-3.6.0_sm_90.json")
    assert inside["verdict"] == "in range" and inside["cpu"]["registers"] == "90-100"
    assert inside["source"] == "kept triton-3.6.0_sm_90.json (2 job(s))"
    outside = kc.against_jobs(_entry(registers=128, local_bytes=None), jobs, "kept")
    assert outside["verdict"] == "out of range"
    assert outside["detail"] == "registers, stack_bytes"


def test_rows_say_which_matched_and_which_did_not():
    rows = [kc.row(_entry(), kc.against_compiled(_entry(), oc.Compiled(
                registers=96, stack_bytes=0, shared_bytes=24576))),
            kc.row(_entry(kernel="deform_forward_kernel"))]
    assert kc.summary(rows) == {"loaded": 2, "same": 1, "unmatched": 1}
    text = kc.table(rows).splitlines()
    assert text[0].split()[:3] == ["kernel", "dtype", "config"]
    assert text[2].startswith("igemm_kernel") and text[2].rstrip().endswith("same")
    assert "BLOCK_M=64 w4 s3" in text[2]
    assert text[3].rstrip().endswith("unmatched: no compile-check figures (yet)")


def test_the_phase_compiles_each_loaded_kernel_offline_and_records_every_row(probe, tmp_path):
    from foveal.bench.gpu_record import Record

    work = tmp_path / "work"
    work.mkdir()
    # As a GPU would report it, but with one register: the offline compile must disagree.
    entry = {**probe["loaded"][0], "registers": 1, "spills": 0, "local_bytes": 0,
             "seen_in": "selfcheck"}
    (work / "kernels-selfcheck.json").write_text(json.dumps({"kernels": [entry]}))
    record = Record(tmp_path / "gpu_check.json", work / "record.lock")
    record.create({"phases": {}})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "foveal.bench.gpu_phases", "kernels", "--record",
         str(record.path), "--lock", str(record.lock_path), "--work", str(work), "--out",
         str(tmp_path), "--suite", "smoke", "--stop-at", str(time.time() + 300),
         "--workers", "1"], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # a difference fails
    kernels = record.read()["kernels"]
    assert kernels["summary"] == {"loaded": 1, "differs": 1} and kernels["loaded"] == [entry]
    [row] = kernels["rows"]
    assert row["source"] == "compiled here from the same specialization"
    assert int(row["cpu"]["registers"]) > 1 and row["cpu"]["spill_store_bytes"] == "0"
    assert row["cpu"]["shared_bytes"] == str(entry["shared_bytes"])
    assert row["detail"].startswith("registers GPU 1 vs CPU ")
    assert "differs: registers GPU 1 vs CPU" in done.stdout


def test_offline_compiles_stop_when_the_time_is_up(capsys):
    got = []
    kc.compile_offline([_entry()], 1, time.time() - 1, lambda entry, result: got.append(result))
    assert got == [] and "1 kernel(s) not compiled offline" in capsys.readouterr().out
