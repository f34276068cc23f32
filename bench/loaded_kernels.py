"""What the kernels a process compiled and loaded on its GPU use: registers, local memory
(spills) and shared memory, with the configuration and constexprs each was compiled for.

`record_compiles()` installs Triton's post-compile hook, which hands over each compilation's
specialization (the same JSON `foveal compilecheck` compiles offline); `loaded_kernels()` then
reads each compiled kernel from its JIT function's per-device cache. Triton fills `n_regs` and
`n_spills` when the binary is loaded onto the device (`n_spills` is the local memory per
thread in 4-byte words), so a kernel never launched is loaded here first. Under Triton's
interpreter nothing is compiled and the list stays empty.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (JIT function, device, cache key, specialization JSON) of every compilation seen
_COMPILED: list[tuple[Any, Any, Any, str]] = []
_POINTER_DTYPES = {"*fp16": "float16", "*bf16": "bfloat16", "*fp32": "float32",
                   "*fp64": "float64"}


def record_compiles() -> None:
    """Note every kernel Triton compiles from now on in this process (idempotent)."""
    from triton import knobs

    if getattr(knobs.runtime.jit_post_compile_hook, "foveal_gpu_check", False):
        return

    def hook(*, key: Any, fn: Any, compile: dict[str, Any], **_: Any) -> None:
        _COMPILED.append((fn.jit_function, compile["device"], key,
                          compile["specialization_data"]))

    hook.foveal_gpu_check = True  # type: ignore[attr-defined]
    knobs.runtime.jit_post_compile_hook = hook


def kernel_dtype(signature: dict[str, str]) -> str | None:
    """The floating dtype a kernel computes in: its narrowest floating pointer argument."""
    found = {_POINTER_DTYPES[t] for t in signature.values() if t in _POINTER_DTYPES}
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        if dtype in found:
            return dtype
    return None


def _plain(value: Any) -> Any:
    """A constant as JSON holds it: {"constexpr": v} unwrapped, tuples as lists."""
    if isinstance(value, dict) and set(value) == {"constexpr"}:
        value = value["constexpr"]
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _config_names() -> dict[int, set[str]]:
    """Per JIT function (by id), the names its autotuner's configs set."""
    from triton.runtime.autotuner import Autotuner

    from .offline_compiler import jit_function
    from .profile import _kernel_objects

    names: dict[int, set[str]] = {}
    for _, obj in _kernel_objects():
        if isinstance(obj, Autotuner):
            names[id(jit_function(obj))] = {k for c in obj.configs for k in c.kwargs}
    return names


def describe(jit_fn: Any, kernel: Any, specialization: str,
             config_names: set[str]) -> dict[str, Any]:
    """One compiled kernel as plain data (figures None where the binary could not load)."""
    spec = json.loads(specialization)
    constexpr_names = {p.num: p.name for p in jit_fn.params if p.is_constexpr}
    constants = {constexpr_names[k[0]]: _plain(v)
                 for k, v in zip(spec["constant_keys"], spec["constant_vals"], strict=True)
                 if len(k) == 1 and k[0] in constexpr_names}
    options = spec.get("options", {})
    config = {k: v for k, v in constants.items() if k in config_names}
    config.update(num_warps=options.get("num_warps"), num_stages=options.get("num_stages"))
    with contextlib.suppress(Exception):  # a kernel that cannot load reports no figures
        kernel._init_handles()
    spills = getattr(kernel, "n_spills", None)
    target = kernel.metadata.target
    return {
        "kernel": jit_fn.__name__, "module": jit_fn.__module__,
        "arch": f"sm_{target.arch}" if getattr(target, "backend", None) == "cuda" else None,
        "dtype": kernel_dtype(spec["signature"]), "config": config,
        "constexprs": {k: v for k, v in constants.items() if k not in config_names},
        "registers": getattr(kernel, "n_regs", None), "spills": spills,
        "local_bytes": None if spills is None else 4 * spills,
        "shared_bytes": kernel.metadata.shared, "specialization": specialization,
    }


def loaded_kernels() -> list[dict[str, Any]]:
    """Every kernel compiled in this process since `record_compiles()`, one entry each."""
    if not _COMPILED:
        return []
    names = _config_names()
    found = []
    for jit_fn, device, key, specialization in _COMPILED:
        kernel = jit_fn.device_caches[device][0].get(key)
        if kernel is not None and hasattr(kernel, "metadata"):
            found.append(describe(jit_fn, kernel, specialization, names.get(id(jit_fn), set())))
    return found


def kernel_id(entry: dict[str, Any]) -> str:
    """Two entries with one id are the same compiled kernel (same function and specialization)."""
    return f"{entry['module']}.{entry['kernel']} {entry['specialization']}"


def dump(path: Path, seen_in: str) -> int:
    """Write this process's loaded kernels to `path` (whole or not at all); returns how many."""
    from .report import write_json

    entries = [{**e, "seen_in": seen_in} for e in loaded_kernels()]
    if entries or path.exists():
        write_json({"kernels": entries}, path)
    return len(entries)


def merge(paths: Sequence[Path], earlier: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The distinct kernels of several dumps (and of an earlier run), first seen first."""
    merged: dict[str, dict[str, Any]] = {}
    for entry in earlier:
        merged.setdefault(kernel_id(entry), entry)
    for path in sorted(paths):
        for entry in json.loads(path.read_text())["kernels"]:
            merged.setdefault(kernel_id(entry), entry)
    return list(merged.values())
