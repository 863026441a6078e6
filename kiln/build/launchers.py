"""Triton's host-side launchers as engine data: recorded at build, compiled by the loading machine.

Triton compiles one small C module per kernel signature (its "launcher") with the system C
compiler when a kernel first runs, one after another, and caches it by the hash of its C source.
An engine's kernel pack (kiln.build.kernel_cache) does not make the loading machine import
launchers the build machine compiled (unless KILN_ENGINE_KERNELS=all). Instead it records each
launcher's signature (plain type names such as "*bf16" or "i32") and the sha256 of the C source
Triton generated from it; at load, this machine's Triton generates the source again from the
signature, and only if its hash is the recorded one, compiles it, several at a time in the
background while the weights load, into the cache entry Triton itself would have made at the
kernel's first launch.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger("kiln")

MEMBER = "launchers.json"  # the pack member that holds the specs
_LAUNCHER_NAME = "__triton_launcher"
_ORIGINAL = "_kiln_recorded_from"  # on the recording wrapper: Triton's own make_launcher
_SIG_TYPE_RE = re.compile(r"^[A-Za-z0-9_*<>\[\], ]{1,80}$")


def _nvidia_driver():
    """Triton's NVIDIA backend driver module (None where this Triton has none)."""
    try:
        from triton.backends.nvidia import driver
    except Exception:  # noqa: BLE001 - any import failure means: nothing to record or build
        return None
    return driver if hasattr(driver, "make_launcher") else None


def _sig_to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_sig_to_json(v) for v in value]
    if isinstance(value, str) and _SIG_TYPE_RE.match(value):
        return value
    raise ValueError(f"unexpected signature entry {value!r}")


def _sig_from_json(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_sig_from_json(v) for v in value)
    if isinstance(value, str) and _SIG_TYPE_RE.match(value):
        return value
    raise ValueError(f"unexpected signature entry {value!r}")


def launcher_spec(signature: dict, tensordesc_meta: Any, src: str) -> dict[str, Any] | None:
    """A launcher as data: its signature's type names in order, which tensor-descriptor arguments
    were lowered to TMA descriptors, and the sha256 of the C source Triton made of them (None
    when the signature holds anything but type names)."""
    try:
        types = [_sig_to_json(v) for v in signature.values()]
    except ValueError:
        return None
    tma = None if tensordesc_meta is None else [m is not None for m in tensordesc_meta]
    return {"signature": types, "tma": tma, "src_sha256": hashlib.sha256(src.encode()).hexdigest()}


def record_into(specs: dict[str, dict[str, Any]]) -> bool:
    """From now on, every launcher this process's Triton makes adds its launcher_spec to ``specs``
    (keyed by the hash of its C source), until stop_recording. False where this Triton has no
    NVIDIA launcher to record (nothing is wrapped)."""
    drv = _nvidia_driver()
    if drv is None:
        return False
    original = getattr(drv.make_launcher, _ORIGINAL, drv.make_launcher)

    def recording_make_launcher(constants, signature, tensordesc_meta):
        src = original(constants, signature, tensordesc_meta)
        try:
            spec = launcher_spec(signature, tensordesc_meta, src)
        except Exception:  # noqa: BLE001 - never let the recording break a launch
            spec = None
        # one spec per C source: signatures that differ only in what their pointers point to
        # make the same launcher (Triton caches it by the hash of its source)
        if spec is not None:
            specs.setdefault(spec["src_sha256"], spec)
        return src

    setattr(recording_make_launcher, _ORIGINAL, original)
    drv.make_launcher = recording_make_launcher
    return True


def stop_recording() -> None:
    """Give Triton back its own make_launcher (record_into)."""
    drv = _nvidia_driver()
    if drv is not None and hasattr(drv.make_launcher, _ORIGINAL):
        drv.make_launcher = getattr(drv.make_launcher, _ORIGINAL)


