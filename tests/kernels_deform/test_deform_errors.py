"""Every bad argument of deform_conv2d gets a ValueError/TypeError naming it and the rule."""

from __future__ import annotations

import pytest
import torch

from foveal.kernels import deform_conv2d


def _args(batch=1, channels=4, size=(6, 6), out_channels=2, kernel=(3, 3), offset_groups=1,
          out_size=(4, 4), mask=True):
    taps = kernel[0] * kernel[1]
    return {
        "input": torch.randn(batch, channels, *size),
        "offset": torch.zeros(batch, 2 * offset_groups * taps, *out_size),
        "weight": torch.randn(out_channels, channels, *kernel),
        "mask": torch.ones(batch, offset_groups * taps, *out_size) if mask else None,
    }


def _replace(**changes):
    args = _args()
    args.update(changes)
    return args


BAD = {
    "input not 4-D": (_replace(input=torch.randn(4, 6, 6)), ValueError, "input must be 4-D"),
    "offset not 4-D": (_replace(offset=torch.zeros(18, 4, 4)), ValueError, "offset must be 4-D"),
    "weight not 4-D": (_replace(weight=torch.randn(2, 4, 9)), ValueError, "weight must be 4-D"),
    "mask not 4-D": (_replace(mask=torch.ones(9, 4, 4)), ValueError, "mask must be 4-D"),
    "offset not a tensor": (_replace(offset=[0.0]), TypeError, "offset must be a torch.Tensor"),
    "integer input": (_replace(input=torch.ones(1, 4, 6, 6, dtype=torch.int64)), TypeError,
                      "input has dtype torch.int64"),
    "offset dtype differs": (_replace(offset=torch.zeros(1, 18, 4, 4, dtype=torch.float64)),
                             ValueError, "offset has dtype torch.float64 but input has"),
    "mask dtype differs": (_replace(mask=torch.ones(1, 9, 4, 4, dtype=torch.float16)),
                           ValueError, "mask has dtype torch.float16"),
    "offset on another device": (_replace(offset=torch.zeros(1, 18, 4, 4, device="meta")),
                                 ValueError, "offset is on meta but input is on cpu"),
    "weight.shape[1] does not divide C_in": (_replace(weight=torch.randn(2, 3, 3, 3)),
                                             ValueError, r"weight.shape\[1\] \(3, input "),
    "out channels not divisible by groups": (_replace(weight=torch.randn(3, 2, 3, 3)),
                                             ValueError, r"weight.shape\[0\] \(out channels, 3\)"),
    "offset channels not 2*kH*kW multiple": (_replace(offset=torch.zeros(1, 17, 4, 4)),
                                             ValueError, "multiple of 18 for a 3x3 kernel"),
    "no offset channels": (_replace(offset=torch.zeros(1, 0, 4, 4)), ValueError,
                           r"offset.shape\[1\] must be 2 \* offset_groups"),
    "C_in not divisible by offset groups": (
        _replace(offset=torch.zeros(1, 54, 4, 4), mask=torch.ones(1, 27, 4, 4)), ValueError,
        r"input channels \(4\) must be divisible by the offset groups \(3"),
    "offset batch": (_replace(offset=torch.zeros(2, 18, 4, 4)), ValueError,
                     r"offset.shape\[0\] \(2\) must equal the batch size \(1\)"),
    "offset spatial size": (_replace(offset=torch.zeros(1, 18, 4, 5)), ValueError,
                            r"offset's spatial size \(4, 5\) must equal the output size \(4, 4\)"),
    "mask channels": (_replace(mask=torch.ones(1, 18, 4, 4)), ValueError,
                      r"mask.shape\[1\] must be offset_groups \* kH \* kW = 1 \* 3 \* 3 = 9"),
    "mask batch": (_replace(mask=torch.ones(3, 9, 4, 4)), ValueError,
                   r"mask.shape\[0\] \(3\) must equal the batch size"),
    "mask spatial size": (_replace(mask=torch.ones(1, 9, 3, 4)), ValueError,
                          r"mask's spatial size \(3, 4\) must equal the output size"),
    "kernel larger than padded input": (_replace(weight=torch.randn(2, 4, 7, 3)), ValueError,
                                        "kernel larger than the padded input"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_tensor_arguments(name):
    args, error, message = BAD[name]
    with pytest.raises(error, match=message):
        deform_conv2d(args["input"], args["offset"], args["weight"], mask=args["mask"])


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"stride": 0}, ValueError, "stride must be positive"),
    ({"stride": (1, 1, 1)}, ValueError, "stride must be an int or a sequence of 2 ints"),
    ({"dilation": -1}, ValueError, "dilation must be positive"),
    ({"padding": -1}, ValueError, "padding must be >= 0"),
    ({"padding": "same"}, TypeError, "padding must be an int or a sequence of 2 ints"),
    ({"bias": torch.zeros(3)}, ValueError, r"bias must have shape \(2,\)"),
    ({"residual": torch.zeros(1, 2, 4, 5)}, ValueError, "residual must have the output's shape"),
    ({"activation": "tanh"}, ValueError, "activation must be None or one of"),
])
def test_bad_options(kwargs, error, message):
    args = _args()
    with pytest.raises(error, match=message):
        deform_conv2d(args["input"], args["offset"], args["weight"], mask=args["mask"], **kwargs)


def test_errors_name_the_op():
    args = _replace(offset=torch.zeros(1, 18, 4, 5))
    with pytest.raises(ValueError, match=r"^deform_conv2d: "):
        deform_conv2d(args["input"], args["offset"], args["weight"])
