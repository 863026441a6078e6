"""What an engine is built for: a named GPU (with its compute capability) or ``cpu``.

Names are short keys (``h200``, ``h100``, ``a100``, ``l40s``, ...) matched against what
``torch.cuda.get_device_name`` reports ("NVIDIA H100 80GB HBM3" -> ``h100``). A GPU this table does
not know is named by a slug of its device name, with the capability torch reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from kiln.errors import KilnError

# key -> (display name, compute capability). Longer keys sharing a prefix come first in matching.
KNOWN_GPUS: dict[str, tuple[str, tuple[int, int]]] = {
    "b200": ("NVIDIA B200", (10, 0)),
    "gh200": ("NVIDIA GH200", (9, 0)),
    "h200": ("NVIDIA H200", (9, 0)),
    "h100": ("NVIDIA H100", (9, 0)),
    "h20": ("NVIDIA H20", (9, 0)),
    "l40s": ("NVIDIA L40S", (8, 9)),
    "l40": ("NVIDIA L40", (8, 9)),
    "l4": ("NVIDIA L4", (8, 9)),
    "rtx4090": ("NVIDIA GeForce RTX 4090", (8, 9)),
    "a100": ("NVIDIA A100", (8, 0)),
    "a10g": ("NVIDIA A10G", (8, 6)),
    "a10": ("NVIDIA A10", (8, 6)),
    "rtx3090": ("NVIDIA GeForce RTX 3090", (8, 6)),
    "t4": ("NVIDIA T4", (7, 5)),
    "v100": ("NVIDIA V100", (7, 0)),
}
CPU = "cpu"


@dataclass(frozen=True)
class GpuTarget:
    """A build target: ``name`` (key or ``cpu``), a display name and the compute capability."""

    name: str
    display_name: str
    compute_capability: tuple[int, int] | None = None

    @property
    def is_cpu(self) -> bool:
        """Whether this is the ``cpu`` target (no GPU)."""
        return self.name == CPU

    @property
    def sm(self) -> str:
        """``sm_90`` style, or ``cpu``."""
        if self.compute_capability is None:
            return CPU
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"

    def describe(self) -> str:
        """Human form for messages: ``NVIDIA H200 (sm_90)`` or ``no GPU (cpu)``."""
        return "no GPU (cpu)" if self.is_cpu else f"{self.display_name} ({self.sm})"

    def to_dict(self) -> dict:
        """JSON-ready form for engine.json."""
        cc = list(self.compute_capability) if self.compute_capability else None
        return {"name": self.name, "display_name": self.display_name, "compute_capability": cc,
                "sm": self.sm}

    @classmethod
    def from_dict(cls, data: dict) -> "GpuTarget":
        """Inverse of ``to_dict``."""
        cc = data.get("compute_capability")
        return cls(str(data["name"]), str(data.get("display_name", data["name"])),
                   tuple(cc) if cc else None)


CPU_TARGET = GpuTarget(CPU, "CPU", None)


def _slug(device_name: str) -> str:
    s = device_name.lower().replace("nvidia", "").replace("geforce", "")
    return re.sub(r"[^a-z0-9]+", "", s)


def canonical_gpu_key(device_name: str) -> str:
    """Short key of a GPU from its device name (``NVIDIA H100 80GB HBM3`` -> ``h100``)."""
    slug = _slug(device_name)
    for key in sorted(KNOWN_GPUS, key=len, reverse=True):
        if slug.startswith(key):
            return key
    return slug or "unknown-gpu"


def target_from_name(name: str) -> GpuTarget:
    """A target from a user-given name (``h200``, ``NVIDIA A100-SXM4-80GB``, ``cpu``)."""
    if name.strip().lower() == CPU:
        return CPU_TARGET
    key = canonical_gpu_key(name)
    if key not in KNOWN_GPUS:
        known = ", ".join(list(KNOWN_GPUS) + [CPU])
        raise KilnError(f"unknown target GPU {name!r}; use one of {known}, or build on the GPU "
                        "itself with --target-gpu auto")
    display, cc = KNOWN_GPUS[key]
    return GpuTarget(key, display, cc)


def device_target(device: torch.device | str) -> GpuTarget:
    """The target that describes a runtime device (a CUDA device's GPU, or ``cpu``)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return CPU_TARGET
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    device_name = torch.cuda.get_device_name(index)
    cc = tuple(torch.cuda.get_device_capability(index))
    key = canonical_gpu_key(device_name)
    display = KNOWN_GPUS[key][0] if key in KNOWN_GPUS else device_name
    return GpuTarget(key, display, (int(cc[0]), int(cc[1])))


def resolve_target(name: str | None) -> GpuTarget:
    """``auto``/None: this machine's first GPU, or ``cpu`` without one; otherwise ``target_from_name``."""
    if name is None or name == "auto":
        return device_target("cuda") if torch.cuda.is_available() else CPU_TARGET
    return target_from_name(name)
