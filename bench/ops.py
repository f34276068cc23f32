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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .workloads import Workload, WorkloadError

if TYPE_CHECKING:  # foveal.kernels loads only when an op runs
    from foveal.kernels.epilogue import Epilogue
    from foveal.kernels.geometry import ConvGeometry

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
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")  # what it runs
    differentiable: bool = True  # False: forward (inference) only; no backward cases

    def runs(self, dtype: str, backward: bool) -> bool:
        """Whether a (dtype, direction) case of this op exists at all."""
        return dtype in self.dtypes and (self.differentiable or not backward)

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
Shape = tuple[int, ...]
WeightShapes = dict[str, tuple[Shape, int]]  # argument name -> (shape, fan-in)


def _fail(workload: Workload, message: str) -> WorkloadError:
    return WorkloadError(f"workload {workload.name!r} ({workload.op}): {message}")


def _element_count(*shapes: Shape) -> int:
    return sum(math.prod(s) for s in shapes)


def _as_tuple(value: Any) -> Any:
    """TOML gives lists where PyTorch takes tuples; ints and strings ("same") pass through."""
    return value if isinstance(value, int | str) else tuple(value)


def _spatial_args(a: Mapping[str, Any]) -> dict[str, Any]:
    """stride, padding and dilation as PyTorch's convolution functions take them."""
    return {key: _as_tuple(a[key]) for key in ("stride", "padding", "dilation")}


