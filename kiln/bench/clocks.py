"""The GPU's SM clock, power draw and clock-event reasons, sampled by nvidia-smi while a benchmark
runs, so that a figure taken at a lowered clock says so.

A Hopper card running tensor-core work at its power limit (700 W on the H100 and H200 SXM) holds
the limit by lowering the SM clock, to about 1.5 GHz from 1.98 on the H200 at 1000 x 128/128
(`benchmarks/profile/README.md`); nvidia-smi then reports the reason bit "software power cap".
The sampler runs `nvidia-smi --query-gpu=... -lms INTERVAL` in the background, and each phase the
caller marks gets the samples taken while it ran: mean and range of the SM clock, mean and maximum
power, and the reasons seen. Without nvidia-smi (or off CUDA) it samples nothing and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

SAMPLE_FIELDS = "timestamp,clocks.sm,power.draw"
# The reasons' field under its newer name, then its older one.
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")
LIMIT_FIELDS = "clocks.max.sm,power.limit"
# NVML's clock-event reason bits.
REASONS = ((0x1, "idle"), (0x2, "application clock setting"), (0x4, "power cap"),
           (0x8, "hardware slowdown"), (0x10, "sync boost"), (0x20, "thermal (software)"),
           (0x40, "thermal (hardware)"), (0x80, "power brake"), (0x100, "display clock setting"))


def reason_names(mask: int) -> list[str]:
    """The names of the reason bits set in ``mask`` (unknown bits as hex)."""
    names = [name for bit, name in REASONS if mask & bit]
    rest = mask & ~sum(bit for bit, _ in REASONS)
    return names + ([hex(rest)] if rest else [])


def parse_timestamp(text: str) -> float | None:
    """nvidia-smi's local ``YYYY/MM/DD HH:MM:SS.mmm`` as seconds since the epoch."""
    whole, _, frac = text.strip().partition(".")
    try:
        t = time.mktime(time.strptime(whole, "%Y/%m/%d %H:%M:%S"))
        return t + (float("0." + frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None


def parse_sample(line: str) -> tuple[float, float, float, int | None] | None:
    """(time, SM MHz, watts, reason mask or None) of one CSV line, or None if it is not one."""
    f = [x.strip() for x in line.split(",")]
    if len(f) < 3:
        return None
    t = parse_timestamp(f[0])
    try:
        sm, watts = float(f[1]), float(f[2])
    except ValueError:
        return None
    mask = None
    if len(f) > 3:
        try:
            mask = int(f[3], 16)
        except ValueError:
            mask = None
    return None if t is None else (t, sm, watts, mask)


def summarize(samples: list[tuple[float, float, float, int | None]]) -> dict | None:
    """Mean and range of the SM clock, mean and maximum power, the reasons seen (idle left out)."""
    if not samples:
        return None
    sm = [s[1] for s in samples]
    watts = [s[2] for s in samples]
    masks = [s[3] for s in samples if s[3] is not None]
    seen = 0
    for m in masks:
        seen |= m
    return {"samples": len(samples), "sm_mhz_mean": sum(sm) / len(sm), "sm_mhz_min": min(sm),
            "sm_mhz_max": max(sm), "power_w_mean": sum(watts) / len(watts), "power_w_max": max(watts),
            "reasons": [r for r in reason_names(seen) if r != "idle"] if masks else None}


def smi_targets(device) -> list[str]:
    """nvidia-smi ``-i`` values that may name a torch CUDA device, the surest first: its UUID and
    PCI address where torch gives them, its CUDA_VISIBLE_DEVICES entry, its index; none off CUDA."""
    if getattr(device, "type", None) != "cuda":
        return []
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    out = []
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        out.append(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    if all(hasattr(props, k) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        out.append(f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible):
        out.append(visible[index])
    out.append(str(index))
    return list(dict.fromkeys(out))


def _stop_sampling(proc: subprocess.Popen, path: Path | None) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if path is not None:
        path.unlink(missing_ok=True)


class ClockSampler:
    """nvidia-smi sampling one GPU (the first of ``target``'s candidates that nvidia-smi answers
    for) every ``interval_ms`` in the background; ``mark(phase)`` starts a
    phase (ending the one before), ``close()`` stops sampling and returns
    ``{"limits": {...}, "phases": {phase: summary}}``, or None when nothing could be sampled.
    Phases whose names begin with ``idle`` are not reported."""

    def __init__(self, target: str | list[str] | None, interval_ms: int = 100):
        self.target: str | None = None
        self.marks: list[tuple[float, str]] = []
        self.proc = None
        self.path: Path | None = None
        self.limits: dict = {}
        if not target or shutil.which("nvidia-smi") is None:
            return
        query = None
        for candidate in [target] if isinstance(target, str) else target:
            self.target = candidate
            query = self._query()
            if query is not None:
                break
        if query is None:
            self.target = None
            return
        fd, name = tempfile.mkstemp(suffix=".csv", prefix="kiln-clocks-")
        self.path = Path(name)
        with os.fdopen(fd, "w") as out:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "-i", self.target, f"--query-gpu={query}", "--format=csv,noheader,nounits",
                 "-lms", str(interval_ms)], stdout=out, stderr=subprocess.DEVNULL)
        # A run that raises before close() must not leave nvidia-smi sampling after the process.
        self._stop = weakref.finalize(self, _stop_sampling, self.proc, self.path)

    def _smi(self, fields: str) -> str | None:
        try:
            r = subprocess.run(["nvidia-smi", "-i", self.target, f"--query-gpu={fields}",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    def _query(self) -> str | None:
        for field in REASON_FIELDS + (None,):
            query = SAMPLE_FIELDS + ("," + field if field else "")
            if self._smi(query) is not None:
                limits = self._smi(LIMIT_FIELDS)
                if limits:
                    parts = [p.strip() for p in limits.splitlines()[0].split(",")]
                    for key, value in zip(("sm_mhz_max", "power_w_limit"), parts):
                        try:
                            self.limits[key] = float(value)
                        except ValueError:
                            pass
                return query
        return None

    @property
    def active(self) -> bool:
        return self.proc is not None

    def mark(self, phase: str) -> None:
        self.marks.append((time.time(), phase))

    def close(self) -> dict | None:
        if self.proc is None:
            return None
        self.mark("idle")
        time.sleep(0.25)  # the sample covering the last phase's end
        self._stop.detach()
        _stop_sampling(self.proc, None)
        self.proc = None
        lines = self.path.read_text().splitlines() if self.path and self.path.exists() else []
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        phases: dict[str, list] = {}
        for line in lines:
            s = parse_sample(line)
            if s is None:
                continue
            phase = None
            for at, name in self.marks:
                if at <= s[0]:
                    phase = name
            if phase is not None and not phase.startswith("idle"):
                phases.setdefault(phase, []).append(s)
        return {"limits": self.limits,
                "phases": {name: summarize(samples) for name, samples in phases.items()}}


def start(device, enabled: bool = True) -> ClockSampler:
    """A sampler for a torch device (sampling nothing when ``enabled`` is false or off CUDA)."""
    return ClockSampler(smi_targets(device) if enabled else None)


def finish(sampler: ClockSampler, phase: str = "run") -> dict | None:
    """Stop ``sampler``; ``phase``'s summary with the card's limits beside it, or None."""
    closed = sampler.close()
    if not closed or not closed["phases"].get(phase):
        return None
    return {**closed["phases"][phase], "limits": closed["limits"]}


def describe(summary: dict | None, limits: dict | None = None) -> str:
    """One line for a phase's summary, e.g. ``SM clock 1529 MHz mean (1245-1980 of 1980), power
    649 W mean, 702 max of a 700 W limit; clock-event reasons: power cap``."""
    if not summary:
        return "no samples"
    limits = limits or {}
    top = f" of {limits['sm_mhz_max']:.0f}" if "sm_mhz_max" in limits else ""
    cap = f" of a {limits['power_w_limit']:.0f} W limit" if "power_w_limit" in limits else ""
    line = (f"SM clock {summary['sm_mhz_mean']:.0f} MHz mean ({summary['sm_mhz_min']:.0f}-"
            f"{summary['sm_mhz_max']:.0f}{top}), power {summary['power_w_mean']:.0f} W mean, "
            f"{summary['power_w_max']:.0f} max{cap}")
    if summary.get("reasons"):
        line += "; clock-event reasons: " + ", ".join(summary["reasons"])
    return line
