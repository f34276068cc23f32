"""Whole-network benchmarks: `foveal.kernels.optimize(model)` against PyTorch eager and
torch.compile, end to end, on torchvision's ResNet-50, MobileNetV2 and R3D-18.

Each network is a named workload run through the layer benchmark's harness (`harness.py`) by
one adapter, so it is checked and timed exactly as a layer is: its output is compared with the
same network in float64 before anything is timed (a wrong output is reported and never timed),
the timings come from the same timer (do_bench on a GPU; marked not meaningful on a CPU), and
the result file has the same environment, settings and per-variant figures. On top of those,
each row carries what only a network has: optimize()'s kernel launches before and after and the
fusions it made, throughput in images or clips per second, foveal's time as a fraction of each
baseline's, and whether issue 9's targets are met (faster than eager, within 10% of
torch.compile).

The networks are torchvision's own, built without weights: a seeded initialisation, eval mode,
and BatchNorm running statistics and affine parameters randomised a little, so that folding
them into the convolutions is not the identity. The "full" suite runs the real sizes on a GPU
(fp16, channels_last); the "smoke" suite runs truncated networks (later stages replaced by
Identity, the classifier resized) at tiny sizes in float32, through Triton's interpreter on a
CPU, to prove the path end to end.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .device import Timer
from .harness import (
    COMPILED,
    FOVEAL,
    PYTORCH,
    BenchReport,
    Case,
    ProgressFn,
    Settings,
    SkipVariant,
    compiled,
    describe_error,
    run_benchmark,
    skipped,
)
from .ops import Cost, Inputs, OpAdapter, OpFunction
from .report import MODELS_KIND, to_json
from .workloads import Workload, WorkloadError, select

if TYPE_CHECKING:  # foveal.kernels loads only once the device (and interpreter) is chosen
    from foveal.kernels.optimize import OptimizeReport

MODEL_OP = "model"
# ||out - ref|| / ||ref|| of the network's output against float64. One layer's rounding
# (harness.TOLERANCE) compounds over ~50 layers; a wrong fold or index gives errors near 1.
# fp32 covers TF32 on a GPU.
TOLERANCE = {"float64": 1e-9, "float32": 1e-2, "float16": 2e-2, "bfloat16": 1e-1}
# Issue 9's targets: foveal's time / the baseline's time must stay below these.
TARGETS = {PYTORCH: ("faster than PyTorch eager", 1.0),
           COMPILED: ("within 10% of torch.compile", 1.10)}
MEMORY_FORMATS = {"channels_last": torch.channels_last,
                  "channels_last_3d": torch.channels_last_3d}
Optimizer = Callable[[nn.Module], nn.Module]


def _model(name: str, architecture: str, batch: int, item: tuple[int, ...], *,
           suite: str = "full", dtype: str = "float16", options: Mapping[str, Any] | None = None,
           drop: Sequence[str] = (), note: str = "") -> Workload:
    """A network workload: `item` is one image (C, H, W) or one clip (C, T, H, W)."""
    video = len(item) == 4
    return Workload(
        name=name, op=MODEL_OP, batch=batch, dtypes=(dtype,),
        layout="channels_last_3d" if video else "channels_last",
        args={"architecture": architecture, "input": list(item), "options": dict(options or {}),
              "drop": list(drop)},
        model=architecture, suite=suite, tags=("model", "video" if video else "image"),
        source=f"torchvision.models:{architecture}", note=note)


MODELS: tuple[Workload, ...] = (
    _model("resnet50", "resnet50", 32, (3, 224, 224)),
    _model("mobilenet_v2", "mobilenet_v2", 32, (3, 224, 224)),
    _model("r3d_18", "r3d_18", 8, (3, 16, 112, 112)),
    # Interpreted Triton runs a convolution in seconds, so the smoke networks keep one stage of
    # each kind (~1-2 s per call each): ResNet-50's stem and layer1 (bottlenecks, a projection
    # shortcut), MobileNetV2's first 8 blocks at width 0.25 (depthwise-separable pairs, inverted
    # residuals), R3D-18's stem and first block (3D convolutions, a residual).
    _model("smoke.resnet50", "resnet50", 2, (3, 32, 32), suite="smoke", dtype="float32",
           options={"num_classes": 10}, drop=("layer2", "layer3", "layer4"),
           note="stem and layer1 only"),
    _model("smoke.mobilenet_v2", "mobilenet_v2", 2, (3, 32, 32), suite="smoke",
           dtype="float32", options={"width_mult": 0.25, "num_classes": 10},
           drop=tuple(f"features.{i}" for i in range(8, 19)),
           note="width 0.25, features 0-7 only"),
    _model("smoke.r3d_18", "r3d_18", 1, (3, 4, 8, 8), suite="smoke", dtype="float32",
           options={"num_classes": 10}, drop=("layer1.1", "layer2", "layer3", "layer4"),
           note="stem and layer1.0 only"),
)


def select_models(*, suite: str | None = None, names: Sequence[str] | None = None,
                  models: Sequence[Workload] = MODELS) -> list[Workload]:
    """Networks by exact name or shell pattern (all of the suite without names); an unknown
    name is a WorkloadError listing the known ones."""
    return select(models, suite=suite, names=names, noun="model")


def _architecture_builder(workload: Workload) -> Callable[..., nn.Module]:
    from torchvision.models import get_model_builder

    architecture = workload.args.get("architecture")
    try:
        return get_model_builder(architecture)
    except (ValueError, KeyError, TypeError):
        raise WorkloadError(f"model {workload.name!r}: unknown torchvision architecture "
                            f"{architecture!r}") from None


def _network(workload: Workload) -> nn.Module:
    """torchvision's network without weights, truncated as the workload says, in eval mode;
    built on the default device (the meta device for counting FLOPs)."""
    module = _architecture_builder(workload)(weights=None, **workload.args["options"])
    drop = workload.args["drop"]
    for name in drop:
        module.get_submodule(name)  # AttributeError naming the missing module
        module.set_submodule(name, nn.Identity())
    if drop:  # the classifier now sees fewer features: resize it to what is left
        head = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)][-1]
        classes = module.get_submodule(head).out_features
        module.set_submodule(head, nn.Identity())
        probe = copy.deepcopy(module).to("meta").eval()
        with torch.no_grad():
            features = probe(torch.empty(1, *workload.args["input"], device="meta")).shape[-1]
        module.set_submodule(head, nn.Linear(features, classes))
    return module.eval()


def build_model(workload: Workload, seed: int = 0) -> nn.Module:
    """The workload's network in float64 on the CPU: seeded, eval mode, BatchNorm statistics
    and affine parameters randomised so a fold into the convolution changes its weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _network(workload).double()
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    n = m.num_features
                    m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return module


