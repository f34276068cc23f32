"""Op adapters: everything the harness needs to know about one op, in one class.

The harness is op-agnostic. For each workload it asks the op's adapter to check the arguments,
count FLOPs and bytes, build inputs, and run the op three ways: foveal, PyTorch eager (the same
epilogue as separate ops, as a PyTorch user would write it) and a float64 reference. Adding an
op to the benchmark is one `OpAdapter` subclass registered in `ADAPTERS`, plus workload entries
in workloads.toml (see bench/README.md for the contract).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .workloads import Workload, WorkloadError

Inputs = dict[str, torch.Tensor]
OpFunction = Callable[[Inputs], torch.Tensor]


@dataclass(frozen=True)
class Cost:
    """Work of one call: FLOPs done and the fewest bytes moved (each tensor touched once)."""

    flops: int
    bytes: int


class OpAdapter:
    """How to benchmark one op. Subclasses override the methods that raise below.

    `inputs` dicts map argument names to tensors; every floating tensor in it is a leaf whose
    gradient is checked and timed with --backward.
    """

    name: str = ""
    compiles: bool = True  # whether torch.compile of `eager` is a meaningful baseline

    def check(self, workload: Workload) -> None:
        """Raise WorkloadError naming the workload and argument when the arguments are invalid."""
        raise NotImplementedError

    def cost(self, workload: Workload, dtype: torch.dtype, backward: bool) -> Cost:
        raise NotImplementedError

    def make_inputs(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> Inputs:
        """Fresh random inputs (never zeros: they hide unwritten outputs and run faster)."""
        raise NotImplementedError

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        raise NotImplementedError

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        """PyTorch's own ops, epilogue as separate ops: the baseline a user would write."""
        raise NotImplementedError

    def reference(self, workload: Workload, inputs64: Inputs) -> torch.Tensor:
        """The float64 result the others are checked against (default: `eager` in float64)."""
        return self.eager(workload, inputs64)

    def baselines(self, workload: Workload) -> dict[str, OpFunction]:
        """Other implementations to time, e.g. {"torchvision": ...}; none by default."""
        return {}


REQUIRED = object()  # marks an adapter argument without a default


def _fail(workload: Workload, message: str) -> WorkloadError:
    return WorkloadError(f"workload {workload.name!r} ({workload.op}): {message}")


def _element_count(*shapes: tuple[int, ...]) -> int:
    return sum(math.prod(s) for s in shapes)


