"""The harness on the CPU path: every op's smoke workloads are checked and (meaninglessly)
timed, the JSON carries every field, and a wrong or failing kernel is caught before timing."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from foveal.bench.harness import Settings, plan, relative_error, run_benchmark
from foveal.bench.ops import ADAPTERS, ConvAdapter, DeformAdapter
from foveal.bench.report import to_json
from foveal.bench.workloads import WorkloadError, select

CPU = torch.device("cpu")


def _settings(**kwargs) -> Settings:
    return Settings(device=CPU, **kwargs)


def _one(smoke_workloads, name):
    return select(smoke_workloads, names=[name])


# Each op's differentiable inputs as its signature names them (conv-like ops: input, weight,
# bias), and the baselines it is timed against besides PyTorch.
GRADIENTS = {
    "depthwise_separable_conv2d": {"x", "dw_weight", "pw_weight", "dw_bias", "pw_bias"},
    "separable_conv2d": {"input", "weight_col", "weight_row", "bias"},
    "deform_conv2d": {"input", "offset", "weight", "bias"},
}
EXTRA_BASELINES = {"separable_conv2d": {"conv2d kxk"},
                   "conv2d_fp8": {"foveal fp16", "fp8 + quantize"},
                   "conv3d_fp8": {"foveal fp16", "fp8 + quantize"},
                   "depthwise_separable_conv2d_fp8": {"foveal fp16"}}
NEW_OPS = {"depthwise_separable_conv2d": "smoke.depthwise_separable_conv2d",
           "separable_conv2d": "smoke.separable_conv2d", "local_conv2d": "smoke.local_conv2d",
           "deform_conv2d": "smoke.deform_conv2d.dcnv2"}


def _expected_gradients(workload) -> set[str]:
    names = set(GRADIENTS.get(workload.op, {"input", "weight", "bias"}))
    if workload.args.get("bias") is False:
        names -= {"bias", "dw_bias", "pw_bias"}
    for optional in ("mask", "residual"):
        if workload.args.get(optional):
            names.add(optional)
    return {f"grad_{name}" for name in names}


def test_every_smoke_case_passes_its_check_and_is_timed(smoke_report, smoke_workloads):
    seen = {(c.workload.name, c.direction) for c in smoke_report.cases}
    assert seen == {(w.name, d) for w in smoke_workloads for d in ("forward", "backward")
                    if d == "forward" or ADAPTERS[w.op].differentiable}  # FP8: forward only
    assert {w.op for w in smoke_workloads} >= set(NEW_OPS)
    for case in smoke_report.cases:
        expected_variants = {"foveal", "pytorch", *EXTRA_BASELINES.get(case.workload.op, ())}
        assert set(case.variants) == expected_variants, case.workload.name
        for name, v in case.variants.items():
            where = f"{case.workload.name} {case.direction} {name}: {v.message}"
            assert v.status == "ok", where
            assert v.error <= v.tolerance, where
            assert v.timing is not None and v.timing.median_ms > 0, where
            assert v.timing.meaningful is False, where
        if case.direction == "backward":
            for name, v in case.variants.items():
                assert set(v.errors) == _expected_gradients(case.workload), (
                    case.workload.name, name)
    assert smoke_report.failures == []
    assert smoke_report.meaningful is False


def test_plan_leaves_out_cases_an_op_does_not_have(smoke_workloads):
    """An FP8 op runs forward in float8_e4m3fn only; a float op never in FP8."""
    chosen = select(smoke_workloads, names=["smoke.conv2d_fp8", "smoke.conv1d"])
    settings = _settings(backward=True, dtypes=("float32", "float8_e4m3fn"))
    assert {(w.name, d, direction) for w, d, direction in plan(chosen, settings)} == {
        ("smoke.conv1d", "float32", "forward"), ("smoke.conv1d", "float32", "backward"),
        ("smoke.conv2d_fp8", "float8_e4m3fn", "forward")}


def test_json_has_every_field(smoke_document):
    doc = json.loads(json.dumps(smoke_document, allow_nan=False))  # strict JSON round trip
    assert doc["schema"] == "foveal-bench/1"
    assert doc["meaningful"] is False
    assert "not meaningful on CPU" in doc["timing_note"]
    assert {"device", "device_type", "driver", "cuda", "cudnn", "torch", "triton", "python",
            "date", "git_commit", "source_digest", "backend"} <= set(doc["environment"])
    assert doc["environment"]["backend"] == "interpreter"
    assert doc["environment"]["torch"] == torch.__version__
    assert {"copy_bytes_per_s", "matmul_flops_per_s", "meaningful"} <= set(doc["ceilings"])
    assert doc["ceilings"]["copy_bytes_per_s"] > 0
    assert doc["ceilings"]["matmul_flops_per_s"]["float32"] > 0
    assert {"backward", "compile", "dtypes", "label"} <= set(doc["settings"])
    assert doc["summary"]["cases"] == len(doc["results"]) == doc["summary"]["ok"]
    assert doc["summary"]["speedup"]["pytorch"]["all"]["cases"] == len(doc["results"])
    row_fields = {"workload", "model", "op", "dtype", "layout", "direction", "batch", "args",
                  "flops", "bytes", "arithmetic_intensity", "bound", "status", "variants",
                  "speedup", "input_sets"}
    variant_fields = {"status", "message", "error", "errors", "tolerance", "time_ms",
                      "time_p20_ms", "time_p80_ms", "timing_meaningful", "timing_note",
                      "tflops", "gbps", "fraction_of_compute_ceiling",
                      "fraction_of_memory_ceiling", "fraction_of_roofline",
                      "peak_memory_bytes"}
    for row in doc["results"]:
        assert row_fields <= set(row)
        assert row["bound"] in ("compute", "memory")
        for v in row["variants"].values():
            assert variant_fields <= set(v)
            assert v["timing_note"] == "not meaningful on CPU"
            assert v["time_p20_ms"] <= v["time_ms"] <= v["time_p80_ms"]
        foveal, pytorch = row["variants"]["foveal"], row["variants"]["pytorch"]
        assert row["speedup"]["pytorch"] == pytest.approx(pytorch["time_ms"] / foveal["time_ms"])
        assert foveal["tflops"] == pytest.approx(row["flops"] / foveal["time_ms"] / 1e9)


class _OffByOneMixin:
    """A 'kernel' that gets one output element wrong, and counts how often it runs."""

    calls = 0

    def foveal(self, workload, inputs):
        type(self).calls += 1
        out = super().foveal(workload, inputs).clone()
        out[(0,) * out.dim()] += 1.0
        return out


class _OffByOne(_OffByOneMixin, ConvAdapter):
    pass


class _WrongShape(ConvAdapter):
    """A 'kernel' that ignores the stride."""

    def foveal(self, workload, inputs):
        import foveal.kernels as fk

        return fk.conv2d(inputs["input"], inputs["weight"], inputs.get("bias"), padding=1,
                         groups=workload.args["groups"], activation="relu")


class _DoubleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class _WrongBackward(ConvAdapter):
    """Right outputs, gradients twice too large."""

    def foveal(self, workload, inputs):
        return _DoubleGradient.apply(super().foveal(workload, inputs))


class _Broken(ConvAdapter):
    def foveal(self, workload, inputs):
        raise RuntimeError("kernel launch failed")


def test_wrong_output_of_every_new_op_is_caught_before_timing(smoke_workloads):
    """One adapter's output made wrong by one element, for each op beyond plain convolution:
    the check runs it once, reports it wrong, and never times it."""
    for op, workload in NEW_OPS.items():
        base = type(ADAPTERS[op])
        wrong = type(f"OffByOne{base.__name__}", (_OffByOneMixin, base), {"calls": 0})()
        report = run_benchmark(_one(smoke_workloads, workload), _settings(),
                               adapters={**ADAPTERS, op: wrong})
        [case] = report.cases
        foveal = case.variants["foveal"]
        assert foveal.status == "wrong", (op, foveal.message)
        assert foveal.timing is None and foveal.peak_memory_bytes is None, op
        assert "output relative error" in foveal.message, op
        assert type(wrong).calls == 1, op
        assert case.variants["pytorch"].status == "ok", op
        assert case.variants["pytorch"].timing is not None, op


class _WrongOffsetGradient(DeformAdapter):
    """Right output and gradients, except the offset's, twice too large."""

    def foveal(self, workload, inputs):
        return super().foveal(workload, {**inputs,
                                         "offset": _DoubleGradient.apply(inputs["offset"])})


