"""`foveal compilecheck` end to end on one small workload, in a process with the real compiler."""

from __future__ import annotations

import json
import subprocess
import sys

from test_compile_rules import real_compiler_env


def run_cli(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**real_compiler_env(), "FOVEAL_COMPILE_CACHE": str(tmp_path / "cache"),
           "TRITON_INTERPRET": "1"}  # the command must drop it itself
    return subprocess.run([sys.executable, "-m", "foveal.clients.cli", "compilecheck", *args],
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def test_compiles_a_workload_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    done = run_cli("--workloads", "smoke.conv2d.bottleneck", "--dtypes", "float16",
                   "--arch", "sm_80", "--modes", "inference", "--json", str(out),
                   tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "pointwise_kernel" in done.stdout or "igemm_kernel" in done.stdout
    (document,) = json.loads(out.read_text())["runs"]
    assert document["arch"]["name"] == "sm_80" and document["summary"]["violations"] == 0
    jobs = document["jobs"]
    assert jobs and all(j["error"] is None and j["registers"] > 0 for j in jobs)
    assert all(j["tensor_cores"] == "mma" for j in jobs if j["dot"])
    assert all(len(j["key"]) == 64 for j in jobs)  # what kept results are found by
    (case,) = document["cases"]
    assert case["workload"] == "smoke.conv2d.bottleneck" and case["mode"] == "inference"
    assert all(0 <= i < len(jobs) for launch in case["launches"] for i in launch)
    # A second run finds every kernel in the cache.
    again = run_cli("--workloads", "smoke.conv2d.bottleneck", "--dtypes", "float16", "--arch",
                    "sm_80", "--modes", "inference", tmp_path=tmp_path)
    assert again.returncode == 0 and f"{len(jobs)} cached, 0 to compile" in again.stderr


def test_kept_results_stand_for_unchanged_kernels_of_the_same_triton(tmp_path, monkeypatch):
    from foveal.bench import compile_page, compilecheck

    monkeypatch.setattr(compile_page, "RESULTS_DIR", tmp_path)
    good = {"kernel": "igemm_kernel", "key": "a" * 64, "config": {}, "registers": 128,
            "spill_store_bytes": 0, "stack_bytes": 0, "tensor_cores": "wgmma", "error": None}
    failed = {**good, "key": "b" * 64, "error": "ptxas error"}  # compiled again, with its message
    unkeyed = {**good, "key": ""}
    (tmp_path / "triton-9.9.9_sm_90.json").write_text(json.dumps({"jobs": [good, failed,
                                                                         unkeyed]}))
    (tmp_path / "triton-9.9.8_sm_90.json").write_text(json.dumps({"jobs": [{**good,
                                                                          "key": "c" * 64}]}))
    kept = compilecheck.kept_results("9.9.9")
    assert list(kept) == ["a" * 64]
    assert (kept["a" * 64].registers, kept["a" * 64].tensor_cores) == (128, "wgmma")


def test_unknown_workload_and_arch_are_named(tmp_path):
    done = run_cli("--workloads", "no.such.layer", tmp_path=tmp_path)
    assert done.returncode != 0 and "no.such.layer" in done.stderr
    done = run_cli("--workloads", "smoke.conv1d", "--arch", "sm_75", tmp_path=tmp_path)
    assert done.returncode != 0 and "sm_75" in done.stderr


def test_profile_shows_candidate_configs_offline(tmp_path):
    env = {**real_compiler_env(), "FOVEAL_COMPILE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "foveal.clients.cli", "profile", "conv2d", "--arch", "sm_90",
         "--batch", "8", "--dtype", "float16", "--layout", "channels_last", "--shape",
         "in_channels=64", "out_channels=64", "size=28x28", "kernel=3", "padding=1",
         "--json", str(tmp_path / "profile.json")],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "launch 1: igemm_kernel" in done.stdout and "wgmma" in done.stdout
    assert "candidate config(s)" in done.stdout
    document = json.loads((tmp_path / "profile.json").read_text())
    assert document["arch"]["name"] == "sm_90" and len(document["jobs"]) > 1
    assert all(job["registers"] > 0 and job["error"] is None for job in document["jobs"])


def test_fp8_workloads_compile_for_hopper_and_are_skipped_on_ampere(tmp_path):
    """An FP8 workload is checked in its own dtype by default, in inference alone (it has no
    backward), with FP8 wgmma on sm_90; sm_80 has no FP8 and says so instead of compiling."""
    out = tmp_path / "check.json"
    done = run_cli("--workloads", "smoke.conv2d_fp8", "--arch", "sm_90,sm_80", "--modes",
                   "training", "--json", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert ("skipped 1 case(s): float8_e4m3fn needs FP8 tensor cores (sm_89 or newer); sm_80 "
            "has none: not compiled (smoke.conv2d_fp8 float8_e4m3fn inference sm_80)"
            in done.stdout)
    hopper, ampere = json.loads(out.read_text())["runs"]
    assert [c["mode"] for c in hopper["cases"]] == ["inference"] and not hopper["skipped"]
    dots = [j for j in hopper["jobs"] if j["dot"]]
    assert dots and all(j["tensor_cores"] == "wgmma" and j["tensor_core_operands"] == "e4m3"
                        and j["spill_store_bytes"] == 0 for j in dots)
    assert {j["kernel"] for j in hopper["jobs"]} == {"igemm_kernel", "_quantize_kernel"}
    assert ampere["jobs"] == [] and ampere["cases"] == []
    assert ampere["skipped"] == [{"workload": "smoke.conv2d_fp8", "dtype": "float8_e4m3fn",
                                  "mode": "inference", "reason": "float8_e4m3fn needs FP8 "
                                  "tensor cores (sm_89 or newer); sm_80 has none: not compiled"}]


def test_cache_keys_do_not_depend_on_where_the_environment_lies():
    """Triton records its libdevice's absolute path in a specialization; a clone elsewhere
    must still find the kept results."""
    from foveal.bench.compilecheck import _portable

    def specialization(root: str) -> str:
        libdevice = f"{root}/triton/backends/nvidia/lib/libdevice.10.bc"
        return json.dumps({"name": "k", "options": {"num_warps": 4,
                                                     "extern_libs": [["libdevice", libdevice]]}})

    here, there = specialization("/work/.venv"), specialization("/tmp/clone/.venv")
    assert here != there and _portable(here) == _portable(there)
    assert "libdevice.10.bc" in _portable(here)