class ConvAdapter(OpAdapter):
    """conv1d / conv2d / conv3d with the fused epilogue (bias, residual, activation)."""

    FIELDS: Mapping[str, Any] = {
        "in_channels": REQUIRED, "out_channels": REQUIRED, "size": REQUIRED, "kernel": REQUIRED,
        "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True,
        "activation": None, "residual": False,
    }

    def __init__(self, spatial_dims: int):
        self.spatial_dims = spatial_dims
        self.name = f"conv{spatial_dims}d"

    def _args(self, workload: Workload) -> dict[str, Any]:
        unknown = set(workload.args) - set(self.FIELDS)
        if unknown:
            raise _fail(workload, f"unknown argument(s) {sorted(unknown)}; {self.name} takes "
                                  f"{sorted(self.FIELDS)}")
        missing = [k for k, v in self.FIELDS.items() if v is REQUIRED and k not in workload.args]
        if missing:
            raise _fail(workload, f"missing argument(s) {missing}")
        return {**self.FIELDS, **workload.args}

    def geometry(self, workload: Workload):
        """The layer's ConvGeometry; every shape rule is the kernels' own (conv_geometry)."""
        from foveal.kernels.epilogue import parse_activation
        from foveal.kernels.geometry import conv_geometry, expand

        a = self._args(workload)
        n = self.spatial_dims
        if workload.layout == "channels_last" and n == 1:
            raise _fail(workload, "layout channels_last needs a 2-D or 3-D convolution")
        for flag in ("bias", "residual"):
            if not isinstance(a[flag], bool):
                raise _fail(workload, f"{flag} must be true or false, got {a[flag]!r}")
        try:
            parse_activation(a["activation"])
            size = expand(a["size"], n, "size", minimum=1)
            kernel = expand(a["kernel"], n, "kernel", minimum=1)
            for channels in ("in_channels", "out_channels"):
                if type(a[channels]) is not int or a[channels] < 1:
                    raise ValueError(f"{channels} must be a positive integer, got "
                                     f"{a[channels]!r}")
            groups = a["groups"]
            # conv_geometry names a bad `groups` before it looks at the weight's channels.
            weight_in = a["in_channels"] // groups if type(groups) is int and groups > 0 else 0
            padding = a["padding"] if isinstance(a["padding"], str | int) else tuple(a["padding"])
            return conv_geometry((workload.batch, a["in_channels"], *size),
                                 (a["out_channels"], weight_in, *kernel), a["stride"], padding,
                                 a["dilation"], groups, n)
        except (ValueError, TypeError) as err:
            raise _fail(workload, str(err)) from None

    def check(self, workload: Workload) -> None:
        self.geometry(workload)

    def cost(self, workload: Workload, dtype: torch.dtype, backward: bool) -> Cost:
        g = self.geometry(workload)
        a = self._args(workload)
        itemsize = torch.empty((), dtype=dtype).element_size()
        x = _element_count((g.batch, g.in_channels, *g.input_size))
        w = _element_count(g.weight_shape)
        y = _element_count(g.output_shape)
        bias = g.out_channels if a["bias"] else 0
        if not backward:
            elements = x + w + y + bias + (y if a["residual"] else 0)
            return Cost(g.flops(), elements * itemsize)
        # dgrad and wgrad each do the forward's multiply-adds. Reads dy, x, w (and the saved
        # output for the activation's derivative); writes dx, dw, db.
        elements = y + 2 * x + 2 * w + bias + (y if a["activation"] else 0)
        return Cost(2 * g.flops(), elements * itemsize)

    def make_inputs(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> Inputs:
        g = self.geometry(workload)
        a = self._args(workload)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            t = torch.randn(shape, device=device, dtype=dtype) * scale
            if workload.layout == "channels_last":
                fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
                t = t.to(memory_format=fmt)
            return t

        fan_in = g.in_per_group * g.taps  # unit-scale outputs: no fp16 overflow
        inputs = {"input": randn(g.batch, g.in_channels, *g.input_size),
                  "weight": randn(*g.weight_shape, scale=fan_in ** -0.5)}
        if a["bias"]:
            inputs["bias"] = torch.randn(g.out_channels, device=device, dtype=dtype) * 0.1
        if a["residual"]:
            inputs["residual"] = randn(*g.output_shape)
        return inputs

    def _call_args(self, workload: Workload) -> dict[str, Any]:
        a = self._args(workload)
        padding = a["padding"] if isinstance(a["padding"], str | int) else tuple(a["padding"])
        as_tuple = lambda v: v if isinstance(v, int) else tuple(v)
        return {"stride": as_tuple(a["stride"]), "padding": padding,
                "dilation": as_tuple(a["dilation"]), "groups": a["groups"]}

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        import foveal.kernels as fk

        conv = getattr(fk, self.name)
        return conv(inputs["input"], inputs["weight"], inputs.get("bias"),
                    **self._call_args(workload), activation=workload.args.get("activation"),
                    residual=inputs.get("residual"))

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        from foveal.kernels.epilogue import apply_epilogue, parse_activation

        conv = getattr(F, self.name)
        y = conv(inputs["input"], inputs["weight"], inputs.get("bias"),
                 **self._call_args(workload))
        return apply_epilogue(y, None, inputs.get("residual"),
                              parse_activation(workload.args.get("activation")))


class ConvTransposeAdapter(ConvAdapter):
    """conv_transpose1d / 2d / 3d with the fused epilogue; weight (C_in, C_out/groups, k...)."""

    FIELDS: Mapping[str, Any] = {**ConvAdapter.FIELDS, "output_padding": 0}

    def __init__(self, spatial_dims: int):
        super().__init__(spatial_dims)
        self.name = f"conv_transpose{spatial_dims}d"

    def geometry(self, workload: Workload):
        """The layer's ConvGeometry from the kernels' own transposed_conv_geometry."""
        from foveal.kernels.epilogue import parse_activation
        from foveal.kernels.geometry import expand, transposed_conv_geometry

        a = self._args(workload)
        n = self.spatial_dims
        if workload.layout == "channels_last" and n == 1:
            raise _fail(workload, "layout channels_last needs a 2-D or 3-D convolution")
        try:
            parse_activation(a["activation"])
            size = expand(a["size"], n, "size", minimum=1)
            kernel = expand(a["kernel"], n, "kernel", minimum=1)
            groups = a["groups"]
            if type(groups) is not int or groups < 1 or a["out_channels"] % groups:
                raise ValueError(f"groups must be a positive int dividing out_channels, got "
                                 f"{groups!r}")
            as_tuple = lambda v: v if isinstance(v, int) else tuple(v)
            return transposed_conv_geometry(
                (workload.batch, a["in_channels"], *size),
                (a["in_channels"], a["out_channels"] // groups, *kernel), a["stride"],
                as_tuple(a["padding"]), as_tuple(a["output_padding"]), groups, a["dilation"], n)
        except (ValueError, TypeError) as err:
            raise _fail(workload, str(err)) from None

    def _call_args(self, workload: Workload) -> dict[str, Any]:
        a = self._args(workload)
        as_tuple = lambda v: v if isinstance(v, int) else tuple(v)
        return {**super()._call_args(workload), "padding": as_tuple(a["padding"]),
                "output_padding": as_tuple(a["output_padding"])}


def _registry(*adapters: OpAdapter) -> dict[str, OpAdapter]:
    return {a.name: a for a in adapters}


# op name (as written in workloads.toml) -> adapter. New ops register here.
ADAPTERS: dict[str, OpAdapter] = _registry(
    ConvAdapter(1), ConvAdapter(2), ConvAdapter(3),
    ConvTransposeAdapter(1), ConvTransposeAdapter(2), ConvTransposeAdapter(3))
