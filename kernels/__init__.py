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
from .conv import conv1d, conv2d, conv3d
from .deform import deform_conv2d
from .epilogue import ACTIVATION_NAMES
from .geometry import ConvGeometry, conv_output_length, output_shape, transposed_output_length
from .nn import patch

__all__ = [
    "ACTIVATION_NAMES",
    "BackendUnavailable",
    "ConvGeometry",
    "backend_for",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_output_length",
    "deform_conv2d",
    "fold_batchnorm",
    "get_backend_preference",
    "nn",
    "output_shape",
    "patch",
    "set_backend",
    "transposed_output_length",
    "use_backend",
]
