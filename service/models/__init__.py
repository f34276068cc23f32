"""Models the service runs: analytic filter banks, torchvision architectures, user modules.

Each kind registers a builder in `KINDS`; the repository (TOML or built-in) calls it.
"""

from .base import InputSpec, OutputSpec, ServedModel
from .registry import BUILTIN_MODELS, KINDS, build_model

__all__ = ["BUILTIN_MODELS", "KINDS", "InputSpec", "OutputSpec", "ServedModel", "build_model"]
