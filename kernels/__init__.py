"""foveal.kernels: fused convolution kernels in Triton with PyTorch's semantics.

Swap `torch.nn.functional.conv2d` for `foveal.kernels.conv2d`; on top of PyTorch's arguments each
forward op takes a fused epilogue: `bias`, `activation` and `residual` (added before the
activation).
"""

from . import nn
from .backend import (
    BackendUnavailable,
    backend_for,
    get_backend_preference,
    set_backend,
    use_backend,
)
from .batchnorm import fold_batchnorm
from .conv import (
    conv1d,
    conv2d,
    conv3d,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)
from .deform import deform_conv2d
from .depthwise_separable import depthwise_separable_conv2d
from .epilogue import ACTIVATION_NAMES
from .fp8 import conv2d_fp8, conv3d_fp8, depthwise_separable_conv2d_fp8, fp8_unavailable
from .geometry import ConvGeometry, conv_output_length, output_shape, transposed_output_length
from .local_conv import local_conv2d
from .optimize import OptimizeReport, optimize
from .patch import PatchReport, patch
from .quantize import quantize_fp8, quantize_weight_fp8
from .separable import SeparableFactors, factorize_separable, separable_conv2d

__all__ = [
    "ACTIVATION_NAMES",
    "BackendUnavailable",
    "ConvGeometry",
    "OptimizeReport",
    "PatchReport",
    "SeparableFactors",
    "backend_for",
    "conv1d",
    "conv2d",
    "conv2d_fp8",
    "conv3d",
    "conv3d_fp8",
    "conv_output_length",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "deform_conv2d",
    "depthwise_separable_conv2d",
    "depthwise_separable_conv2d_fp8",
    "factorize_separable",
    "fold_batchnorm",
    "fp8_unavailable",
    "get_backend_preference",
    "local_conv2d",
    "nn",
    "optimize",
    "output_shape",
    "patch",
    "quantize_fp8",
    "quantize_weight_fp8",
    "separable_conv2d",
    "set_backend",
    "transposed_output_length",
    "use_backend",
]