def test_wrong_offset_gradient_is_caught_against_torchvision(smoke_workloads):
    report = run_benchmark(_one(smoke_workloads, "smoke.deform_conv2d.dcnv1"),
                           _settings(backward=True),
                           adapters={**ADAPTERS, "deform_conv2d": _WrongOffsetGradient()})
    forward, backward = report.cases
    assert forward.variants["foveal"].status == "ok"
    foveal = backward.variants["foveal"]
    assert foveal.status == "wrong" and foveal.timing is None
    assert foveal.errors["grad_offset"] == pytest.approx(1.0, rel=1e-3)  # 2g vs g
    assert "grad_offset relative error" in foveal.message
    for name in ("grad_input", "grad_weight"):
        assert foveal.errors[name] <= foveal.tolerance, name
    assert backward.variants["pytorch"].status == "ok"


def test_deform_without_torchvision_names_the_workload(smoke_workloads, monkeypatch):
    [workload] = _one(smoke_workloads, "smoke.deform_conv2d.dcnv1")
    adapter = ADAPTERS["deform_conv2d"]
    inputs = adapter.make_inputs(workload, torch.float32, CPU)
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)  # as if not installed
    with pytest.raises(WorkloadError) as err:
        adapter.eager(workload, inputs)
    assert "workload 'smoke.deform_conv2d.dcnv1'" in str(err.value)
    assert "torchvision is not installed" in str(err.value)


