"""A forward op with foveal's fused epilogue, and its backward, as a pair of PyTorch operators.

Every forward op shares one outer shape: its tensors (one of them the residual), its options
(stride, padding, ...), then the epilogue and whether a backward will follow. From one
`FusedOp`, `register` defines in the `foveal` namespace:

- `NAME(*tensors, *options, str? activation, float negative_slope, bool needs_grad)
  -> (Tensor out, Tensor saved)`: `saved` is the pre-activation when the backward will need it
  (silu, gelu, hardswish under needs_grad), else an empty tensor. Calls without needs_grad
  may also cache packed weights (inference).
- `NAME_backward(Tensor grad, *tensors, Tensor saved, *options, str? activation,
  float negative_slope, bool[] output_mask) -> Tensor[]`: the gradients output_mask asks for,
  in the tensors' order. `saved` is what the activation's derivative reads: the forward's
  `saved`, or its output when that suffices.
- autograd on NAME (register_autograd) that calls NAME_backward.

The real implementations pick the backend when they run (`backend.backend_for`): the Triton
kernels (on a GPU or in the interpreter), or PyTorch's own ops on the torch backend and for
empty tensors, differentiated with torch.func. Either way the outputs are allocated as the fake
implementation describes them, so what the compiler assumes about strides holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import library
from .backend import backend_for
from .elementwise import activation_backward
from .epilogue import Activation, Epilogue, activate, epilogue_from
from .tensors import memory_format_of

CONV_TENSORS = ("Tensor input", "Tensor weight", "Tensor? bias", "Tensor? residual")
Tensors = Sequence[torch.Tensor | None]
Grads = list[torch.Tensor | None]


def like_layout(t: torch.Tensor) -> torch.Tensor:
    """A gradient in `t`'s memory format (what the Triton launchers give an input's)."""
    return torch.empty_like(t, memory_format=memory_format_of(t))


def dense(t: torch.Tensor) -> torch.Tensor:
    """A contiguous gradient in `t`'s shape (weights' and biases' gradients)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


@dataclass(frozen=True)
class FusedOp:
    """What differs between foveal's forward ops; `register` builds the rest.

    Every callable takes the op's tensors then its options, as in the schema.
    """

    name: str
    tensors: tuple[str, ...]  # schema declarations, e.g. "Tensor input", "Tensor? residual"
    options: tuple[str, ...]  # schema declarations of the non-tensor arguments
    output: Callable[..., torch.Tensor]  # an empty output: the fake implementation's
    launch: Callable[..., None]  # (out, preact | None, *tensors, *options, epilogue, inference)
    reference: Callable[..., torch.Tensor]  # the pre-activation, with PyTorch's ops
    backward: Callable[..., Grads]  # (dz, needs, *tensors, *options) -> a grad per tensor
    grads: tuple[Callable[[torch.Tensor], torch.Tensor], ...]  # gradient layout per tensor
    # `backward` with PyTorch's ops, where torch.func cannot differentiate `reference`
    # (torchvision's deform_conv2d)
    reference_backward: Callable[..., Grads] | None = None

    @property
    def residual(self) -> int:
        return [d.split()[-1] for d in self.tensors].index("residual")


def register(op: FusedOp) -> tuple[torch._ops.OpOverload, torch._ops.OpOverload]:
    """Define NAME and NAME_backward with op's implementations and autograd between them."""
    n = len(op.tensors)
    options = ", ".join(op.options)
    tensors = ", ".join(op.tensors)
    forward = library.define_op(
        op.name, f"({tensors}, {options}, str? activation, float negative_slope, "
                 "bool needs_grad) -> (Tensor, Tensor)",
        _real_forward(op), _fake_forward(op))
    backward = library.define_op(
        f"{op.name}_backward", f"(Tensor grad, {tensors}, Tensor saved, {options}, "
                               "str? activation, float negative_slope, bool[] output_mask) "
                               "-> Tensor[]",
        _real_backward(op), _fake_backward(op))

    def setup_context(ctx, inputs, output) -> None:
        out, preact = output
        ctx.mark_non_differentiable(preact)
        activation, negative_slope, _ = inputs[-3:]
        keep = epilogue_from(activation, negative_slope).grad_needs_preactivation
        if keep and preact.numel() != out.numel():
            raise RuntimeError(f"foveal::{op.name} with activation {activation!r} needs "
                               "needs_grad=True to be differentiated (its backward reads the "
                               "pre-activation)")
        ctx.options = inputs[n:-1]
        ctx.save_for_backward(*inputs[:n], preact if keep else out)

    def grad_formula(ctx, grad, _grad_saved):
        *saved_tensors, saved = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:n])
        # Without an activation dL/dresidual is the incoming gradient itself: no op, no copy.
        residual_is_grad = needs[op.residual] and ctx.options[-2] is None
        needs[op.residual] = needs[op.residual] and not residual_is_grad
        grads = iter(backward(grad, *saved_tensors, saved, *ctx.options, needs)
                     if any(needs) else ())
        result = [next(grads) if need else None for need in needs]
        if residual_is_grad:
            result[op.residual] = grad
        return (*result, *[None] * (len(op.options) + 3))

    torch.library.register_autograd(f"{library.NAMESPACE}::{op.name}", grad_formula,
                                    setup_context=setup_context, lib=library.LIBRARY)
    return forward, backward