def launcher_source(spec: dict[str, Any]) -> str | None:
    """This machine's Triton's C source for the launcher ``spec``, or None when the spec is
    malformed or the source differs from the one recorded (another Triton, or a launcher that
    depends on more than its signature)."""
    drv = _nvidia_driver()
    if drv is None or not isinstance(spec, dict):
        return None
    make = getattr(drv.make_launcher, _ORIGINAL, drv.make_launcher)
    try:
        signature = {i: _sig_from_json(v) for i, v in enumerate(spec["signature"])}
        tma = spec.get("tma")
        meta = None if tma is None else [{} if flag else None for flag in tma]
        src = make({}, signature, meta)
    except Exception:  # noqa: BLE001 - a spec this Triton cannot turn into a launcher
        return None
    if hashlib.sha256(src.encode()).hexdigest() != spec.get("src_sha256"):
        return None
    return src


def build_launcher(spec: dict[str, Any]) -> str:
    """Compile one recorded launcher into this process's Triton cache, where Triton looks for it
    when the kernel first runs. Returns ``built``, ``present`` or ``mismatch`` (not built: the
    source this Triton makes from the spec is not the recorded one). Raises if the compiler fails."""
    from triton.runtime.build import _build, platform_key
    from triton.runtime.cache import get_cache_manager

    src = launcher_source(spec)
    if src is None:
        return "mismatch"
    drv = _nvidia_driver()
    key = hashlib.sha256((src + platform_key()).encode("utf-8")).hexdigest()
    cache = get_cache_manager(key)
    filename = f"{_LAUNCHER_NAME}{sysconfig.get_config_var('EXT_SUFFIX')}"
    if cache.get_file(filename) is not None:
        return "present"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, _LAUNCHER_NAME + ".c")
        with open(path, "w") as f:
            f.write(src)
        so = _build(_LAUNCHER_NAME, path, tmp, drv.library_dirs(), drv.include_dirs,
                    drv.libraries, [])
        with open(so, "rb") as f:
            cache.put(f.read(), filename, binary=True)
    return "built"


def build_launchers(specs: list[dict[str, Any]], workers: int | None = None) -> dict[str, Any]:
    """build_launcher for every spec, ``workers`` at a time (default: the CPU count, at most 16).
    Returns counts of built, present, mismatch and failed, and the seconds taken; never raises."""
    started = time.perf_counter()
    counts = {"built": 0, "present": 0, "mismatch": 0, "failed": 0}
    workers = workers or max(1, min(16, os.cpu_count() or 1))

    def one(spec):
        try:
            return build_launcher(spec)
        except Exception as exc:  # noqa: BLE001 - the kernel's first launch compiles it instead
            logger.debug("launcher not built here: %s: %s", type(exc).__name__, exc)
            return "failed"

    unique = {}
    for spec in specs:  # a pack records each source once; never compile one twice at a time
        unique.setdefault(spec.get("src_sha256") if isinstance(spec, dict) else id(spec), spec)
    specs = list(unique.values())
    if specs:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-launcher") as pool:
            for result in pool.map(one, specs):
                counts[result] += 1
    counts["seconds"] = round(time.perf_counter() - started, 3)
    return counts


_builds: list[tuple[Any, dict[str, Any]]] = []  # (thread, its result once done), newest last


def start_launcher_build(specs: list[dict[str, Any]], report: dict[str, Any] | None = None) -> None:
    """build_launchers in a background thread (the weights load meanwhile); wait_launcher_build
    joins it; its counts also land in ``report["launchers"]``. A kernel that runs before its
    launcher is ready compiles it itself, as Triton does."""
    for module in ("triton.runtime.build", "triton.runtime.cache"):  # here, not first in the thread
        importlib.import_module(module)
    _nvidia_driver()
    result: dict[str, Any] = {}

    def run():
        counts = build_launchers(specs)
        result.update(counts)
        if report is not None:
            report["launchers"] = counts
        logger.info("kernel launchers: %d compiled here in %.2f s (%d already cached, %d not "
                    "reproducible, %d failed)", counts["built"], counts["seconds"],
                    counts["present"], counts["mismatch"], counts["failed"])

    thread = threading.Thread(target=run, name="kiln-launchers", daemon=False)
    _builds.append((thread, result))
    thread.start()


def wait_launcher_build(timeout: float | None = None) -> dict[str, Any] | None:
    """Wait for the newest background launcher build (start_launcher_build); its counts, or None
    when there was none or it is still running."""
    if not _builds:
        return None
    thread, result = _builds[-1]
    thread.join(timeout)
    return dict(result) if result else None
