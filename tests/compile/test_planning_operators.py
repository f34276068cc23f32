"""Planning records the launches of foveal's operators, forward and backward, on meta tensors.

The ops are torch.library operators, so meta tensors would reach their fake implementations
and launch nothing; planning routes them to the real ones. Run with Triton's real compiler in a
subprocess: planning refuses the interpreter these tests run under.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PLAN = r"""
import json, torch
import foveal.kernels as fk
from foveal.kernels.launch import PlanningTarget, planning

def meta(*shape):
    return torch.empty(*shape, device="meta", dtype=torch.float16, requires_grad=True)

def plan(op, *shapes, training=True, deterministic=False):
    tensors = [meta(*s) for s in shapes]
    torch.use_deterministic_algorithms(deterministic)
    with planning(PlanningTarget("H100", 90, 132, 232448)) as plans, \
            torch.set_grad_enabled(training):
        out = op(*tensors)
        if training:
            torch.autograd.grad(out, tensors, torch.empty_like(out))
    return [p.name for p in plans]

conv = lambda x, w, b: fk.conv2d(x, w, b, padding=1, activation="silu")
deform = lambda x, o, w, m: fk.deform_conv2d(x, o, w, padding=1, mask=m)
separable = lambda x, dw, pw: fk.depthwise_separable_conv2d(x, dw, pw, padding=1,
                                                            mid_activation="relu")
shapes = {"conv": [(2, 32, 8, 8), (32, 32, 3, 3), (32,)],
          "deform": [(2, 16, 8, 8), (2, 18, 8, 8), (16, 16, 3, 3), (2, 9, 8, 8)],
          "separable": [(2, 16, 8, 8), (16, 1, 3, 3), (32, 16, 1, 1)]}
print(json.dumps({
    "conv inference": plan(conv, *shapes["conv"], training=False),
    "conv training": plan(conv, *shapes["conv"]),
    "deform training": plan(deform, *shapes["deform"]),
    "deform deterministic": plan(deform, *shapes["deform"], deterministic=True),
    "separable training": plan(separable, *shapes["separable"]),
}))
"""


def test_planning_records_forward_and_backward_launches_of_the_operators():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", PLAN], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    plans = json.loads(done.stdout)
    assert plans["conv inference"] == ["igemm_kernel"]
    assert plans["conv training"] == ["igemm_kernel", "_activation_backward_kernel",
                                      "igemm_kernel", "wgrad_kernel", "_channel_sum_kernel"]
    assert plans["deform training"] == ["deform_forward_kernel", "deform_data_grad_kernel",
                                        "deform_weight_grad_kernel"]
    assert plans["deform deterministic"] == [
        "deform_forward_kernel", "deform_data_grad_kernel", "deform_scatter_plan_kernel",
        "deform_input_grad_gather_kernel", "deform_weight_grad_kernel"]
    # the fused forward; backward: intermediate recomputed, 1x1 and depthwise gradients
    assert plans["separable training"][0] == "pointwise_kernel"
    assert {"depthwise_kernel", "depthwise_wgrad_kernel", "wgrad_kernel",
            "_activation_backward_kernel"} <= set(plans["separable training"][1:])