@dataclass
class _Networks:
    """One workload's networks on one device: the float64 reference, and per dtype the eager
    copy (channels_last weights, as PyTorch recommends) and the optimised one."""

    name: str
    device: torch.device
    reference: nn.Module
    eager: dict[torch.dtype, nn.Module] = field(default_factory=dict)
    foveal: dict[torch.dtype, nn.Module] = field(default_factory=dict)


class _CompiledModel:
    """torch.compile of the eager network, compiled by its first call; a network torch.compile
    cannot compile is skipped with the reason, not counted as a failure."""

    def __init__(self, adapter: ModelAdapter, workload: Workload):
        self.adapter, self.workload = adapter, workload
        self.fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        x = inputs["input"]
        if self.fn is not None:
            return self.fn(x)
        fn = compiled(self.adapter.eager_model(self.workload, x.dtype, x.device),
                      self.adapter.settings)
        try:
            out = fn(x)
        except Exception as err:  # dynamo and inductor fail in many ways
            why = describe_error(err)
            inner = getattr(err, "inner_exception", None) or err.__cause__
            if isinstance(inner, BaseException):  # dynamo wraps the backend's own error
                why += f" ({describe_error(inner)})"
            raise SkipVariant(f"compiling failed: {why}") from err
        self.fn = fn
        return out


