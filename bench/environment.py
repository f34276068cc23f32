"""What a benchmark ran on: device, driver, library versions, date and code version.

Every result file carries this, so a number can always be traced to the hardware and the code
that produced it. On the lent GPU machines the working tree arrives without git metadata, so
the commit can also come from FOVEAL_GIT_COMMIT, and a digest of the kernel and bench sources
identifies the code either way.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def _command_output(args: list[str], cwd: Path | None = None) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the source tree; FOVEAL_GIT_COMMIT wins where git is unavailable."""
    commit = _command_output(["git", "rev-parse", "HEAD"], cwd=_PACKAGE_DIR)
    if commit is None:
        return os.environ.get("FOVEAL_GIT_COMMIT") or None, None
    status = _command_output(["git", "status", "--porcelain", "--untracked-files=no"],
                             cwd=_PACKAGE_DIR)
    return commit, status is not None


def source_digest() -> str:
    """SHA-256 over the kernel and bench sources: identifies the code without git."""
    import foveal.kernels

    digest = hashlib.sha256()
    for folder in (Path(foveal.kernels.__file__).parent, _PACKAGE_DIR):
        for path in sorted(folder.glob("*.py")) + sorted(folder.glob("*.toml")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def driver_version() -> str | None:
    smi = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if smi:
        return smi.splitlines()[0].strip()
    query = getattr(torch._C, "_cuda_getDriverVersion", None)  # e.g. 12040 -> "12.4"
    if torch.cuda.is_available() and query is not None:
        version = query()
        return f"CUDA driver API {version // 1000}.{version % 1000 // 10}"
    return None


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def describe_device(device: torch.device) -> dict[str, Any]:
    """The device's name and properties; GPU-only fields are None on a CPU."""
    described: dict[str, Any] = {
        "device": f"CPU ({platform.processor() or platform.machine() or 'unknown'})",
        "device_type": device.type, "capability": None, "multiprocessors": None,
        "memory_bytes": None, "l2_cache_bytes": None, "driver": None,
        "cuda": torch.version.cuda, "cudnn": None, "cpu_count": os.cpu_count(),
    }
    if device.type != "cuda":
        return described
    props = torch.cuda.get_device_properties(device)
    return {**described, "device": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_bytes": props.total_memory,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None), "driver": driver_version(),
            "cudnn": torch.backends.cudnn.version()}


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions, date and code identity for a result file."""
    from foveal.kernels.autotune import MAX_CONFIGS_ENV
    from foveal.kernels.backend import backend_for
    from foveal.kernels.igemm import fp32_convolutions_use_tf32

    commit, dirty = git_commit()
    return {
        **describe_device(device),
        "backend": backend_for(device),
        "fp32_uses_tf32": fp32_convolutions_use_tf32(),
        # configs each autotuned launch may try (make gpu-check caps them); None: all
        "autotune_max_configs": int(os.environ.get(MAX_CONFIGS_ENV) or 0) or None,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "torchvision": _version("torchvision"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "source_digest": source_digest(),
    }