def test_wrong_output_is_reported_and_never_timed(smoke_workloads):
    _OffByOne.calls = 0
    report = run_benchmark(_one(smoke_workloads, "smoke.conv2d.grouped"), _settings(),
                           adapters={**ADAPTERS, "conv2d": _OffByOne(2)})
    [case] = report.cases
    foveal = case.variants["foveal"]
    assert foveal.status == "wrong"
    assert foveal.timing is None and foveal.peak_memory_bytes is None
    assert "output relative error" in foveal.message and "not timed" in foveal.message
    assert _OffByOne.calls == 1  # run once for the check, never for timing
    assert case.variants["pytorch"].status == "ok"
    assert case.variants["pytorch"].timing is not None
    assert report.failures == [case]
    row = to_json(report)["results"][0]
    assert row["status"] == "wrong" and row["variants"]["foveal"]["time_ms"] is None
    assert row["speedup"]["pytorch"] is None


def test_wrong_shape_is_reported(smoke_workloads):
    report = run_benchmark(_one(smoke_workloads, "smoke.conv2d.grouped"), _settings(),
                           adapters={**ADAPTERS, "conv2d": _WrongShape(2)})
    foveal = report.cases[0].variants["foveal"]
    assert foveal.status == "wrong"
    assert "output shape (2, 8, 9, 7) != reference (2, 8, 5, 4)" in foveal.message


