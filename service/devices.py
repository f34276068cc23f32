"""Device names as the model repository and `foveal serve` take them: auto, cpu, cuda, cuda:N.

Free of torch, so the command line's parser stays light; turning a name into a torch.device is
`server.resolve_device`'s job.
"""

from __future__ import annotations

import re

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(value: object) -> str:
    """`value` if it names a device, else a ValueError saying what a device name is."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def check_devices(values: object) -> tuple[str, ...]:
    """A non-empty list of distinct device names (several instances on one device are
    `instances`, not a device named twice)."""
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"devices must be a non-empty list of device names, got {values!r}")
    devices = tuple(check_device(v) for v in values)
    repeated = sorted({d for d in devices if devices.count(d) > 1})
    if repeated:
        raise ValueError(f"devices name {repeated} more than once; for several instances on "
                         "one device set instances")
    return devices


def parse_devices(text: str) -> tuple[str, ...]:
    """A comma-separated device list from the command line: "cuda:0,cuda:1"."""
    return check_devices([part.strip() for part in text.split(",") if part.strip()])


def check_instances(value: object) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"instances must be a positive integer, got {value!r}")
    return value
