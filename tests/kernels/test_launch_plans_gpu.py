"""On a GPU: the launches planned from meta tensors (what `foveal compilecheck` compiles) are the
launches the same ops plan from CUDA tensors, and kernels run on their tensors' device."""

from __future__ import annotations

import pytest
import torch

import foveal.kernels as fk
from foveal.kernels.launch import PlanningTarget, planning

pytestmark = pytest.mark.gpu


def _this_gpu() -> PlanningTarget:
    props = torch.cuda.get_device_properties(0)
    return PlanningTarget(props.name, props.major * 10 + props.minor,
                          props.multi_processor_count, props.shared_memory_per_block_optin)


def _describe(plans) -> list[tuple]:
    """Each launch's kernel, constexprs and arguments, with tensors as shape/stride/dtype."""
    def arg(a):
        if isinstance(a, torch.Tensor):
            return ("tensor", tuple(a.shape), a.stride(), a.dtype)
        return a
    return [(p.name, tuple(arg(a) for a in p.args), tuple(sorted(p.constexprs.items())))
            for p in plans]


def _plans(device: str, op, *shapes, requires_grad: bool):
    torch.manual_seed(0)
    tensors = [torch.randn(s, device=device, dtype=torch.float16) for s in shapes]
    tensors[0] = tensors[0].to(memory_format=torch.channels_last)
    for t in tensors:
        t.requires_grad_(requires_grad)
    with planning(_this_gpu()) as plans:
        out = op(*tensors)
        if requires_grad:
            torch.autograd.grad(out, tensors, torch.empty_like(out))
    return _describe(plans)


OPS = {
    "conv3x3": (lambda x, w: fk.conv2d(x, w, padding=1, activation="relu"),
                (8, 64, 56, 56), (64, 64, 3, 3)),
    "depthwise": (lambda x, w: fk.conv2d(x, w, padding=1, groups=96), (8, 96, 56, 56),
                  (96, 1, 3, 3)),
    "deform": (lambda x, off, w: fk.deform_conv2d(x, off, w, padding=1), (2, 64, 28, 28),
               (2, 18, 28, 28), (64, 64, 3, 3)),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_meta_tensors_plan_the_launches_cuda_tensors_do(name, requires_grad):
    op, *shapes = OPS[name]
    on_gpu = _plans("cuda", op, *shapes, requires_grad=requires_grad)
    on_meta = _plans("meta", op, *shapes, requires_grad=requires_grad)
    assert on_gpu and on_meta == on_gpu


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_run_on_their_tensors_device_not_the_current_one():
    x = torch.randn(2, 8, 9, 9, device="cuda:1")
    w = torch.randn(4, 8, 3, 3, device="cuda:1")
    with torch.cuda.device(0):
        out = fk.conv2d(x, w, padding=1)
    expected = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    assert out.device == x.device
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
