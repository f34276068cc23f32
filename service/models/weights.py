"""Reading a user's weights file and checking it fits the model before loading it.

A torchvision-style `state_dict` saved with `torch.save` (optionally wrapped as
{"state_dict": ...} or {"model": ...}, or with DataParallel's "module." prefixes), or a
.safetensors file. Nothing in the file is executed (weights_only loading).
"""

from __future__ import annotations

from pathlib import Path

import torch


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict file without executing code from it."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path}: reading .safetensors weights needs the safetensors "
                             "package (pip install safetensors)") from None
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise ValueError(f"{path}: not a loadable PyTorch weights file: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_fit(name: str, what: str, path: str, expected: dict[str, torch.Tensor],
              state: dict[str, torch.Tensor]) -> None:
    """Name the keys and shapes of a weights file that does not fit the model `what`."""
    problems = []
    for label, keys in (("missing", [k for k in expected if k not in state]),
                        ("unexpected", [k for k in state if k not in expected]),
                        ("wrong shape", [f"{k} {tuple(state[k].shape)} (wants "
                                         f"{tuple(v.shape)})" for k, v in expected.items()
                                         if k in state and state[k].shape != v.shape])):
        if keys:
            problems.append(f"{label} {keys[:4]}{' and more' if len(keys) > 4 else ''}")
    if problems:
        raise ValueError(f"model {name!r}: {path} does not fit {what}: " + "; ".join(problems))