def _positive_int(name: str, value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_activation(name: str, value: Any) -> None:
    """parse_activation's rule; the message names the argument when it is not `activation`."""
    from foveal.kernels.epilogue import parse_activation

    try:
        parse_activation(value)
    except (ValueError, TypeError) as err:
        raise type(err)(str(err) if name == "activation" else f"{name}: {err}") from None


def _activation(workload: Workload, name: str = "activation") -> Epilogue:
    """The workload's parsed activation (an Epilogue) for the PyTorch versions."""
    from foveal.kernels.epilogue import parse_activation

    return parse_activation(workload.args.get(name))


def _random(workload: Workload, dtype: torch.dtype, device: torch.device, *shape: int,
            scale: float = 1.0) -> torch.Tensor:
    """randn * scale; 4-D and 5-D tensors in the workload's layout (others stay contiguous)."""
    t = torch.randn(shape, device=device, dtype=dtype) * scale
    if workload.layout == "channels_last" and len(shape) in (4, 5):
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        t = t.to(memory_format=fmt)
    return t


class ConvAdapter(OpAdapter):
    """conv1d / conv2d / conv3d with the fused epilogue (bias, residual, activation).

    Depthwise layers are conv2d workloads with groups == in_channels: the kernels pick their
    direct kernel, and the report calls such a case memory-bound from its FLOPs and bytes, so
    it shows GB/s rather than FLOP/s.

    The other convolution-like ops subclass this one: they share its arguments and checks and
    describe their tensors through the `_weight_shapes` ... `_output_shape` hooks, from which
    `cost` and `make_inputs` follow.
    """

    FIELDS: Mapping[str, Any] = {
        "in_channels": REQUIRED, "out_channels": REQUIRED, "size": REQUIRED, "kernel": REQUIRED,
        "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True,
        "activation": None, "residual": False,
    }
    FLAGS: tuple[str, ...] = ("bias", "residual")  # arguments that must be true or false
    ACTIVATIONS: tuple[str, ...] = ("activation",)  # arguments that name an activation
    INPUT = "input"  # the op's name for its input tensor

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

    def _check_common(self, workload: Workload, a: Mapping[str, Any]) -> None:
        """The rules every convolution-like workload shares: layout, flags, activations."""
        if workload.layout == "channels_last" and self.spatial_dims == 1:
            raise _fail(workload, "layout channels_last needs a 2-D or 3-D convolution")
        for flag in self.FLAGS:
            if not isinstance(a[flag], bool):
                raise _fail(workload, f"{flag} must be true or false, got {a[flag]!r}")
        try:
            for name in self.ACTIVATIONS:
                _check_activation(name, a[name])
        except (ValueError, TypeError) as err:
            raise _fail(workload, str(err)) from None

    def geometry(self, workload: Workload) -> ConvGeometry:
        """The layer's ConvGeometry; every shape rule is the kernels' own (conv_geometry)."""
        return self._conv_geometry(workload, self._args(workload))

    def _conv_geometry(self, workload: Workload, a: Mapping[str, Any]) -> ConvGeometry:
        from foveal.kernels.geometry import conv_geometry, expand

        self._check_common(workload, a)
        n = self.spatial_dims
        try:
            size = expand(a["size"], n, "size", minimum=1)
            kernel = expand(a["kernel"], n, "kernel", minimum=1)
            for channels in ("in_channels", "out_channels"):
                _positive_int(channels, a[channels])
            groups = a["groups"]
            # conv_geometry names a bad `groups` before it looks at the weight's channels.
            weight_in = a["in_channels"] // groups if type(groups) is int and groups > 0 else 0
            return conv_geometry((workload.batch, a["in_channels"], *size),
                                 (a["out_channels"], weight_in, *kernel), a["stride"],
                                 _as_tuple(a["padding"]), a["dilation"], groups, n)
        except (ValueError, TypeError) as err:
            raise _fail(workload, str(err)) from None

    def check(self, workload: Workload) -> None:
        self.geometry(workload)

    # -- the op's tensors: cost and make_inputs follow from these ---------------------------
    def _weight_shapes(self, workload: Workload, g: ConvGeometry) -> WeightShapes:
        """Each weight's argument name, shape and fan-in (it is drawn at fan_in ** -0.5, so
        outputs stay near unit scale: no fp16 overflow)."""
        return {"weight": (g.weight_shape, g.in_per_group * g.taps)}

    def _operand_shapes(self, workload: Workload, g: ConvGeometry) -> list[Shape]:
        """Shapes of the differentiable inputs other than input, bias and residual."""
        return [shape for shape, _ in self._weight_shapes(workload, g).values()]

    def _bias_shapes(self, workload: Workload, g: ConvGeometry) -> dict[str, Shape]:
        return {"bias": (g.out_channels,)}

    def _output_shape(self, workload: Workload, g: ConvGeometry) -> Shape:
        return g.output_shape

    def _flops(self, workload: Workload, g: ConvGeometry) -> int:
        return g.flops()

    def cost(self, workload: Workload, dtype: torch.dtype, backward: bool) -> Cost:
        g = self.geometry(workload)
        a = self._args(workload)
        itemsize = torch.empty((), dtype=dtype).element_size()
        x = _element_count((g.batch, g.in_channels, *g.input_size))
        operands = x + _element_count(*self._operand_shapes(workload, g))
        y = _element_count(self._output_shape(workload, g))
        bias = _element_count(*self._bias_shapes(workload, g).values()) if a["bias"] else 0
        flops = self._flops(workload, g)
        if not backward:
            elements = operands + y + bias + (y if a["residual"] else 0)
            return Cost(flops, elements * itemsize)
        # dgrad and wgrad each do the forward's multiply-adds. Reads dy, the operands (and the
        # saved output for the activation's derivative); writes their gradients and db.
        elements = y + 2 * operands + bias + (y if a["activation"] else 0)
        return Cost(2 * flops, elements * itemsize)

    def make_inputs(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> Inputs:
        g = self.geometry(workload)
        a = self._args(workload)
        inputs = {self.INPUT: _random(workload, dtype, device, g.batch, g.in_channels,
                                      *g.input_size)}
        for name, (shape, fan_in) in self._weight_shapes(workload, g).items():
            inputs[name] = _random(workload, dtype, device, *shape, scale=fan_in ** -0.5)
        if a["bias"]:
            for name, shape in self._bias_shapes(workload, g).items():
                inputs[name] = _random(workload, dtype, device, *shape, scale=0.1)
        if a["residual"]:
            inputs["residual"] = _random(workload, dtype, device,
                                         *self._output_shape(workload, g))
        return inputs

    # -- the op, three ways ------------------------------------------------------------------
    def _call_args(self, workload: Workload) -> dict[str, Any]:
        a = self._args(workload)
        return {**_spatial_args(a), "groups": a["groups"]}

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        import foveal.kernels as fk

        conv = getattr(fk, self.name)
        return conv(inputs["input"], inputs["weight"], inputs.get("bias"),
                    **self._call_args(workload), activation=workload.args.get("activation"),
                    residual=inputs.get("residual"))

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        conv = getattr(F, self.name)
        y = conv(inputs["input"], inputs["weight"], inputs.get("bias"),
                 **self._call_args(workload))
        return self._epilogue(workload, y, inputs)

    @staticmethod
    def _epilogue(workload: Workload, y: torch.Tensor, inputs: Inputs,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
        """The bias (when the convolution did not add it), the residual add and the
        activation as separate PyTorch ops."""
        from foveal.kernels.epilogue import apply_epilogue

        return apply_epilogue(y, bias, inputs.get("residual"), _activation(workload))


class ConvTransposeAdapter(ConvAdapter):
    """conv_transpose1d / 2d / 3d with the fused epilogue; weight (C_in, C_out/groups, k...)."""

    FIELDS: Mapping[str, Any] = {**ConvAdapter.FIELDS, "output_padding": 0}

    def __init__(self, spatial_dims: int):
        super().__init__(spatial_dims)
        self.name = f"conv_transpose{spatial_dims}d"

    def geometry(self, workload: Workload) -> ConvGeometry:
        """The layer's ConvGeometry from the kernels' own transposed_conv_geometry."""
        from foveal.kernels.geometry import expand, transposed_conv_geometry

        a = self._args(workload)
        self._check_common(workload, a)
        n = self.spatial_dims
        try:
            size = expand(a["size"], n, "size", minimum=1)
            kernel = expand(a["kernel"], n, "kernel", minimum=1)
            groups = a["groups"]
            if type(groups) is not int or groups < 1 or a["out_channels"] % groups:
                raise ValueError(f"groups must be a positive int dividing out_channels, got "
                                 f"{groups!r}")
            return transposed_conv_geometry(
                (workload.batch, a["in_channels"], *size),
                (a["in_channels"], a["out_channels"] // groups, *kernel), a["stride"],
                _as_tuple(a["padding"]), _as_tuple(a["output_padding"]), groups, a["dilation"],
                n)
        except (ValueError, TypeError) as err:
            raise _fail(workload, str(err)) from None

    def _call_args(self, workload: Workload) -> dict[str, Any]:
        a = self._args(workload)
        return {**super()._call_args(workload), "output_padding": _as_tuple(a["output_padding"])}


class DepthwiseSeparableAdapter(ConvAdapter):
    """depthwise_separable_conv2d: depthwise kxk (groups = in_channels), mid activation, 1x1 to
    out_channels with the fused epilogue; one foveal kernel against PyTorch's two convolutions.

    The unfused pair also writes and re-reads the intermediate; bytes count only the fused op's
    own tensors (docs/depthwise.md). `bias` gives both convolutions one (BatchNorm folded).
    """

    FIELDS: Mapping[str, Any] = {
        **{k: v for k, v in ConvAdapter.FIELDS.items() if k != "groups"},
        "mid_activation": None,
    }
    ACTIVATIONS = ("mid_activation", "activation")
    INPUT = "x"

    def __init__(self) -> None:
        super().__init__(2)
        self.name = "depthwise_separable_conv2d"

    def geometry(self, workload: Workload) -> ConvGeometry:
        """The depthwise stage's ConvGeometry (its output size is the op's)."""
        a = self._args(workload)
        try:
            _positive_int("out_channels", a["out_channels"])
        except ValueError as err:
            raise _fail(workload, str(err)) from None
        return self._conv_geometry(workload, {**a, "out_channels": a["in_channels"],
                                              "groups": a["in_channels"]})

    def _weight_shapes(self, workload: Workload, g: ConvGeometry) -> WeightShapes:
        c_out = workload.args["out_channels"]
        return {"dw_weight": (g.weight_shape, g.taps),
                "pw_weight": ((c_out, g.in_channels, 1, 1), g.in_channels)}

    def _bias_shapes(self, workload: Workload, g: ConvGeometry) -> dict[str, Shape]:
        return {"dw_bias": (g.in_channels,), "pw_bias": (workload.args["out_channels"],)}

    def _output_shape(self, workload: Workload, g: ConvGeometry) -> Shape:
        return (g.batch, workload.args["out_channels"], *g.output_size)

    def _flops(self, workload: Workload, g: ConvGeometry) -> int:
        pointwise = math.prod(self._output_shape(workload, g)) * g.in_channels
        return g.flops() + 2 * pointwise

    def _call_args(self, workload: Workload) -> dict[str, Any]:
        return _spatial_args(self._args(workload))

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        import foveal.kernels as fk

        return fk.depthwise_separable_conv2d(
            inputs["x"], inputs["dw_weight"], inputs["pw_weight"], inputs.get("dw_bias"),
            inputs.get("pw_bias"), **self._call_args(workload),
            mid_activation=workload.args.get("mid_activation"),
            activation=workload.args.get("activation"), residual=inputs.get("residual"))

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        from foveal.kernels.epilogue import activate

        x = inputs["x"]
        mid = F.conv2d(x, inputs["dw_weight"], inputs.get("dw_bias"),
                       **self._call_args(workload), groups=x.shape[1])
        mid = activate(mid, _activation(workload, "mid_activation"))
        y = F.conv2d(mid, inputs["pw_weight"], inputs.get("pw_bias"))
        return self._epilogue(workload, y, inputs)


class SeparableAdapter(ConvAdapter):
    """separable_conv2d: a (grouped) kH x 1 convolution then a per-channel 1 x kW one, i.e.
    conv2d with the rank-1 filter weight_col * weight_row; the arguments are that conv2d's.

    Baselines: PyTorch's two convolutions ("pytorch"), and the full kH x kW filter in one
    F.conv2d ("conv2d kxk", what the separable form saves; forming the filter is included,
    a few KiB)."""

    FULL_FILTER = "conv2d kxk"

    def __init__(self) -> None:
        super().__init__(2)
        self.name = "separable_conv2d"

    def _weight_shapes(self, workload: Workload, g: ConvGeometry) -> WeightShapes:
        (k_h, k_w), c_out = g.kernel_size, g.out_channels
        return {"weight_col": ((c_out, g.in_per_group, k_h, 1), g.in_per_group * k_h),
                "weight_row": ((c_out, 1, 1, k_w), k_w)}

    def _flops(self, workload: Workload, g: ConvGeometry) -> int:
        (k_h, k_w), (h_out, w_out) = g.kernel_size, g.output_size
        # The column pass keeps the input's width: its output is (N, C_out, H_out, W).
        column = g.batch * g.out_channels * h_out * g.input_size[1] * g.in_per_group * k_h
        row = g.batch * g.out_channels * h_out * w_out * k_w
        return 2 * (column + row)

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        import foveal.kernels as fk

        return fk.separable_conv2d(inputs["input"], inputs["weight_col"], inputs["weight_row"],
                                   inputs.get("bias"), **self._call_args(workload),
                                   activation=workload.args.get("activation"),
                                   residual=inputs.get("residual"))

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        from foveal.kernels.geometry import expand

        c = self._call_args(workload)
        stride_h, stride_w = expand(c["stride"], 2, "stride")
        dilation_h, dilation_w = expand(c["dilation"], 2, "dilation")
        if isinstance(c["padding"], str):  # "same" / "valid" mean the same for each pass
            pad_col = pad_row = c["padding"]
        else:
            pad_h, pad_w = expand(c["padding"], 2, "padding")
            pad_col, pad_row = (pad_h, 0), (0, pad_w)
        row = inputs["weight_row"]
        y = F.conv2d(inputs["input"], inputs["weight_col"], None, (stride_h, 1), pad_col,
                     (dilation_h, 1), c["groups"])
        y = F.conv2d(y, row, inputs.get("bias"), (1, stride_w), pad_row, (1, dilation_w),
                     row.shape[0])
        return self._epilogue(workload, y, inputs)

    def baselines(self, workload: Workload) -> dict[str, OpFunction]:
        def full_filter(inputs: Inputs) -> torch.Tensor:
            weight = inputs["weight_col"] * inputs["weight_row"]
            y = F.conv2d(inputs["input"], weight, inputs.get("bias"),
                         **self._call_args(workload))
            return self._epilogue(workload, y, inputs)

        return {self.FULL_FILTER: full_filter}


class LocalConvAdapter(ConvAdapter):
    """local_conv2d: a locally connected (unshared) conv2d, one filter per output position;
    weight (H_out, W_out, C_out, C_in/groups, kH, kW). Bound by reading that weight.

    PyTorch has no such op: the baseline is what a user writes, F.unfold then one einsum over
    the positions; torch.compile traces it whole (one graph), so --compile is a meaningful
    baseline too. Optional `weight_size` [H_out, W_out] is the weight's grid as the model
    defines it, checked against the output size (the weight fixes the layer's input size).
    """

    FIELDS: Mapping[str, Any] = {**ConvAdapter.FIELDS, "weight_size": None}

    def __init__(self) -> None:
        super().__init__(2)
        self.name = "local_conv2d"

    def geometry(self, workload: Workload) -> ConvGeometry:
        from foveal.kernels.geometry import expand

        a = self._args(workload)
        g = self._conv_geometry(workload, a)
        try:
            # F.unfold, the baseline's im2col, takes no "same"/"valid".
            expand(a["padding"], 2, "padding", minimum=0)
            if a["weight_size"] is not None and expand(a["weight_size"], 2, "weight_size",
                                                       minimum=1) != g.output_size:
                raise ValueError(f"weight_size {a['weight_size']!r} (the weight's H_out, W_out) "
                                 f"must equal the output size {g.output_size} of this input "
                                 "size, kernel, stride, padding and dilation")
        except (ValueError, TypeError) as err:
            raise _fail(workload, str(err)) from None
        return g

    def _weight_shapes(self, workload: Workload, g: ConvGeometry) -> WeightShapes:
        return {"weight": ((*g.output_size, *g.weight_shape), g.in_per_group * g.taps)}

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        g = self.geometry(workload)
        c = self._call_args(workload)
        (h_out, w_out), groups = g.output_size, g.groups
        columns = F.unfold(inputs["input"], g.kernel_size, c["dilation"], c["padding"],
                           c["stride"])  # (N, C_in * kH * kW, H_out * W_out), channel-major
        columns = columns.reshape(g.batch, groups, g.in_per_group * g.taps, h_out, w_out)
        weight = inputs["weight"].reshape(h_out, w_out, groups, g.out_per_group,
                                          g.in_per_group * g.taps)
        y = torch.einsum("ngkhw,hwgok->ngohw", columns, weight).reshape(g.output_shape)
        return self._epilogue(workload, y, inputs, bias=inputs.get("bias"))


class DeformAdapter(ConvAdapter):
    """deform_conv2d (DCNv1 offsets; `mask = true`: DCNv2 modulation) against
    torchvision.ops.deform_conv2d, which is also the float64 reference.

    Offsets are 2 * randn pixels (a pixel or two; some taps land outside the image, where
    the input reads as zero), the mask sigmoid(randn). torchvision's kernels compute sampling
    positions in the input's dtype: in fp16 that gives a relative error of ~2e-2 on a 64x64
    map (measured on its CPU kernel), above the fp16 tolerance; and it has no bf16 kernel. So
    in both the baseline computes in fp32 and casts back, as torchvision's own autocast rule
    does. FLOPs are the dense convolution's (docs/deform.md).
    """

    FIELDS: Mapping[str, Any] = {**ConvAdapter.FIELDS, "offset_groups": 1, "mask": False}
    FLAGS = (*ConvAdapter.FLAGS, "mask")
    OFFSET_SCALE = 2.0  # pixels (standard deviation)
    compiles = False  # torchvision's op is opaque to torch.compile: it would time itself

    def __init__(self) -> None:
        super().__init__(2)
        self.name = "deform_conv2d"

    def geometry(self, workload: Workload) -> ConvGeometry:
        """The convolution's geometry, then the kernels' own offset and mask rules."""
        from foveal.kernels.deform import deform_geometry

        a = self._args(workload)
        g = self._conv_geometry(workload, a)
        try:
            _positive_int("offset_groups", a["offset_groups"])
            shapes = self._per_position_shapes(workload, g)
            deform_geometry((g.batch, g.in_channels, *g.input_size), shapes["offset"],
                            g.weight_shape, shapes.get("mask"), a["stride"],
                            _as_tuple(a["padding"]), a["dilation"])
        except (ValueError, TypeError) as err:
            raise _fail(workload, str(err)) from None
        return g

    def _per_position_shapes(self, workload: Workload, g: ConvGeometry) -> dict[str, Shape]:
        """offset (N, 2 * G * kH * kW, H_out, W_out) and, with `mask`, mask (N, G * kH * kW,
        H_out, W_out), G the offset groups."""
        a = self._args(workload)
        taps = a["offset_groups"] * g.taps
        shapes = {"offset": (g.batch, 2 * taps, *g.output_size)}
        if a["mask"]:
            shapes["mask"] = (g.batch, taps, *g.output_size)
        return shapes

    def _operand_shapes(self, workload: Workload, g: ConvGeometry) -> list[Shape]:
        return [*super()._operand_shapes(workload, g),
                *self._per_position_shapes(workload, g).values()]

    def make_inputs(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> Inputs:
        inputs = super().make_inputs(workload, dtype, device)
        shapes = self._per_position_shapes(workload, self.geometry(workload))
        inputs["offset"] = _random(workload, dtype, device, *shapes["offset"],
                                   scale=self.OFFSET_SCALE)
        if "mask" in shapes:
            inputs["mask"] = torch.sigmoid(_random(workload, dtype, device, *shapes["mask"]))
        return inputs

    def _call_args(self, workload: Workload) -> dict[str, Any]:
        return _spatial_args(self._args(workload))  # groups: from the weight's shape

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        import foveal.kernels as fk

        return fk.deform_conv2d(inputs["input"], inputs["offset"], inputs["weight"],
                                inputs.get("bias"), **self._call_args(workload),
                                mask=inputs.get("mask"),
                                activation=workload.args.get("activation"),
                                residual=inputs.get("residual"))

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        deform_conv2d = self._torchvision(workload)
        dtype = inputs["input"].dtype
        names = ("input", "offset", "weight", "bias", "mask")
        tensors = {k: inputs[k] for k in names if k in inputs}
        if dtype in (torch.float16, torch.bfloat16):
            tensors = {k: t.float() for k, t in tensors.items()}
        y = deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"],
                          tensors.get("bias"), **self._call_args(workload),
                          mask=tensors.get("mask"))
        return self._epilogue(workload, y.to(dtype), inputs)

    @staticmethod
    def _torchvision(workload: Workload) -> Callable[..., torch.Tensor]:
        """torchvision.ops.deform_conv2d, imported only when a deform workload runs."""
        try:
            from torchvision.ops import deform_conv2d
        except ImportError:
            raise _fail(workload, "the baseline and reference are torchvision.ops.deform_conv2d"
                                  " and torchvision is not installed (pip install torchvision)"
                        ) from None
        return deform_conv2d


class _Fp8Mixin:
    """FP8 inference ops (FP8 operands, output float16) against the same layer in float16.

    Inputs are drawn in float16 and quantized as a model would (`quantize_fp8` per tensor,
    `quantize_weight_fp8` per output channel). The float16 baselines, run by the float16 op's
    own adapter (`fp16`), get the dequantized operands: "pytorch" is cuDNN in float16,
    FOVEAL_FP16 foveal's float16 kernel. The reference is the float16 op's in float64 on the
    dequantized operands; where the FP8 op also rounds an activation it makes itself (the
    depthwise-separable block's intermediate) that rounding is its own error, within the FP8
    tolerance (harness.TOLERANCE). Case dtype: float8_e4m3fn; forward only.
    """

    dtypes = ("float8_e4m3fn",)
    differentiable = False
    OUT_DTYPE = torch.float16
    FOVEAL_FP16 = "foveal fp16"
    FP8_OPERANDS: tuple[str, ...] = ()  # the op's one-byte tensors, by argument name
    fp16: ConvAdapter

    def cost(self, workload: Workload, dtype: torch.dtype, backward: bool) -> Cost:
        """The float16 op's, less one byte per element of the FP8 operands."""
        fp16 = self.fp16.cost(workload, self.OUT_DTYPE, backward)
        inputs = self.fp16.make_inputs(workload, self.OUT_DTYPE, torch.device("meta"))
        return Cost(fp16.flops, fp16.bytes - sum(inputs[n].numel() for n in self.FP8_OPERANDS))

    def make_inputs(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> Inputs:
        """The float16 op's inputs with the FP8 operands and their scales; the float16
        baselines' dequantized copies under the same names with FP16_SUFFIX."""
        from foveal.kernels import quantize_fp8, quantize_weight_fp8

        inputs = self.fp16.make_inputs(workload, self.OUT_DTYPE, device)
        for name in self.FP8_OPERANDS:
            quantize = quantize_fp8 if name == self.fp16.INPUT else quantize_weight_fp8
            inputs[name], inputs[name + "_scale"] = quantize(inputs[name])
            inputs[name + FP16_SUFFIX] = self._dequantized(inputs, name).to(self.OUT_DTYPE)
        return inputs

    def _fp16_inputs(self, inputs: Inputs) -> Inputs:
        return {**inputs, **{n: inputs[n + FP16_SUFFIX] for n in self.FP8_OPERANDS}}

    @staticmethod
    def _dequantized(inputs: Inputs, name: str) -> torch.Tensor:
        """inputs[name] times its scale (per tensor, or per output channel: along dim 0), in
        float32 or, for float64 inputs, float64."""
        q, scale = inputs[name], inputs[name + "_scale"]
        dtype = torch.float64 if scale.dtype == torch.float64 else torch.float32
        if scale.dim():
            scale = scale.reshape(-1, *[1] * (q.dim() - 1))
        return q.to(dtype) * scale.to(dtype)

    def eager(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        return self.fp16.eager(workload, self._fp16_inputs(inputs))

    def reference(self, workload: Workload, inputs64: Inputs) -> torch.Tensor:
        exact = {n: self._dequantized(inputs64, n) for n in self.FP8_OPERANDS}
        return self.fp16.eager(workload, {**inputs64, **exact})

    def baselines(self, workload: Workload) -> dict[str, OpFunction]:
        return {self.FOVEAL_FP16: lambda inputs: self.fp16.foveal(workload,
                                                                  self._fp16_inputs(inputs))}


FP16_SUFFIX = "_fp16"


class ConvFp8Adapter(_Fp8Mixin, ConvAdapter):
    """conv2d_fp8 / conv3d_fp8: FP8 input and weight with the fused epilogue, output float16.

    One more baseline, QUANTIZE_TOO: the FP8 op plus the quantization of its float16 input
    (the separate pass a model makes before each FP8 convolution)."""

    FP8_OPERANDS = ("input", "weight")
    QUANTIZE_TOO = "fp8 + quantize"

    def __init__(self, spatial_dims: int):
        super().__init__(spatial_dims)
        self.fp16 = ConvAdapter(spatial_dims)
        self.name = f"conv{spatial_dims}d_fp8"

    def check(self, workload: Workload) -> None:
        if self.geometry(workload).in_per_group == 1:
            raise _fail(workload, "depthwise layers (groups == in_channels) have no FP8 path")

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        import foveal.kernels as fk

        op = getattr(fk, self.name)
        return op(inputs["input"], inputs["input_scale"], inputs["weight"],
                  inputs["weight_scale"], inputs.get("bias"), **self._call_args(workload),
                  activation=workload.args.get("activation"), residual=inputs.get("residual"),
                  out_dtype=self.OUT_DTYPE)

    def baselines(self, workload: Workload) -> dict[str, OpFunction]:
        from foveal.kernels import quantize_fp8

        def quantize_too(inputs: Inputs) -> torch.Tensor:
            x8, _ = quantize_fp8(inputs["input" + FP16_SUFFIX], inputs["input_scale"])
            return self.foveal(workload, {**inputs, "input": x8})

        return {**super().baselines(workload), self.QUANTIZE_TOO: quantize_too}


class DepthwiseSeparableFp8Adapter(_Fp8Mixin, DepthwiseSeparableAdapter):
    """depthwise_separable_conv2d_fp8: the depthwise stage in float16, its on-chip intermediate
    quantized with a calibrated scale (the amax of these inputs' intermediate) and the 1x1 in
    FP8, output float16."""

    FP8_OPERANDS = ("pw_weight",)

    def __init__(self) -> None:
        super().__init__()
        self.fp16 = DepthwiseSeparableAdapter()
        self.name = "depthwise_separable_conv2d_fp8"

    def make_inputs(self, workload: Workload, dtype: torch.dtype,
                    device: torch.device) -> Inputs:
        from foveal.kernels.epilogue import activate
        from foveal.kernels.quantize import scale_from_amax

        inputs = super().make_inputs(workload, dtype, device)
        x, bias = inputs["x"], inputs.get("dw_bias")
        mid = F.conv2d(x.float(), inputs["dw_weight"].float(),
                       None if bias is None else bias.float(), **self._call_args(workload),
                       groups=x.shape[1])
        mid = activate(mid, _activation(workload, "mid_activation"))
        inputs["mid_scale"] = scale_from_amax(torch.linalg.vector_norm(mid, ord=math.inf))
        return inputs

    def foveal(self, workload: Workload, inputs: Inputs) -> torch.Tensor:
        import foveal.kernels as fk

        return fk.depthwise_separable_conv2d_fp8(
            inputs["x"], inputs["dw_weight"], inputs["pw_weight"], inputs["pw_weight_scale"],
            inputs["mid_scale"], inputs.get("dw_bias"), inputs.get("pw_bias"),
            **self._call_args(workload), mid_activation=workload.args.get("mid_activation"),
            activation=workload.args.get("activation"), residual=inputs.get("residual"),
            out_dtype=self.OUT_DTYPE)


def _registry(*adapters: OpAdapter) -> dict[str, OpAdapter]:
    return {a.name: a for a in adapters}


# op name (as written in workloads.toml) -> adapter. New ops register here.
ADAPTERS: dict[str, OpAdapter] = _registry(
    ConvAdapter(1), ConvAdapter(2), ConvAdapter(3),
    ConvTransposeAdapter(1), ConvTransposeAdapter(2), ConvTransposeAdapter(3),
    DepthwiseSeparableAdapter(), SeparableAdapter(), LocalConvAdapter(), DeformAdapter(),
    ConvFp8Adapter(2), ConvFp8Adapter(3), DepthwiseSeparableFp8Adapter())
