"""Run every kernel once on small random inputs against PyTorch and report the error.

`foveal selfcheck` prints the table; the service runs it at start-up on a GPU host. Each check
returns the max error relative to the reference's magnitude, computed in float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backend import backend_for

# dtype -> tolerance on max|out - ref| / max|ref| for the small problems below
TOLERANCE = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 1e-9}


@dataclass(frozen=True)
class CheckResult:
    op: str
    backend: str
    dtype: str
    max_error: float
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance  # NaN fails


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().clamp_min(1e-12)
    return float(((out.double() - ref).abs().max() / scale).item())


def _conv_check(spatial: int, **kwargs) -> Callable[[torch.device, torch.dtype], float]:
    from . import conv

    def check(device: torch.device, dtype: torch.dtype) -> float:
        groups = kwargs.get("groups", 1)
        x = torch.randn(2, 4 * groups, *([7] * spatial), device=device, dtype=dtype)
        w = torch.randn(6, 4, *([3] * spatial), device=device, dtype=dtype)
        b = torch.randn(6, device=device, dtype=dtype)
        if kwargs.get("channels_last") and spatial == 2:
            x = x.to(memory_format=torch.channels_last)
        extra = {k: v for k, v in kwargs.items() if k != "channels_last"}
        out = getattr(conv, f"conv{spatial}d")(x, w, b, activation="relu", **extra)
        ref = getattr(F, f"conv{spatial}d")(x.double(), w.double(), b.double(), **extra)
        return _relative_error(out, F.relu(ref))

    return check


def _conv2d_backward_check(device: torch.device, dtype: torch.dtype) -> float:
    from .conv import conv2d

    x = torch.randn(2, 5, 8, 9, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(6, 5, 3, 3, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(2, 6, 4, 5, device=device, dtype=dtype)
    dx, dw = torch.autograd.grad(conv2d(x, w, stride=2, padding=1), (x, w), gy)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(F.conv2d(x64, w64, stride=2, padding=1), (x64, w64), gy.double())
    return max(_relative_error(dx, rx), _relative_error(dw, rw))


def _conv_transpose2d_check(device: torch.device, dtype: torch.dtype) -> float:
    from .conv import conv_transpose2d

    x = torch.randn(2, 6, 5, 4, device=device, dtype=dtype)
    w = torch.randn(6, 4, 3, 3, device=device, dtype=dtype)
    b = torch.randn(8, device=device, dtype=dtype)
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2)
    out = conv_transpose2d(x, w, b, activation="relu", **kwargs)
    ref = F.relu(F.conv_transpose2d(x.double(), w.double(), b.double(), **kwargs))
    return _relative_error(out, ref)


def _pointwise_check(device: torch.device, dtype: torch.dtype) -> float:
    from .conv import conv2d

    x = torch.randn(2, 24, 7, 7, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(40, 24, 1, 1, device=device, dtype=dtype)
    b = torch.randn(40, device=device, dtype=dtype)
    out = conv2d(x, w, b, activation="relu")
    return _relative_error(out, F.relu(F.conv2d(x.double(), w.double(), b.double())))


def _depthwise_check(device: torch.device, dtype: torch.dtype) -> float:
    from .conv import conv2d

    x = torch.randn(2, 6, 9, 9, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(12, 1, 3, 3, device=device, dtype=dtype)
    out = conv2d(x, w, stride=2, padding=1, groups=6, activation="relu6")
    return _relative_error(out, F.relu6(F.conv2d(x.double(), w.double(), None, 2, 1, 1, 6)))


def _depthwise_backward_check(device: torch.device, dtype: torch.dtype) -> float:
    from .conv import conv2d

    x = torch.randn(2, 5, 8, 9, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(10, 1, 3, 3, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(2, 10, 4, 5, device=device, dtype=dtype)
    dx, dw = torch.autograd.grad(conv2d(x, w, stride=2, padding=1, groups=5), (x, w), gy)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(F.conv2d(x64, w64, None, 2, 1, 1, 5), (x64, w64), gy.double())
    return max(_relative_error(dx, rx), _relative_error(dw, rw))


def _depthwise_separable_check(device: torch.device, dtype: torch.dtype) -> float:
    from .depthwise_separable import depthwise_separable_conv2d

    x, dw, db, pw, pb = (torch.randn(*shape, device=device, dtype=dtype) for shape in
                         ((2, 8, 9, 9), (8, 1, 3, 3), (8,), (12, 8, 1, 1), (12,)))
    out = depthwise_separable_conv2d(x, dw, pw, db, pb, stride=2, padding=1,
                                     mid_activation="relu6", activation="silu")
    mid = F.relu6(F.conv2d(x.double(), dw.double(), db.double(), 2, 1, 1, 8))
    return _relative_error(out, F.silu(F.conv2d(mid, pw.double(), pb.double())))


def _separable_check(device: torch.device, dtype: torch.dtype) -> float:
    from .separable import separable_conv2d

    x = torch.randn(2, 3, 9, 10, device=device, dtype=dtype)
    col = torch.randn(4, 3, 5, 1, device=device, dtype=dtype)
    row = torch.randn(4, 1, 1, 3, device=device, dtype=dtype)
    out = separable_conv2d(x, col, row, padding=(2, 1))
    weight = col.double() * row.double()  # (4, 3, 5, 3): the rank-1 filter bank
    return _relative_error(out, F.conv2d(x.double(), weight, padding=(2, 1)))


def _local_conv_check(device: torch.device, dtype: torch.dtype) -> float:
    from .local_conv import local_conv2d

    x = torch.randn(2, 4, 7, 8, device=device, dtype=dtype)
    w = torch.randn(4, 4, 6, 2, 3, 3, device=device, dtype=dtype)  # stride 2, padding 1, g 2
    out = local_conv2d(x, w, stride=2, padding=1, groups=2)
    # Reference: one conv2d per output pixel with that pixel's filters, on the unfolded input.
    cols = F.unfold(x.double(), 3, padding=1, stride=2).reshape(2, 2, 2 * 9, 4, 4)
    ref = torch.einsum("ngkhw,hwgok->ngohw", cols, w.double().reshape(4, 4, 2, 3, 18))
    return _relative_error(out, ref.reshape(2, 6, 4, 4))


def _shifted(x: torch.Tensor, shift: torch.Tensor, pad: int) -> torch.Tensor:
    """x zero-padded by `pad`, sampled bilinearly at each pixel + shift (dy, dx) by grid_sample."""
    height, width = x.shape[2:]
    ys = torch.arange(-pad, height + pad, dtype=x.dtype, device=x.device) + shift[0]
    xs = torch.arange(-pad, width + pad, dtype=x.dtype, device=x.device) + shift[1]
    grid = torch.stack(torch.meshgrid(2 * xs / (width - 1) - 1, 2 * ys / (height - 1) - 1,
                                      indexing="xy"), dim=-1)
    return F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), align_corners=True)


def _deform_problem(device: torch.device, dtype: torch.dtype):
    """A 3x3, groups=2 DCNv2 layer whose offsets and mask vary per tap but not per position.

    Its float64 reference is then PyTorch alone: per tap, grid_sample shifts the image by the
    tap's offset and a 1x1 convolution applies the tap's weights.
    """
    def make(*shape, scale=1.0):
        return (scale * torch.randn(*shape, dtype=torch.float64)).to(device)

    x, weight, shifts = make(2, 6, 9, 8), make(4, 3, 3, 3), make(9, 2, scale=1.5)
    modulation = torch.rand(9, dtype=torch.float64).to(device)

    def ours(x, weight, shifts, modulation):
        from .deform import deform_conv2d

        offset = shifts.reshape(1, 18, 1, 1).expand(2, 18, 9, 8).to(dtype)
        mask = modulation.reshape(1, 9, 1, 1).expand(2, 9, 9, 8).to(dtype)
        return deform_conv2d(x.to(dtype), offset, weight.to(dtype), padding=1, mask=mask)

    def reference(x, weight, shifts, modulation):
        out = 0
        for tap in range(9):
            i, j = divmod(tap, 3)
            sampled = _shifted(x, shifts[tap], 1)[:, :, i:i + 9, j:j + 8]
            out = out + modulation[tap] * F.conv2d(sampled, weight[:, :, i:i + 1, j:j + 1],
                                                   groups=2)
        return out

    return (x, weight, shifts, modulation), ours, reference


def _conv_fp8_check(device: torch.device, dtype: torch.dtype) -> float:
    """conv2d_fp8 with its output in `dtype`, against the float64 convolution of the
    dequantized operands (the products are exact; only the sums' order and the output's
    rounding differ)."""
    from .fp8 import conv2d_fp8
    from .quantize import quantize_fp8, quantize_weight_fp8

    x = torch.randn(2, 16, 7, 7, device=device).to(memory_format=torch.channels_last)
    w8, w_scale = quantize_weight_fp8(torch.randn(8, 16, 3, 3, device=device))
    x8, x_scale = quantize_fp8(x)
    b = torch.randn(8, device=device)
    out = conv2d_fp8(x8, x_scale, w8, w_scale, b, padding=1, activation="relu", out_dtype=dtype)
    ref = F.conv2d(x8.double() * x_scale.double(),
                   w8.double() * w_scale.double().reshape(-1, 1, 1, 1), b.double(), padding=1)
    return _relative_error(out, F.relu(ref))


def _deform_check(device: torch.device, dtype: torch.dtype) -> float:
    inputs, ours, reference = _deform_problem(device, dtype)
    return _relative_error(F.relu(ours(*inputs)), F.relu(reference(*inputs)))


def _deform_backward_check(device: torch.device, dtype: torch.dtype) -> float:
    inputs, ours, reference = _deform_problem(device, dtype)
    leaves = [t.clone().requires_grad_() for t in inputs]
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    grad_out = torch.randn(2, 4, 9, 8, dtype=torch.float64).to(device)
    grads = torch.autograd.grad(ours(*leaves), leaves, grad_out.to(dtype))
    refs = torch.autograd.grad(reference(*ref_leaves), ref_leaves, grad_out)
    return max(_relative_error(g, r) for g, r in zip(grads, refs, strict=True))


CHECKS: dict[str, Callable[[torch.device, torch.dtype], float]] = {
    "conv1d": _conv_check(1, stride=2, padding=1),
    "conv2d": _conv_check(2, padding=1, dilation=(1, 2)),
    "conv2d channels_last": _conv_check(2, padding=1, channels_last=True),
    "conv2d grouped": _conv_check(2, groups=3, stride=(2, 1)),
    "conv3d": _conv_check(3, padding=(1, 0, 1)),
    "conv2d backward": _conv2d_backward_check,
    "conv_transpose2d": _conv_transpose2d_check,
    "conv2d pointwise": _pointwise_check,
    "conv2d depthwise": _depthwise_check,
    "depthwise backward": _depthwise_backward_check,
    "depthwise separable": _depthwise_separable_check,
    "separable_conv2d": _separable_check,
    "local_conv2d": _local_conv_check,
    "deform_conv2d": _deform_check,
    "deform_conv2d backward": _deform_backward_check,
    "conv2d_fp8": _conv_fp8_check,
}
FP8_CHECKS = ("conv2d_fp8",)  # run where FP8 tensor cores are (sm_89+) or in the interpreter


def checks_for(device: torch.device) -> list[str]:
    """The checks `device` can run: all but the FP8 ones on GPUs without FP8 tensor cores."""
    from .fp8 import fp8_unavailable

    fp8 = fp8_unavailable(device) is None
    return [name for name in CHECKS if fp8 or name not in FP8_CHECKS]


def run_selfcheck(device: torch.device | str | None = None,
                  dtypes: tuple[torch.dtype, ...] | None = None) -> list[CheckResult]:
    """Run every registered check on `device` (default: CUDA if present, else CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = dtypes or ((torch.float16, torch.bfloat16, torch.float32) if device.type == "cuda"
                        else (torch.float32,))
    backend = backend_for(device)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    results = []
    try:
        for name in checks_for(device):
            for dtype in dtypes:
                start = time.perf_counter()
                error = CHECKS[name](device, dtype)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                results.append(CheckResult(name, backend, str(dtype).removeprefix("torch."),
                                           error, TOLERANCE[dtype], time.perf_counter() - start))
    finally:
        torch.random.set_rng_state(generator_state)
    return results


def format_table(results: list[CheckResult]) -> str:
    header = f"{'op':<24} {'backend':<12} {'dtype':<9} {'max error':>10}  {'tolerance':>9}  result"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.op:<24} {r.backend:<12} {r.dtype:<9} {r.max_error:>10.2e}  "
                     f"{r.tolerance:>9.0e}  {'pass' if r.passed else 'FAIL'}")
    return "\n".join(lines)
