"""The fused epilogue every forward op shares: (FP8 de-scaling,) bias, residual, then an activation.

`Epilogue` is the host-side description; `tl_helpers.epilogue_store` applies it inside a kernel
and `apply_epilogue` applies it with PyTorch ops for the reference backend. The activation
codes below are the constexpr values the kernels branch on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.nn.functional as F


class Activation(IntEnum):
    NONE = 0
    RELU = 1
    RELU6 = 2
    SILU = 3
    GELU = 4
    LEAKY_RELU = 5
    SIGMOID = 6
    HARDSWISH = 7


ACTIVATION_NAMES: dict[str, Activation] = {
    "relu": Activation.RELU,
    "relu6": Activation.RELU6,
    "silu": Activation.SILU,
    "gelu": Activation.GELU,
    "leaky_relu": Activation.LEAKY_RELU,
    "sigmoid": Activation.SIGMOID,
    "hardswish": Activation.HARDSWISH,
}
DEFAULT_NEGATIVE_SLOPE = 0.01  # torch.nn.functional.leaky_relu's default

ActivationArg = str | tuple[str, float] | None


@dataclass(frozen=True)
class Epilogue:
    """Which activation follows `acc + bias + residual`, and its parameter (leaky_relu's slope)."""

    activation: Activation = Activation.NONE
    alpha: float = 0.0

    @property
    def name(self) -> str | None:
        return None if self.activation is Activation.NONE else self.activation.name.lower()

    @property
    def argument(self) -> ActivationArg:
        """The `activation=` argument that `parse_activation` turns into this epilogue."""
        if self.activation is Activation.LEAKY_RELU:
            return ("leaky_relu", self.alpha)
        return self.name

    @property
    def grad_needs_preactivation(self) -> bool:
        """True when the activation's derivative cannot be read off its output alone."""
        if self.activation is Activation.LEAKY_RELU:
            return self.alpha < 0
        return self.activation in (Activation.SILU, Activation.GELU, Activation.HARDSWISH)


NO_EPILOGUE = Epilogue()


def epilogue_from(activation: str | None, negative_slope: float) -> Epilogue:
    """The Epilogue that an operator's (activation, negative_slope) arguments name.

    Operators take an epilogue as `(epilogue.name, epilogue.alpha)`.
    """
    if activation is None:
        return NO_EPILOGUE
    kind = ACTIVATION_NAMES[activation]
    return Epilogue(kind, float(negative_slope) if kind is Activation.LEAKY_RELU else 0.0)


@dataclass(frozen=True)
class Fp8Scales:
    """What de-scales a product of FP8 operands: acc * input * weight[channel].

    `input` is a one-element float32 tensor (per-tensor activation scale), `weight` a float32
    (C_out,) tensor (per-output-channel weight scales), both on the operands' device.
    """

    input: torch.Tensor
    weight: torch.Tensor


def parse_activation(activation: ActivationArg) -> Epilogue:
    """Accept None, a name such as "relu", or ("leaky_relu", slope)."""
    if activation is None:
        return Epilogue()
    alpha = DEFAULT_NEGATIVE_SLOPE
    name = activation
    if isinstance(activation, tuple):
        if len(activation) != 2 or activation[0] != "leaky_relu":
            raise ValueError("activation given as a tuple must be ('leaky_relu', negative_slope), "
                             f"got {activation!r}")
        name, alpha = activation
        if not isinstance(alpha, int | float) or isinstance(alpha, bool):
            raise TypeError(f"leaky_relu's negative_slope must be a number, got {alpha!r}")
    if not isinstance(name, str) or name not in ACTIVATION_NAMES:
        raise ValueError(f"activation must be None or one of {sorted(ACTIVATION_NAMES)}, "
                         f"got {activation!r}")
    kind = ACTIVATION_NAMES[name]
    return Epilogue(kind, float(alpha) if kind is Activation.LEAKY_RELU else 0.0)


def activate(z: torch.Tensor, epilogue: Epilogue) -> torch.Tensor:
    """The activation with PyTorch ops (reference backend)."""
    kind = epilogue.activation
    if kind is Activation.NONE:
        return z
    if kind is Activation.LEAKY_RELU:
        return F.leaky_relu(z, epilogue.alpha)
    return {
        Activation.RELU: F.relu,
        Activation.RELU6: F.relu6,
        Activation.SILU: F.silu,
        Activation.GELU: F.gelu,
        Activation.SIGMOID: torch.sigmoid,
        Activation.HARDSWISH: F.hardswish,
    }[kind](z)


def apply_epilogue(y: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                   epilogue: Epilogue) -> torch.Tensor:
    """bias, then residual, then activation, with PyTorch ops (reference backend)."""
    if bias is not None:
        y = y + bias.reshape(1, -1, *([1] * (y.dim() - 2)))
    if residual is not None:
        y = y + residual
    return activate(y, epilogue)