class ModelAdapter(OpAdapter):
    """A whole network as the harness's op: input {"input": a batch}, output the logits.

    Networks are built on first use and kept for one workload at a time (the harness runs a
    workload's cases together). `optimize` (default foveal.kernels.optimize) is injectable so a
    test can hand in a broken one. `compile_skip` is the reason torch.compile is not run, if not.
    """

    name = MODEL_OP
    compiles = False  # torch.compile is a baseline here (it may be skipped, with a reason)

    def __init__(self, settings: Settings, *, compile_skip: str | None = None,
                 optimize: Optimizer | None = None):
        self.settings = settings
        self.compile_skip = compile_skip
        self._optimize = optimize
        self.optimized: dict[str, OptimizeReport | None] = {}  # per workload name
        self._costs: dict[tuple[str, str], Cost] = {}
        self._networks: _Networks | None = None

    def check(self, workload: Workload) -> None:
        args = workload.args
        if set(args) != {"architecture", "input", "options", "drop"}:
            raise WorkloadError(f"model {workload.name!r}: arguments must be architecture, "
                                f"input, options and drop, got {sorted(args)}")
        item = args["input"]
        if (not isinstance(item, list) or len(item) not in (3, 4)
                or not all(type(n) is int and n > 0 for n in item)):
            raise WorkloadError(f"model {workload.name!r}: input must be [C, H, W] or "
                                f"[C, T, H, W] of positive ints, got {item!r}")
        wanted = "channels_last_3d" if len(item) == 4 else "channels_last"
        if workload.layout != wanted:
            raise WorkloadError(f"model {workload.name!r}: layout must be {wanted!r} for an "
                                f"input of {len(item)} dims, got {workload.layout!r}")
        _architecture_builder(workload)

    def cost(self, workload: Workload, dtype: torch.dtype, backward: bool) -> Cost:
        """FLOPs as torch's FlopCounterMode counts them (convolutions and matmuls, 2 per
        multiply-add), on the meta device; bytes: weights, input and output once each."""
        from torch.utils.flop_counter import FlopCounterMode

        key = (workload.name, str(dtype))
        if key not in self._costs:
            with torch.device("meta"):
                module = _network(workload).to(dtype)
                x = torch.empty(workload.batch, *workload.args["input"], dtype=dtype)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                out = module(x)
            weights = sum(p.numel() for p in module.parameters())
            itemsize = torch.empty((), dtype=dtype).element_size()
            self._costs[key] = Cost(int(counter.get_total_flops()),
                                    (weights + x.numel() + out.numel()) * itemsize)
        return self._costs[key]

    def make_inputs(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> Inputs:
        x = torch.randn(workload.batch, *workload.args["input"], dtype=dtype, device=device)
        return {"input": x.contiguous(memory_format=MEMORY_FORMATS[workload.layout])}

    # -- the three networks, built once per workload -------------------------------------
    def release(self) -> None:
        """Drop the networks held (their device memory goes with them)."""
        self._networks = None

    def _for(self, workload: Workload, device: torch.device) -> _Networks:
        found = self._networks
        if found is None or (found.name, found.device) != (workload.name, device):
            self.release()  # free the previous workload's networks first
            reference = build_model(workload, self.settings.seed).to(device)
            self._networks = found = _Networks(workload.name, device, reference)
        return found

    def eager_model(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> nn.Module:
        networks = self._for(workload, device)
        if dtype not in networks.eager:
            networks.eager[dtype] = copy.deepcopy(networks.reference).to(
                dtype=dtype, memory_format=MEMORY_FORMATS[workload.layout])
        return networks.eager[dtype]

    def foveal_model(self, workload: Workload, dtype: torch.dtype,
                     device: torch.device) -> nn.Module:
        """optimize() of the float64 network, then cast, so each fold rounds once, as the
        service does. A copy goes in: optimize() shares unfused submodules with its input."""
        networks = self._for(workload, device)
        if dtype not in networks.foveal:
            if self._optimize is None:
                from foveal.kernels import optimize
            else:
                optimize = self._optimize
            net = optimize(copy.deepcopy(networks.reference))
            self.optimized[workload.name] = getattr(net, "report", None)
            networks.foveal[dtype] = net.to(dtype=dtype)
        return networks.foveal[dtype]

    # -- the variants ----------------------------------------------------------------------
    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        x = inputs["input"]
        return self.foveal_model(workload, x.dtype, x.device)(x)

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        x = inputs["input"]
        return self.eager_model(workload, x.dtype, x.device)(x)

    def reference(self, workload: Workload, inputs64: Inputs) -> torch.Tensor:
        x = inputs64["input"]
        return self._for(workload, x.device).reference(x)

    def baselines(self, workload: Workload) -> dict[str, OpFunction]:
        if self.compile_skip is not None:
            return {COMPILED: skipped(self.compile_skip)}
        return {COMPILED: _CompiledModel(self, workload)}


def compile_skip_reason(settings: Settings) -> str | None:
    """Why torch.compile is not a baseline in this run, or None when it is."""
    if settings.device.type != "cuda":
        return ("not run on CPU: timings are not meaningful there and inductor's CPU build "
                "would take minutes")
    if not settings.compile:
        return "not asked for (--no-compile)"
    return None


@dataclass
class ModelRun:
    """A finished model benchmark: the harness's report and optimize()'s report per network."""

    report: BenchReport
    optimized: dict[str, OptimizeReport | None]

    def to_json(self) -> dict[str, Any]:
        """The harness's JSON, kind "models", each row with the network's own figures."""
        document = to_json(self.report)
        document["kind"] = MODELS_KIND
        for case, row in zip(self.report.cases, document["results"], strict=True):
            row.update(_network_figures(row, len(case.workload.args["input"]) == 4,
                                        self.optimized.get(case.workload.name),
                                        document["meaningful"]))
        return document


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    value = numerator / denominator
    return value if math.isfinite(value) else None


def _network_figures(row: dict[str, Any], video: bool, optimized: OptimizeReport | None,
                     meaningful: bool) -> dict[str, Any]:
    """Throughput per variant (added to each variant), launches, fusions, time ratios and the
    targets, derived here once from the row's own figures."""
    for variant in row["variants"].values():
        seconds = variant["time_ms"] * 1e-3 if variant["time_ms"] else None
        variant["items_per_s"] = _ratio(row["batch"], seconds)
    ours = row["variants"].get(FOVEAL, {}).get("time_ms")
    ratios = {name: _ratio(ours, v["time_ms"]) for name, v in row["variants"].items()
              if name != FOVEAL}
    targets = {name: {"goal": goal, "below": bound, "ratio": ratios.get(name),
                      "met": (ratios[name] < bound if meaningful and ratios.get(name) else None)}
               for name, (goal, bound) in TARGETS.items()}
    return {
        "unit": "clips" if video else "images",
        "launches_before": optimized.launches_before if optimized else None,
        "launches_after": optimized.launches_after if optimized else None,
        "fused": list(optimized.fused) if optimized else [],
        "left": [list(item) for item in optimized.left] if optimized else [],
        "time_ratio": ratios,
        "targets": targets,
    }


def model_settings(device: torch.device, **kwargs: Any) -> Settings:
    """Harness settings for networks: forward only, the whole-network tolerances."""
    return Settings(device=device, forward=True, backward=False, tolerances=TOLERANCE,
                    label=kwargs.pop("label", "models"), **kwargs)


def run_model_benchmark(models: Sequence[Workload], settings: Settings, *,
                        timer: Timer | None = None, progress: ProgressFn | None = None,
                        optimize: Optimizer | None = None,
                        environment: dict[str, Any] | None = None,
                        cases: Sequence[Case] | None = None,
                        on_document: Callable[[dict[str, Any]], None] | None = None) -> ModelRun:
    """Check, then time, each network: foveal (optimize()), PyTorch eager, torch.compile.

    `cases` and the checkpoints are the harness's (`run_benchmark`); `on_document` receives
    the result JSON so far after each network.
    """
    if settings.backward:
        raise ValueError("the model benchmark times inference: backward is not supported")
    adapter = ModelAdapter(settings, compile_skip=compile_skip_reason(settings),
                           optimize=optimize)

    def checkpoint(report: BenchReport) -> None:
        if on_document is not None:
            on_document(ModelRun(report, dict(adapter.optimized)).to_json())

    report = run_benchmark(models, settings, adapters={MODEL_OP: adapter}, timer=timer,
                           progress=progress, environment=environment, cases=cases,
                           checkpoint=checkpoint)
    adapter.release()
    return ModelRun(report, dict(adapter.optimized))
