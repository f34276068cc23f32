"""deform_conv2d on a GPU at DCNv2 detector sizes (ResNet-50 stages 4-5), against torchvision.

Skipped without CUDA (see tests/conftest.py); `make gpu-check` runs them.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from deform_cases import Case, make_inputs, run_and_compare, shifted_fields

from foveal.kernels import deform_conv2d
from foveal.kernels.nn import Conv2d, DeformConv2d

pytestmark = pytest.mark.gpu

DETECTOR_LAYERS = {
    "stage4 256ch 64x64": Case(batch=2, channels=256, out_channels=256, size=(64, 64)),
    "stage5 512ch 32x32": Case(batch=2, channels=512, out_channels=512, size=(32, 32)),
}


def _on_cuda(tensors: dict) -> dict:
    return {k: None if v is None else v.cuda() for k, v in tensors.items()}


@pytest.mark.parametrize("layer", list(DETECTOR_LAYERS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_detector_layers_match_torchvision(layer, dtype, channels_last):
    case = DETECTOR_LAYERS[layer]
    t = _on_cuda(make_inputs(case, dtype))
    if channels_last:
        t["input"] = t["input"].to(memory_format=torch.channels_last)
    out = run_and_compare(case, t)
    expected = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected)


@contextlib.contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_deterministic_input_gradient_repeats_bitwise_and_matches(dtype):
    case = Case(batch=2, channels=128, out_channels=128, size=(32, 32), offset_scale=1.0)
    t = _on_cuda(make_inputs(case, dtype))
    x = t["input"].requires_grad_()

    def input_grad():
        out = deform_conv2d(x, t["offset"], t["weight"], t["bias"], 1, 1, 1, t["mask"])
        return torch.autograd.grad(out, [x], grad_out)[0]

    grad_out = torch.randn(2, 128, 32, 32, device="cuda", dtype=dtype)
    with _deterministic():
        first, second = input_grad(), input_grad()
    assert torch.equal(first, second)
    scattered = input_grad()  # atomics: equal up to rounding order
    scale = scattered.abs().max().item()
    assert (first.float() - scattered.float()).abs().max().item() <= 1e-2 * scale


def test_backward_peak_memory_stays_below_an_im2col_buffer():
    # What foveal avoids: torchvision-style implementations hold C_in*kH*kW x N*H_out*W_out
    # columns. Ours needs O(input + output + offsets) extra: here the output, an fp32 input
    # gradient buffer and its fp16 copy, offset/mask gradients and weight partial sums, about
    # 0.5x the columns (which grow with C_in * kH * kW while ours do not).
    case = Case(batch=8, channels=256, out_channels=256, size=(64, 64))
    t = _on_cuda(make_inputs(case, torch.float16))
    for name in ("input", "offset", "weight", "bias", "mask"):
        t[name].requires_grad_()
    grad_out = torch.randn(8, 256, 64, 64, device="cuda", dtype=torch.float16)
    args = (t["input"], t["offset"], t["weight"], t["bias"], 1, 1, 1, t["mask"])
    deform_conv2d(*args).backward(grad_out)  # autotuning and compilation first
    for name in ("input", "offset", "weight", "bias", "mask"):
        t[name].grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    deform_conv2d(*args).backward(grad_out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - baseline
    im2col = 256 * 9 * 8 * 64 * 64 * 2  # bytes, fp16
    assert extra < 0.75 * im2col, f"peak extra {extra / 2**20:.0f} MiB"


def test_offsets_learn_a_shift_in_a_few_hundred_steps():
    # The learning test at full length: a 3x3 DCNv2 layer against a plain 3x3 conv.
    shift = (1.6, -2.3)
    image, target = shifted_fields(batch=4, size=24, shift=shift, wavelength=8.0)
    x, target = image.float().cuda(), target.float().cuda()
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))

    def train(layer):
        optimiser = torch.optim.Adam(layer.parameters(), lr=0.05)
        for _ in range(300):
            loss = (layer(x) - target)[inner].square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return loss.item()

    torch.manual_seed(0)
    deformable = DeformConv2d(1, 1, 3, padding=1, bias=False).cuda()
    plain = Conv2d(1, 1, 3, padding=1, bias=False).cuda()
    deform_loss, plain_loss = train(deformable), train(plain)
    assert deform_loss < 0.1 * plain_loss
    # Where the layer reads from, on average: each tap's position plus its learned offset,
    # weighted by its weight times its modulation.
    with torch.no_grad():
        prediction = deformable.offset_conv(x)[inner]
        offsets = prediction[:, :18].reshape(4, 9, 2, -1).mean(dim=(0, 3))
        modulation = 2 * torch.sigmoid(prediction[:, 18:]).mean(dim=(0, 2, 3))
        taps = torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], device="cuda",
                            dtype=torch.float32)
        weights = deformable.weight.flatten() * modulation
        reach = ((taps + offsets) * weights[:, None]).sum(0) / weights.sum()
    assert torch.allclose(reach.cpu(), torch.tensor(shift), atol=0.3), reach