def test_wrong_gradient_is_reported_and_never_timed(smoke_workloads):
    report = run_benchmark(_one(smoke_workloads, "smoke.conv2d.grouped"),
                           _settings(backward=True),
                           adapters={**ADAPTERS, "conv2d": _WrongBackward(2)})
    forward, backward = report.cases
    assert forward.variants["foveal"].status == "ok"
    foveal = backward.variants["foveal"]
    assert foveal.status == "wrong" and foveal.timing is None
    for name in ("grad_input", "grad_weight", "grad_bias"):
        assert foveal.errors[name] == pytest.approx(1.0, rel=1e-3)  # 2g vs g
        assert f"{name} relative error" in foveal.message
    assert backward.variants["pytorch"].status == "ok"


def test_failing_kernel_is_reported_and_the_baseline_still_runs(smoke_workloads):
    report = run_benchmark(_one(smoke_workloads, "smoke.conv2d.grouped"), _settings(),
                           adapters={**ADAPTERS, "conv2d": _Broken(2)})
    variants = report.cases[0].variants
    assert variants["foveal"].status == "error"
    assert variants["foveal"].message == "RuntimeError: kernel launch failed"
    assert variants["pytorch"].status == "ok"


def test_time_budget_skips_the_remaining_cases(smoke_workloads):
    report = run_benchmark(smoke_workloads[:2], _settings(max_minutes=0))
    assert [c.status for c in report.cases] == ["skipped", "skipped"]
    assert all("time budget" in c.message for c in report.cases)
    assert to_json(report)["summary"]["skipped"] == 2


def test_compile_baseline_is_checked_and_timed(smoke_workloads):
    # The eager dynamo backend keeps this fast on a CPU; on a GPU the default is inductor.
    report = run_benchmark(_one(smoke_workloads, "smoke.conv2d.dilated"),
                           _settings(compile=True, compile_backend="eager"))
    compiled = report.cases[0].variants["torch.compile"]
    assert compiled.status == "ok" and compiled.timing is not None
    assert to_json(report)["results"][0]["speedup"]["torch.compile"] > 0


def test_dtype_override_runs_bfloat16_through_the_interpreter(smoke_workloads):
    report = run_benchmark(_one(smoke_workloads, "smoke.conv3d.temporal"),
                           _settings(dtypes=("bfloat16",)))
    [case] = report.cases
    assert case.dtype == "bfloat16"
    assert case.variants["foveal"].status == "ok", case.variants["foveal"].message
    assert case.variants["foveal"].error > 1e-6  # really computed in bf16, not float32


def test_torch_backend_preference_is_refused(smoke_workloads):
    from foveal.kernels import use_backend

    with use_backend("torch"), pytest.raises(ValueError, match="PyTorch against itself"):
        run_benchmark(smoke_workloads[:1], _settings())


def test_relative_error():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_error(ref.float(), ref) == 0.0
    assert relative_error(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert relative_error(torch.tensor([3.0, float("nan")]), ref) == float("inf")
    assert relative_error(torch.tensor([3.0]), ref) == float("inf")


def test_explicit_cases_run_and_each_is_handed_over_as_it_finishes(smoke_workloads):
    chosen = _one(smoke_workloads, "smoke.conv1d")
    seen = []
    report = run_benchmark(chosen, _settings(), cases=[(chosen[0], "float32", "backward"),
                                                       (chosen[0], "float32", "forward")],
                           checkpoint=lambda r: seen.append(
                               [(c.direction, c.status) for c in r.cases]))
    assert [c.direction for c in report.cases] == ["backward", "forward"]
    assert seen == [[("backward", "ok")], [("backward", "ok"), ("forward", "ok")]]
    assert seen[-1] == [(c.direction, c.status) for c in report.cases]


def test_cases_skipped_by_the_time_budget_are_handed_over_once_at_the_end(smoke_workloads):
    seen = []
    report = run_benchmark(smoke_workloads[:3], _settings(max_minutes=0),
                           checkpoint=lambda r: seen.append(len(r.cases)))
    assert seen == [3] and [c.status for c in report.cases] == ["skipped"] * 3