def needs_grad(tensors: Tensors) -> bool:
    """Whether autograd will record this call: then the forward keeps what its backward needs."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def call(operator, tensors: Tensors, options: Sequence[object],
         epilogue: Epilogue) -> torch.Tensor:
    """The output of a forward operator `register` defined, called with these arguments."""
    out, _ = operator(*tensors, *options, epilogue.name, epilogue.alpha, needs_grad(tensors))
    return out


def _split(op: FusedOp, args: tuple) -> tuple[tuple, tuple, Epilogue, object]:
    """(tensors, options, epilogue, last) from a forward or backward op's arguments."""
    n = len(op.tensors)
    activation, negative_slope, last = args[-3:]
    return args[:n], args[n:-3], epilogue_from(activation, negative_slope), last


def _runs_pytorch(tensors: Tensors) -> bool:
    """The torch backend, or empty tensors (no launch needed): PyTorch's ops run the op."""
    return (backend_for(tensors[0].device) == "torch"
            or any(t is not None and t.numel() == 0 for t in tensors))


def _fake_forward(op: FusedOp):
    def fake(*args):
        tensors, options, epilogue, needs_grad = _split(op, args)
        out = op.output(*tensors, *options)
        keep = needs_grad and epilogue.grad_needs_preactivation
        return out, torch.empty_like(out) if keep else out.new_empty(0)
    return fake


def _real_forward(op: FusedOp):
    fake = _fake_forward(op)

    def real(*args):
        tensors, options, epilogue, needs_grad = _split(op, args)
        out, saved = fake(*args)
        if _runs_pytorch(tensors):
            z = op.reference(*tensors, *options)
            out.copy_(activate(z, epilogue))
            if saved.numel():
                saved.copy_(z)
        else:
            op.launch(out, saved if saved.numel() else None, *tensors, *options, epilogue,
                      not needs_grad)
        return out, saved
    return real


def _fake_backward(op: FusedOp):
    def fake(grad, *args):
        tensors, rest, _, mask = _split(op, args)
        layouts = list(op.grads)
        layouts[op.residual] = lambda _: like_layout(rest[0])  # dz: the saved tensor's layout
        return [layout(t) for layout, t, want in zip(layouts, tensors, mask, strict=True)
                if want]
    return fake


def _real_backward(op: FusedOp):
    fake = _fake_backward(op)

    def real(grad, *args):
        tensors, rest, epilogue, mask = _split(op, args)
        saved, options = rest[0], rest[1:]
        if _runs_pytorch(tensors):
            if op.reference_backward is None:
                grads = _vjp(lambda *ts: activate(op.reference(*ts, *options), epilogue),
                             tensors, grad, mask)
            else:
                z = op.reference(*tensors, *options)
                (dz,) = _vjp(lambda t: activate(t, epilogue), (z,), grad, (True,))
                grads = _picked(op.reference_backward(dz, mask, *tensors, *options), dz, mask)
            return [out.copy_(g) for out, g in zip(fake(grad, *args), grads, strict=True)]
        dz = grad
        if epilogue.activation is not Activation.NONE:
            dz = activation_backward(grad, saved, epilogue)
        elif mask[op.residual]:  # dL/dresidual must not alias the incoming gradient
            dz = like_layout(saved).copy_(grad)
        return _picked(op.backward(dz, mask, *tensors, *options), dz, mask)

    def _picked(grads: Grads, dz: torch.Tensor, mask: Sequence[bool]) -> Grads:
        """The asked-for gradients in order; the residual's is dz."""
        grads[op.residual] = dz
        return [g for g, want in zip(grads, mask, strict=True) if want]
    return real


def _vjp(forward: Callable[..., torch.Tensor], tensors: Tensors, grad: torch.Tensor,
         mask: Sequence[bool]) -> Grads:
    """The gradients of `forward` (PyTorch's ops) for the tensors `mask` picks, in order.

    torch.func, not torch.autograd: an operator's implementation runs below autograd.
    """
    picked = [i for i, want in enumerate(mask) if want]

    def of_picked(*chosen):
        args = list(tensors)
        for i, t in zip(picked, chosen, strict=True):
            args[i] = t
        return forward(*args)

    _, vjp = torch.func.vjp(of_picked, *(tensors[i] for i in picked))
    return list(vjp(grad))
