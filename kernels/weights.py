"""The weight as the implicit GEMM's B operand: a 6-D view, packed when its loads would scatter.

Kernels address a weight as [group, out channel, in channel, kd, kh, kw]. For a convolution
(direct mode) that is a view of (C_out, C_in/groups, k...); a transposed convolution's
(C_in, C_out/groups, k...) weight, or a convolution's weight used for its input gradient, has
in and out swapped. A standard contiguous 3x3 weight has neither channel axis contiguous, so
each B tile would be gathered element by element; such weights are repacked once into
[group, kd, kh, kw, in, out] order (out channels contiguous). Inference callers ask for the
packed copy to be cached per weight tensor and version, so each weight is packed once.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

# Enough for every convolution of a few large networks at once (ResNet-50 alone has 53, and a
# model served on two GPUs holds a copy per device).
_CACHE_SIZE = 512
# key -> (weak reference to the source weight, packed copy). The weak reference guards against
# a new tensor reusing a freed weight's address and version number. Model instances run in
# several threads: the lock keeps each lookup and insertion whole.
_packed: OrderedDict[tuple, tuple[weakref.ref, torch.Tensor]] = OrderedDict()
_lock = threading.Lock()


def gemm_weight(weight: torch.Tensor, groups: int, out_dim: int, *, cache: bool) -> torch.Tensor:
    """The 6-D [group, out, in, kd, kh, kw] view of an (A, B, *kernel) weight, packed if it helps.

    `out_dim` is the weight dimension that indexes the kernel's output channels (0 for a
    convolution's forward, 1 for a transposed convolution's forward and a convolution's input
    gradient). `cache` keeps the packed copy for later calls with the same, unchanged tensor.
    """
    rows, cols, *kernel = weight.shape
    kernel = [1] * (3 - len(kernel)) + kernel
    if out_dim == 0:
        view = weight.view(groups, rows // groups, cols, *kernel)
    else:
        view = weight.view(groups, rows // groups, cols, *kernel).transpose(1, 2)
    if view.stride(1) == 1 or view.stride(2) == 1 or view[0, :, :, 0, 0, 0].numel() <= 1:
        return view
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.stride(),
           weight.dtype, weight.device, groups, out_dim)
    if cache:
        with _lock:
            source, packed = _packed.get(key, (None, None))
            if source is not None and source() is weight:
                _packed.move_to_end(key)
                return packed
    packed = view.permute(0, 3, 4, 5, 2, 1).contiguous().permute(0, 5, 4, 1, 2, 3)
    if cache:
        with _lock:
            _packed[key] = (weakref.ref(weight), packed)
            if len(_packed) > _CACHE_SIZE:
                _packed.popitem(last=False)
    return packed
