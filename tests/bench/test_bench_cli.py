"""`foveal bench` and `foveal profile` end to end on the CPU (Triton's interpreter)."""

from __future__ import annotations

import builtins
import json
import shlex

import pytest

from foveal.bench.ops import ConvAdapter
from foveal.clients.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _refused(*argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return str(exit_info.value.code)


def test_bench_writes_table_and_json(tmp_path, capsys):
    json_path = tmp_path / "r.json"
    code, out, err = _run(capsys, "bench", "--workloads", "smoke.conv2d.bottleneck",
                          "--json", str(json_path), "--plain")
    assert code == 0
    assert "smoke.conv2d.bottleneck" in out and "not meaningful on CPU" in out
    assert "no GPU" in err and "[1/1] smoke.conv2d.bottleneck float32 forward" in err
    doc = json.loads(json_path.read_text())
    assert [r["workload"] for r in doc["results"]] == ["smoke.conv2d.bottleneck"]
    assert doc["results"][0]["status"] == "ok"


def test_bench_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # optional: foveal[bench]
    plot_path = tmp_path / "r.png"
    code, _, err = _run(capsys, "bench", "--workloads", "smoke.conv1d", "--plot",
                        str(plot_path), "--plain")
    assert code == 0 and f"wrote {plot_path}" in err
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rich_table(capsys):
    pytest.importorskip("rich")
    code, out, _ = _run(capsys, "bench", "--workloads", "smoke.conv1d")
    assert code == 0
    assert "smoke.conv1d" in out and "foveal ms" in out and "┃" in out


def test_bench_list(capsys):
    code, out, _ = _run(capsys, "bench", "--list")
    assert code == 0
    assert "smoke.conv2d.grouped" in out and "resnet50" not in out  # smoke suite on a CPU
    code, out, _ = _run(capsys, "bench", "--list", "--suite", "full", "--tags", "deeplab")
    assert [line.split()[0] for line in out.splitlines()] == [
        "deeplabv3.aspp.rate6", "deeplabv3.aspp.rate12", "deeplabv3.aspp.rate18"]


@pytest.mark.parametrize("argv, message", [
    (["--workloads", "nope"], "no workload matches 'nope'"),
    (["--input-sets", "0"], "--input-sets must be at least 1, got 0"),
    (["--no-forward"], "--no-forward leaves nothing to run without --backward"),
    (["--max-minutes", "-1"], "--max-minutes must not be negative"),
    (["--ops", "conv9d"], "no workload matches the selection"),
    (["--workloads-file", "/nonexistent.toml"], "does not exist"),
])
def test_bench_refuses_bad_arguments(argv, message):
    assert message in _refused("bench", *argv)


def test_bench_plot_without_matplotlib_fails_before_running(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert "--plot needs matplotlib" in _refused("bench", "--plot", "x.png")


class _OffByOne(ConvAdapter):
    def foveal(self, workload, inputs):
        return super().foveal(workload, inputs) + 0.5


def test_bench_exits_1_when_an_output_is_wrong(monkeypatch, capsys):
    from foveal.bench import ops

    monkeypatch.setitem(ops.ADAPTERS, "conv3d", _OffByOne(3))
    code, out, _ = _run(capsys, "bench", "--workloads", "smoke.conv3d.r3d", "--plain")
    assert code == 1
    assert "foveal wrong" in out and "not timed" in out


def test_profile_from_shape(capsys, tmp_path):
    json_path = tmp_path / "p.json"
    code, out, _ = _run(capsys, "profile", "conv2d", "--shape", "in_channels=5",
                        "out_channels=6", "size=7x9", "kernel=3", "padding=1", "--batch", "2",
                        "--json", str(json_path), "--ncu")
    assert code == 0
    assert "igemm.igemm_kernel (autotuned)" in out and "<- chosen" in out
    assert "Triton interpreter" in out
    ncu = next(line for line in out.splitlines() if line.strip().startswith("ncu "))
    words = shlex.split(ncu)
    assert words[:4] == ["ncu", "--nvtx", "--nvtx-include", "foveal_profile/"]
    profile_args = words[words.index("foveal.clients.cli") + 1:]
    assert profile_args[:2] == ["profile", "conv2d"] and "--ncu" not in profile_args
    # The printed command describes the same layer: profiling it again gives the same launch.
    capsys.readouterr()
    code, again, _ = _run(capsys, *profile_args)
    assert code == 0
    assert again.splitlines()[1] == out.splitlines()[1]  # the "workload: ..." line
    report = json.loads(json_path.read_text())
    assert report["op"] == "conv2d" and report["launches"][0]["kernel"] == "igemm.igemm_kernel"


def test_profile_from_workload_with_backward(capsys):
    code, out, _ = _run(capsys, "profile", "--workload", "smoke.conv3d.temporal",
                        "--backward")
    assert code == 0
    assert "conv3d forward+backward" in out
    assert "wgrad.wgrad_kernel" in out


@pytest.mark.parametrize("argv, message", [
    (["profile"], "name an op (e.g. conv2d) with --shape, or give --workload"),
    (["profile", "conv2d"], "--shape is needed"),
    (["profile", "--workload", "nope"], "no workload named 'nope'"),
    (["profile", "--workload", "smoke.conv1d", "--shape", "kernel=3"], "either --workload or"),
    (["profile", "conv3d", "--workload", "smoke.conv1d"], "is a conv1d, not a conv3d"),
    (["profile", "conv9d", "--shape", "kernel=3"], "unknown op 'conv9d'"),
    (["profile", "conv2d", "--shape", "kernel"], "expected key=value"),
    (["profile", "conv2d", "--shape", "in_channels=4", "out_channels=4", "size=8x8"],
     "missing argument(s) ['kernel']"),
])
def test_profile_refuses_bad_arguments(argv, message):
    assert message in _refused(*argv)
