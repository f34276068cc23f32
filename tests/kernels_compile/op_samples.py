"""Small representative calls of every foveal operator, for opcheck and the compile tests.

Each sample is the operator's full argument list (schema order), with float64 tensors that
require grad: channels_last inputs, groups, residuals and activations whose backward reads the
pre-activation (silu, gelu, hardswish, leaky_relu with a negative slope) are all represented.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import foveal.kernels  # noqa: F401  (registers torch.ops.foveal)

CL = torch.channels_last


def _t(*shape: int, device: str, memory_format=torch.contiguous_format) -> torch.Tensor:
    t = torch.randn(*shape, dtype=torch.float64, device=device)
    return t.contiguous(memory_format=memory_format).requires_grad_()


def _conv(name, x, w, b, r, *options, activation=None, slope=0.0):
    return name, (x, w, b, r, *options, activation, slope, True)


def forward_samples(device: str) -> dict[str, tuple[str, tuple]]:
    """id -> (operator name, arguments) for every forward operator."""
    t = lambda *shape, **kw: _t(*shape, device=device, **kw)
    return {
        "conv1d-depthwise": _conv("conv1d", t(2, 3, 7), t(6, 1, 3), t(6), None, [2], [1], [1], 3,
                                  False, activation="relu"),
        "conv2d-groups-residual-cl": _conv(
            "conv2d", t(2, 4, 5, 5, memory_format=CL), t(6, 2, 3, 3), t(6),
            t(2, 6, 5, 5, memory_format=CL), [1, 1], [1, 1], [1, 1], 2, False,
            activation="silu"),
        "conv3d-pointwise": _conv("conv3d", t(1, 2, 3, 4, 4), t(3, 2, 1, 1, 1), t(3), None,
                                  [1, 1, 1], [0, 0, 0], [1, 1, 1], 1, False, activation="gelu"),
        "conv_transpose1d": _conv("conv_transpose1d", t(2, 3, 4), t(3, 2, 3), t(2), None, [2],
                                  [1], [1], 1, [1], activation="relu6"),
        "conv_transpose2d-groups-cl": _conv(
            "conv_transpose2d", t(1, 4, 2, 2, memory_format=CL), t(4, 3, 2, 2), None,
            t(1, 6, 4, 4), [2, 2], [0, 0], [0, 0], 2, [1, 1], activation="hardswish"),
        "conv_transpose3d": _conv("conv_transpose3d", t(1, 2, 2, 2, 2), t(2, 2, 2, 2, 2), t(2),
                                  None, [1, 2, 2], [0, 0, 0], [0, 1, 1], 1, [1, 1, 1]),
        "depthwise_separable_conv2d": ("depthwise_separable_conv2d", (
            t(2, 3, 5, 5, memory_format=CL), t(3, 1, 3, 3), t(4, 3, 1, 1), t(3), t(4),
            t(2, 4, 5, 5, memory_format=CL), [1, 1], [1, 1], [1, 1], False, "hardswish", 0.0,
            "relu", 0.0, True)),
        "local_conv2d-same-even-kernel": ("local_conv2d", (
            t(2, 2, 4, 4), t(4, 4, 3, 2, 2, 2), t(3, 4, 4), t(2, 3, 4, 4), [1, 1], [0, 0],
            [1, 1], 1, True, "leaky_relu", -0.1, True)),
        "deform_conv2d": ("deform_conv2d", (
            t(1, 2, 4, 4), t(1, 18, 4, 4), t(3, 2, 3, 3), t(3), t(1, 9, 4, 4), None, [1, 1],
            [1, 1], [1, 1], "relu", 0.0, True)),
    }


def backward_sample(name: str, args: tuple) -> tuple[str, tuple]:
    """NAME_backward's arguments after a forward call with `args`: every gradient asked for.

    The residual's only when there is an activation (otherwise autograd passes the incoming
    gradient on and the backward operator is not asked for it).
    """
    forward = getattr(torch.ops.foveal, name).default
    tensors = len([a for a in forward._schema.arguments if a.type.isSubtypeOf(
        torch._C.OptionalType(torch._C.TensorType.get()))])
    with torch.no_grad():
        out, preact = forward(*args)
    *options, activation, slope, _ = args[tensors:]
    detached = [None if t is None else t.detach() for t in args[:tensors]]
    saved = preact if preact.numel() else out
    mask = [t is not None for t in detached]
    residual = [a.name for a in forward._schema.arguments].index("residual")
    mask[residual] = mask[residual] and activation is not None
    grad = torch.randn_like(out)
    return f"{name}_backward", (grad, *detached, saved, *options, activation, slope, mask)


def separable_sample(device: str) -> tuple[Callable, tuple]:
    t = lambda *shape: _t(*shape, device=device)
    return torch.ops.foveal.separable_conv2d.default, (
        t(2, 3, 6, 6), t(4, 3, 3, 1), t(4, 1, 1, 3), t(4), t(2, 4, 6, 6), [1, 1], [1, 1],
        [1, 1], 1, False, "relu", 0.0)
