"""foveal's operators in PyTorch's dispatcher: the `foveal` namespace of torch.library.

Every public op is an operator there (`torch.ops.foveal.conv2d`, ...), so torch.compile and
torch.export see an opaque call whose output they know from its fake implementation, instead of
tracing into Triton's launcher. The Python functions (`fk.conv2d`, ...) validate their
arguments and call these operators.

Planning (`launch.planning`) runs the ops on meta tensors to record the launches a GPU would
make; the dispatcher would send meta tensors to the fake implementations, which launch nothing,
so planning enters `RealImplementations`, which routes every foveal op (the backward ops that
autograd calls included) to its real implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

NAMESPACE = "foveal"

_real: dict[str, Callable[..., Any]] = {}
LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")


def define_op(name: str, schema: str, real: Callable[..., Any],
              fake: Callable[..., Any]) -> torch._ops.OpOverload:
    """Define `foveal::name` with `schema` (written without the name), run by `real`.

    `fake` gives the outputs' shapes, dtypes and strides from the arguments alone; the real
    implementation must produce exactly those (opcheck compares them). Registered with
    torch.library's define/impl rather than `torch.library.custom_op`, whose implementations
    import torch._dynamo on their first call: a plain call of a foveal op stays a plain call.
    """
    LIBRARY.define(f"{name}{schema}")
    LIBRARY.impl(name, real, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=LIBRARY)
    _real[f"{NAMESPACE}::{name}"] = real
    return _overload(name)


def composite_op(name: str, schema: str,
                 implementation: Callable[..., Any]) -> torch._ops.OpOverload:
    """Define `foveal::name` as a composition of other ops (CompositeImplicitAutograd).

    Autograd, fake tensors and compilers see through it to the ops it calls.
    """
    LIBRARY.define(f"{name}{schema}")
    LIBRARY.impl(name, implementation, "CompositeImplicitAutograd")
    return _overload(name)


def _overload(name: str) -> torch._ops.OpOverload:
    return getattr(getattr(torch.ops, NAMESPACE), name).default


class RealImplementations(TorchDispatchMode):
    """Runs every foveal op's real implementation, whatever its tensors' device (meta too).

    Below autograd, so a forward op's registered autograd still records its backward, whose
    ops come here in turn.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        real = _real.get(func._schema.name)
        if real is None:
            return func(*args, **(kwargs or {}))
        return real(*args, **(kwargs or {}))
