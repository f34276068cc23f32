"""The whole-network benchmark (bench/models.py, `foveal bench-models`) on the CPU: the smoke
networks run end to end through Triton's interpreter, a wrong optimised network is caught before
anything is timed, torch.compile is skipped with its reason, and the JSON, table and results page
carry every figure."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from foveal.bench import results_page
from foveal.bench.device import Ceilings, Timing
from foveal.bench.harness import (
    COMPILED,
    FOVEAL,
    PYTORCH,
    BenchReport,
    CaseResult,
    SkipVariant,
    VariantResult,
)
from foveal.bench.models import (
    MODELS,
    TOLERANCE,
    ModelAdapter,
    ModelRun,
    build_model,
    model_settings,
    run_model_benchmark,
    select_models,
)
from foveal.bench.table import columns, print_table
from foveal.bench.workloads import Workload, WorkloadError
from foveal.clients.cli import main

CPU = torch.device("cpu")


def _bad_optimize(model: nn.Module) -> nn.Module:
    """optimize(), then one folded bias off by 0.5: the kind of bug a wrong fold makes."""
    from foveal.kernels.optimize import optimize

    net = optimize(model)
    bias = next(p for name, p in net.named_parameters() if name.endswith("bias"))
    with torch.no_grad():
        bias.add_(0.5)
    return net


def _counting(module: nn.Module, calls: list[int]) -> nn.Module:
    module.register_forward_hook(lambda *_: calls.append(1))
    return module


def _macs_by_hooks(workload: Workload) -> int:
    """Multiply-adds of every convolution and Linear, from the shapes a forward pass sees."""
    model = build_model(workload).float()
    total = 0

    def count(module, _inputs, out):
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            total += out.numel() * module.in_channels // module.groups * math.prod(
                module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    for m in model.modules():
        m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.randn(workload.batch, *workload.args["input"]))
    return total


def test_smoke_suite_end_to_end(capsys):
    """Every smoke network checked, then (meaninglessly) timed through the interpreter; one
    run (the slow part) feeds the checks of the report, the JSON and the table."""
    run = run_model_benchmark(select_models(suite="smoke"), model_settings(CPU))
    _check_report(run)
    document = run.to_json()
    _check_json(document)
    _check_table(document, capsys)


def _check_report(run: ModelRun) -> None:
    report = run.report
    assert [c.workload.name for c in report.cases] == [
        "smoke.resnet50", "smoke.mobilenet_v2", "smoke.r3d_18"]
    assert report.failures == [] and not report.interrupted and not report.meaningful
    for case in report.cases:
        assert case.direction == "forward" and case.dtype == "float32"
        assert set(case.variants) == {FOVEAL, PYTORCH, COMPILED}
        for name in (FOVEAL, PYTORCH):
            v = case.variants[name]
            assert v.status == "ok", (case.workload.name, name, v.message)
            assert v.error <= v.tolerance == TOLERANCE["float32"]
            assert v.timing is not None and v.timing.meaningful is False
        compiled = case.variants[COMPILED]
        assert compiled.status == "skipped" and compiled.timing is None
        assert compiled.message.startswith("not run on CPU")
        assert case.flops == 2 * _macs_by_hooks(case.workload), case.workload.name


def _check_json(document: dict) -> None:
    doc = json.loads(json.dumps(document, allow_nan=False))  # strict JSON round trip
    assert doc["schema"] == "foveal-bench/1" and doc["kind"] == "models"
    assert doc["label"] == "models" and doc["meaningful"] is False
    assert doc["interrupted"] is False and "not meaningful on CPU" in doc["timing_note"]
    assert {"device", "driver", "torch", "triton", "torchvision", "date", "git_commit",
            "source_digest", "backend"} <= set(doc["environment"])
    assert doc["environment"]["backend"] == "interpreter"
    assert doc["settings"]["tolerances"] == TOLERANCE and doc["settings"]["backward"] is False
    assert doc["summary"]["cases"] == doc["summary"]["ok"] == 3
    for row in doc["results"]:
        assert {"workload", "model", "batch", "layout", "args", "dtype", "flops", "bytes",
                "status", "variants", "speedup", "unit", "launches_before", "launches_after",
                "fused", "left", "time_ratio", "targets"} <= set(row)
        assert row["status"] == "ok"
        assert row["unit"] == ("clips" if row["layout"] == "channels_last_3d" else "images")
        assert 0 < row["launches_after"] < row["launches_before"]
        assert row["fused"] and all("-> foveal" in line for line in row["fused"])
        ours, eager = row["variants"][FOVEAL], row["variants"][PYTORCH]
        for v in (ours, eager):
            assert {"status", "error", "tolerance", "time_ms", "timing_meaningful",
                    "timing_note", "tflops", "peak_memory_bytes", "items_per_s"} <= set(v)
            assert v["items_per_s"] == pytest.approx(row["batch"] / (v["time_ms"] / 1e3))
            assert v["timing_note"] == "not meaningful on CPU"
        assert row["time_ratio"][PYTORCH] == pytest.approx(ours["time_ms"] / eager["time_ms"])
        assert row["time_ratio"][COMPILED] is None
        assert row["targets"][PYTORCH]["below"] == 1.0
        assert row["targets"][COMPILED]["below"] == pytest.approx(1.1)
        assert all(t["met"] is None for t in row["targets"].values())  # CPU: not judged
    fused = {row["workload"]: " ".join(row["fused"]) for row in doc["results"]}
    assert "residual" in fused["smoke.resnet50"] and "BatchNorm folded" in fused["smoke.resnet50"]
    assert "DepthwiseSeparableConv2d" in fused["smoke.mobilenet_v2"]
    assert "Conv3d" in fused["smoke.r3d_18"]


def _check_table(document: dict, capsys) -> None:
    headers, rows = columns(document)
    assert headers[:7] == ["model", "batch", "dtype", "foveal ms", "throughput", "launches",
                           "peak MiB"]
    assert "foveal/pytorch" in headers and "foveal/torch.compile" in headers
    for row, cells in zip(document["results"], rows, strict=True):
        assert cells[0] == row["workload"]
        assert cells[5] == f"{row['launches_before']} -> {row['launches_after']}"
        assert cells[4].endswith(f"{row['unit']}/s*")
        assert cells[-1] == "torch.compile skipped"
    print_table(document, use_rich=False)
    out = capsys.readouterr().out
    assert "torch.compile skipped: not run on CPU" in out
    assert "targets (foveal/baseline time below a bound) are judged on a GPU only" in out
    assert "not meaningful on CPU" in out


def _sample_gpu_run(times_ms: dict[str, float]) -> ModelRun:
    """A GPU run of smoke.resnet50 as the harness reports one, with the given times (a page
    sample: no kernel runs)."""
    from foveal.kernels.optimize import OptimizeReport

    workload = select_models(names=["smoke.resnet50"])[0]
    variants = {name: VariantResult("ok", 1e-3, {"output": 1e-3}, 1e-2, Timing(t, t, t, True),
                                    2**20) for name, t in times_ms.items()}
    case = CaseResult(workload, "float16", "forward", 10**9, 10**6, 1, variants)
    environment = {"device": "Test GPU 80GB", "backend": "triton", "torch": "2.x",
                   "date": "2026-01-02T03:04:05+00:00", "git_commit": "abc123"}
    ceilings = Ceilings(1e12, 2**30, {"float16": 1e15}, 8192, meaningful=True)
    report = BenchReport(environment, ceilings, model_settings(torch.device("cuda")), [case])
    fused = ["conv1 + bn1 + relu -> foveal Conv2d (BatchNorm folded, relu)"]
    return ModelRun(report, {workload.name: OptimizeReport(38, 14, fused)})


def test_results_page_shows_model_runs(tmp_path):
    sample = _sample_gpu_run({FOVEAL: 8.0, PYTORCH: 10.0, COMPILED: 7.0}).to_json()
    results = tmp_path / "results"
    results.mkdir()
    (results / "models.json").write_text(json.dumps(sample))
    readme = tmp_path / "README.md"
    readme.write_text(f"# page\n\n{results_page.BEGIN}\n{results_page.END}\n")
    assert results_page.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    section = readme.read_text()
    assert "### Test GPU 80GB: models, 2026-01-02T03:04:05+00:00" in section
    assert "| model | batch | dtype | foveal ms | throughput |" in section
    row = next(line for line in section.splitlines() if line.startswith("| smoke.resnet50 |"))
    # 2 images in 8 ms; 8/10 of eager's time; 8/7 of torch.compile's
    assert "| 250 images/s | 38 -> 14 | 1.0 |" in row
    assert "| 10 | 0.8 |" in row and "| 7 | 1.14 |" in row
    assert ("smoke.resnet50 float16: faster than PyTorch eager (foveal/pytorch 0.8 < 1): met; "
            "within 10% of torch.compile (foveal/torch.compile 1.14 < 1.1): MISSED") in section
    assert "not meaningful" not in section


def test_wrong_optimized_network_is_caught_before_timing():
    calls: list[int] = []
    run = run_model_benchmark(
        select_models(names=["smoke.mobilenet_v2"]), model_settings(CPU),
        optimize=lambda model: _counting(_bad_optimize(model), calls))
    (case,) = run.report.cases
    ours = case.variants[FOVEAL]
    assert ours.status == "wrong" and ours.timing is None
    assert ours.error > TOLERANCE["float32"]
    assert "relative error" in ours.message and "not timed" in ours.message
    assert len(calls) == 1  # run once for the check, never for timing
    assert case.variants[PYTORCH].status == "ok" and case.variants[PYTORCH].timing is not None
    assert run.report.failures == [case]
    assert run.to_json()["results"][0]["variants"][FOVEAL]["time_ms"] is None


def test_cli_runs_a_network_and_fails_loudly_on_a_wrong_one(tmp_path, capsys, monkeypatch):
    json_path = tmp_path / "m.json"
    code = main(["bench-models", "--models", "smoke.mobilenet_v2", "--json", str(json_path),
                 "--plain"])
    out = capsys.readouterr()
    assert code == 0
    assert "smoke.mobilenet_v2" in out.out and "foveal/pytorch" in out.out
    assert "[1/1] smoke.mobilenet_v2 float32 forward: foveal" in out.err
    doc = json.loads(json_path.read_text())
    assert doc["kind"] == "models" and doc["results"][0]["status"] == "ok"

    import foveal.kernels

    monkeypatch.setattr(foveal.kernels, "optimize", _bad_optimize)
    code = main(["bench-models", "--models", "smoke.mobilenet_v2", "--plain"])
    assert code == 1
    assert "foveal: wrong: output relative error" in capsys.readouterr().out


def test_unknown_model_names_are_refused():
    with pytest.raises(WorkloadError, match=r"no model matches 'resnet9000'; known: resnet50, "
                                            r"mobilenet_v2, r3d_18, smoke\.resnet50"):
        select_models(names=["resnet9000"])
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-models", "--models", "resnet9000"])
    assert str(exit_info.value.code).startswith("foveal bench-models: no model matches "
                                                "'resnet9000'")
    bad = dataclasses.replace(MODELS[3], name="bad", args={**MODELS[3].args,
                                                          "architecture": "resnet9000"})
    with pytest.raises(WorkloadError, match="model 'bad': unknown torchvision architecture "
                                            "'resnet9000'"):
        run_model_benchmark([bad], model_settings(CPU))


def test_list_shows_the_suites(capsys):
    assert main(["bench-models", "--list"]) == 0  # smoke on a CPU
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "smoke.resnet50", "smoke.mobilenet_v2", "smoke.r3d_18"]
    assert main(["bench-models", "--list", "--suite", "full"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:5] for line in lines] == [
        ["resnet50", "resnet50", "batch", "32", "3x224x224"],
        ["mobilenet_v2", "mobilenet_v2", "batch", "32", "3x224x224"],
        ["r3d_18", "r3d_18", "batch", "8", "3x16x112x112"]]
    assert all("float16" in line for line in lines)


def test_networks_are_seeded_with_batchnorms_far_from_identity():
    workload = select_models(names=["smoke.resnet50"])[0]
    first, second = build_model(workload), build_model(workload)
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(),
                                                 second.state_dict().values(), strict=True))
    norms = [m for m in first.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not torch.allclose(m.running_var, torch.ones_like(m.running_var))
                         and m.running_mean.abs().max() > 0 for m in norms)
    assert isinstance(first.layer2, nn.Identity) and first.fc.in_features == 256  # 4 x 64
    assert first.fc.out_features == 10 and not first.training


def test_compile_is_a_skipped_baseline_when_it_fails():
    workload = select_models(names=["smoke.r3d_18"])[0]

    def failing_backend(gm, example_inputs):
        raise RuntimeError("no kernels for you")

    settings = dataclasses.replace(model_settings(CPU), compile=True,
                                   compile_backend=failing_backend)
    adapter = ModelAdapter(settings)
    inputs = adapter.make_inputs(workload, torch.float32, CPU)
    with torch.no_grad(), pytest.raises(SkipVariant, match=r"compiling failed: "
                                        r"BackendCompilerFailed: .*no kernels for you"):
        adapter.baselines(workload)[COMPILED](inputs)
    working = ModelAdapter(dataclasses.replace(settings, compile_backend="eager"))
    with torch.no_grad():
        got = working.baselines(workload)[COMPILED](inputs)
        assert torch.equal(got, working.eager(workload, inputs))


def test_interrupt_keeps_what_was_measured():
    """Ctrl-C (or the SIGINT of gpu_check's time limit) while timing the second network: the
    first keeps its figures, the rest is reported skipped and the run says it was interrupted."""
    from foveal.kernels.optimize import optimize

    calls: list[int] = []

    def interrupting(model: nn.Module) -> nn.Module:
        net = optimize(model)
        if type(model).__name__ == "VideoResNet" and not calls:  # the first R3D only

            def hook(*_):
                calls.append(1)
                if len(calls) == 2:  # the check passed; timing is interrupted
                    raise KeyboardInterrupt
            net.register_forward_hook(hook)
        return net

    mobilenet, r3d = select_models(names=["smoke.mobilenet_v2", "smoke.r3d_18"])
    chosen = [mobilenet, r3d, dataclasses.replace(r3d, name="smoke.r3d_18.again")]
    run = run_model_benchmark(chosen, model_settings(CPU), optimize=interrupting)
    first, second, third = run.report.cases
    assert run.report.interrupted and run.report.failures == []
    assert first.variants[FOVEAL].timing is not None and first.status == "ok"
    assert {name: v.status for name, v in second.variants.items()} == {
        FOVEAL: "skipped", PYTORCH: "skipped", COMPILED: "skipped"}
    assert second.variants[FOVEAL].message.startswith("interrupted")
    assert third.variants == {} and third.message.startswith("skipped: interrupted")
    doc = run.to_json()
    assert doc["interrupted"] is True and doc["results"][0]["variants"][FOVEAL]["time_ms"]
