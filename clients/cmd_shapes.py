"""`foveal shapes`: a layer's output size, parameters, FLOPs and bytes, and tiling advice."""

from __future__ import annotations

import argparse
import math

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
_AXES = {1: "W", 2: "HW", 3: "DHW"}


def _dims(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 227x227x3, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be non-negative, got {text!r}")
    return values


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shapes", help="output size, parameters, FLOPs and bytes of a conv layer",
        description="Describe a convolution layer: output size, parameter count, FLOPs, bytes "
                    "moved, and whether its windows tile the input evenly. Example (AlexNet's "
                    "first layer): foveal shapes --input 227x227x3 --filters 96 --kernel 11 "
                    "--stride 4")
    p.add_argument("--input", type=_dims, required=True,
                   help="input size, channels last: WxC, HxWxC or DxHxWxC (e.g. 227x227x3)")
    p.add_argument("--filters", type=int, required=True, help="output channels")
    p.add_argument("--kernel", type=_dims, required=True, help="kernel size, e.g. 11 or 3x7x7")
    p.add_argument("--stride", type=_dims, default=(1,))
    p.add_argument("--padding", default="0", help="int, AxB, 'same' or 'valid'")
    p.add_argument("--dilation", type=_dims, default=(1,))
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--transposed", action="store_true", help="a transposed convolution")
    p.add_argument("--output-padding", type=_dims, default=(0,))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--dtype", choices=sorted(_DTYPE_BYTES), default="float32")
    p.set_defaults(func=run)


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _x(values) -> str:
    return "x".join(str(v) for v in values)


def run(args: argparse.Namespace) -> int:
    from foveal.kernels.geometry import (
        ConvGeometry,
        expand,
        output_shape,
        resolve_padding,
        tiling_advice,
    )

    *size, channels = args.input
    n = len(size)
    if n not in _AXES:
        raise SystemExit("foveal shapes: --input needs 1 to 3 spatial sizes and channels last, "
                         f"got {_x(args.input)}")
    padding = args.padding if args.padding in ("same", "valid") else _dims(args.padding)
    try:
        kernel = expand(args.kernel, n, "kernel", minimum=1)
        stride = expand(args.stride, n, "stride", minimum=1)
        dilation = expand(args.dilation, n, "dilation", minimum=1)
        if channels % args.groups or args.filters % args.groups:
            raise ValueError(f"channels ({channels}) and filters ({args.filters}) must both be "
                             f"divisible by groups ({args.groups})")
        out = output_shape(size, kernel, stride, padding, dilation, transposed=args.transposed,
                           output_padding=args.output_padding)
        pad_before, _ = ((expand(padding, n, "padding"),) * 2 if args.transposed
                         else resolve_padding(padding, kernel, stride, dilation))
    except (ValueError, TypeError) as err:
        raise SystemExit(f"foveal shapes: {err}") from None
    if any(o < 1 for o in out):
        raise SystemExit(f"foveal shapes: the kernel does not fit: output would be {_x(out)}")

    geometry = ConvGeometry(batch=args.batch, in_channels=channels, out_channels=args.filters,
                            groups=args.groups, input_size=tuple(size), kernel_size=kernel,
                            stride=stride, padding=pad_before, dilation=dilation,
                            output_size=out, transposed=args.transposed)
    itemsize = _DTYPE_BYTES[args.dtype]
    weights = math.prod(geometry.weight_shape)
    bias = 0 if args.no_bias else args.filters
    kind = ("conv_transpose" if args.transposed else "conv") + f"{n}d"
    print(f"{kind}: input {_x(size)}x{channels} -> output {_x(out)}x{args.filters}"
          f" (batch {args.batch})")
    print(f"  kernel {_x(kernel)}, stride {_x(stride)}, padding {args.padding}, "
          f"dilation {_x(dilation)}, groups {args.groups}")
    print(f"  parameters: {weights + bias:,} (weights {weights:,} + bias {bias:,})")
    print(f"  FLOPs: {_fmt(geometry.flops())} ({_fmt(geometry.macs())} multiply-accumulates)")
    moved = geometry.min_bytes(itemsize)
    print(f"  bytes ({args.dtype}), each tensor once: {_fmt(moved)}B; arithmetic intensity "
          f"{geometry.flops() / moved:.1f} FLOP/byte")
    if args.transposed:
        return 0
    for axis, s, k, st, p, d in zip(_AXES[n], size, kernel, stride, pad_before, dilation,
                                    strict=True):
        advice = tiling_advice(s, k, st, p, d)
        if advice.leftover == 0:
            print(f"  axis {axis}: windows tile the padded input exactly")
            continue
        print(f"  axis {axis}: the last {advice.leftover} input position(s) (padding included) "
              f"are never read: ({s} + 2*{p} - {d * (k - 1) + 1}) is not a multiple of stride {st}")
        options = []
        if advice.paddings:
            options.append("padding " + " or ".join(map(str, advice.paddings)))
        options.append(f"{advice.extra_padding} more padding in total (split before/after)")
        if advice.input_sizes:
            options.append("input size " + " or ".join(map(str, advice.input_sizes)))
        if advice.strides:
            options.append("stride " + " or ".join(map(str, advice.strides)))
        print("    even tiling with: " + "; ".join(options))
    return 0
