"""Compiled kernels inside the engine: build once, start anywhere without compiling.

A kiln engine runs dozens of Triton (and Gluon) kernel variants. Triton compiles each one the
first time a process meets it and keeps the result in its on-disk cache (``~/.triton/cache`` or
``TRITON_CACHE_DIR``), one directory per compilation key. A machine that has never run the engine
compiles them all during its first start-up: on an H200 with an empty Triton cache the 8B fp8
engine started in 25.2 s, against 8.7 s with this pack (int4-wo: 36.9 against 8.6 s;
benchmarks/kernel-pack).

``kiln build`` on the target GPU therefore starts the finished engine once in a fresh process,
as ``LLM(ENGINE_DIR)`` would (load, memory profile, warm-up, graph capture), with a Triton cache
manager that records every key the start-up looks up, and packs those cache entries into
``ENGINE_DIR/kernels.tar.gz``. On an fp8 GPU it starts the engine a second time with an fp8 KV
cache (unless the engine's cache is fp8 already), so that ``--kv-cache-dtype fp8`` at serve time
finds its kernels too. Loading the engine on a CUDA device installs the entries its
local cache lacks before any kernel runs, so the start-up finds them on disk.

Why this is safe: Triton's key hashes the kernel's source, its specialization, the compile options,
the target architecture and Triton itself (compiler and backend libraries), so an entry is used
only by exactly the compilation that made it; an entry from another kiln or Triton is simply never
looked up. The install also skips the whole pack when the Triton version or the compute capability
recorded with it differs from this machine's, and never overwrites an entry already there.

What is installed: by default the GPU kernels (cubins, their IR and metadata: data that only the
CUDA driver loads). Triton also caches a host-side launcher per kernel signature, a C module it
compiles with the system compiler and imports into the process; the pack holds those too, but
loading an engine does not install them unless ``KILN_ENGINE_KERNELS=all``: they are native code
the build machine made, and an engine directory, like a checkpoint, should be data. The pack
records each launcher as data instead (its signature's type names and the hash of its C source),
and the loading machine's own Triton makes and compiles them (kiln.build.launchers), in parallel
in the background while the weights load, rather than one by one at each kernel's first launch
(``KILN_ENGINE_LAUNCHERS=0`` leaves them to that).

Group files (``__grp__*.json``) hold absolute paths of their entry's files on the machine that
wrote them; the pack stores them relative and the install writes them with this machine's paths,
after the files they name.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from kiln.build.launchers import MEMBER as LAUNCHERS_MEMBER
from kiln.build.launchers import record_into, start_launcher_build
from kiln.build.launchers import stop_recording as stop_recording_launchers
from kiln.build.gpu_target import device_target
from kiln.errors import KilnError

logger = logging.getLogger("kiln")

PACK_FILE = "kernels.tar.gz"
_GROUP_PREFIX = "__grp__"
# Triton names an entry's directory by the base32 of a sha256 (no padding).
_KEY_RE = re.compile(r"^[A-Z2-7]{16,128}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")
_DISABLE_ENV = "KILN_ENGINE_KERNELS"


def install_mode() -> str:
    """KILN_ENGINE_KERNELS: ``kernels`` (default: GPU kernels only), ``all`` (their host-side
    launchers too: native code the build machine compiled, so only for engines you trust) or
    ``0`` (none)."""
    value = os.environ.get(_DISABLE_ENV, "1").strip().lower()
    if value in ("0", "false", "no", "off", "none"):
        return "none"
    return "all" if value == "all" else "kernels"


def is_host_code(name: str) -> bool:
    """Whether a cache file is a native library the host process would load (Triton's launcher and
    driver-utility modules), as opposed to GPU code and its metadata, which only the driver reads."""
    n = name.lower()
    return n.endswith((".so", ".pyd", ".dll", ".dylib")) or ".so." in n


def triton_cache_dir() -> Path:
    """Triton's on-disk kernel cache directory in this process (TRITON_CACHE_DIR or the default)."""
    from triton import knobs

    return Path(knobs.cache.dir)


# ---------------------------------------------------------------------------------------------
# recording (in the process that starts the engine for the pack)


class _Recorder:
    """Which cache keys a process looked up while recording (keys of Triton's cache manager), and
    the host-side launchers it made (kiln.build.launchers.launcher_spec of each, by source hash)."""

    keys: list[str] = []
    launchers: dict[str, dict[str, Any]] = {}

    @classmethod
    def manager_class(cls):
        from triton.runtime.cache import FileCacheManager

        class RecordingCacheManager(FileCacheManager):
            def __init__(self, key, override=False, dump=False):
                super().__init__(key, override=override, dump=dump)
                if not override and not dump and key not in cls.keys:
                    cls.keys.append(key)

        return RecordingCacheManager


def start_recording() -> None:
    """From now on, every Triton cache lookup of this process is recorded, and the signature of
    every host-side launcher it makes (stop_recording, recorded_launchers)."""
    from triton import knobs

    _Recorder.keys = []
    _Recorder.launchers = {}
    knobs.cache.manager_class = _Recorder.manager_class()
    record_into(_Recorder.launchers)


def stop_recording() -> list[str]:
    """Stop recording; the keys looked up since start_recording, in order (the launchers made
    meanwhile stay readable through recorded_launchers until the next start_recording)."""
    from triton import knobs

    try:
        del knobs.cache.manager_class
    except (AttributeError, KeyError):
        pass
    stop_recording_launchers()
    keys, _Recorder.keys = list(_Recorder.keys), []
    return keys


def recorded_launchers() -> list[dict[str, Any]]:
    """The launcher specs (launcher_spec) recorded by the last start_recording..stop_recording."""
    return list(_Recorder.launchers.values())


# ---------------------------------------------------------------------------------------------
# packing and installing (plain file operations; tested on the CPU)


def _entry_files(key_dir: Path) -> list[Path]:
    """An entry's files worth packing: regular files with plain names (not Triton's lock or its
    temporary directories)."""
    if not key_dir.is_dir():
        return []
    return sorted(p for p in key_dir.iterdir()
                  if p.is_file() and p.name != "lock" and _FILE_RE.match(p.name))


def pack_entries(cache_dir: str | Path, keys: Iterable[str], out: str | Path,
                 launchers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the cache entries ``keys`` of ``cache_dir`` into the tar.gz ``out`` as KEY/FILE,
    group files with their children named relative, and the launcher specs (launcher_spec) as
    ``launchers.json``. Entries with no files are skipped.
    Returns {"entries", "files", "launchers", "bytes" (of the pack)}."""
    cache_dir = Path(cache_dir)
    entries = files = 0
    launchers = list(launchers or [])
    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        data = json.dumps(launchers).encode()
        info = tarfile.TarInfo(LAUNCHERS_MEMBER)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
        for key in keys:
            if not _KEY_RE.match(key):
                continue
            members = _entry_files(cache_dir / key)
            if not members:
                continue
            entries += 1
            for path in members:
                data = path.read_bytes()
                if path.name.startswith(_GROUP_PREFIX):
                    data = _relative_group(data)
                    if data is None:
                        continue
                info = tarfile.TarInfo(f"{key}/{path.name}")
                info.size = len(data)
                info.mtime = int(path.stat().st_mtime)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
                files += 1
    return {"entries": entries, "files": files, "launchers": len(launchers),
            "bytes": Path(out).stat().st_size}


def read_launchers(pack: str | Path) -> list[dict[str, Any]]:
    """The launcher specs a pack records (empty for a pack without them or a malformed list)."""
    with tarfile.open(pack, "r:gz") as tar:
        for member in tar:
            if member.name == LAUNCHERS_MEMBER and member.isfile():
                f = tar.extractfile(member)
                try:
                    specs = json.loads(f.read()) if f is not None else []
                except ValueError:
                    return []
                return [s for s in specs if isinstance(s, dict)] if isinstance(specs, list) else []
    return []


def _relative_group(data: bytes) -> bytes | None:
    """A group file's child paths reduced to their file names (None if it is not a group file)."""
    try:
        group = json.loads(data)
        children = group["child_paths"]
        rel = {name: Path(p).name for name, p in children.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return json.dumps({"child_paths": rel}).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".kiln-tmp-{os.getpid()}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def install_pack(pack: str | Path, cache_dir: str | Path, host_code: bool = False) -> dict[str, int]:
    """Put the pack's entries that ``cache_dir`` lacks into it. An entry whose group file is
    already there is left alone; within an entry, files first, the group file last (with this
    cache's absolute paths), each written through a temporary name. Member names other than
    KEY/FILE are ignored. Entries holding host code (is_host_code) are left out unless
    ``host_code``: loading an engine must not run native code it brought along, unasked.
    Returns counts of entries: installed, present, skipped (malformed), host_code_skipped."""
    cache_dir = Path(cache_dir)
    by_key: dict[str, dict[str, bytes]] = {}
    skipped = 0
    with tarfile.open(pack, "r:gz") as tar:
        for member in tar:
            if member.name == LAUNCHERS_MEMBER:
                continue  # read_launchers
            parts = member.name.split("/")
            if (not member.isfile() or len(parts) != 2 or not _KEY_RE.match(parts[0])
                    or not _FILE_RE.match(parts[1]) or parts[1].startswith(".")):
                skipped += 1
                continue
            f = tar.extractfile(member)
            if f is not None:
                by_key.setdefault(parts[0], {})[parts[1]] = f.read()
    installed = present = host_skipped = 0
    for key, files in by_key.items():
        if not host_code and any(is_host_code(n) for n in files):
            host_skipped += 1
            continue
        key_dir = cache_dir / key
        groups = [n for n in files if n.startswith(_GROUP_PREFIX)]
        if groups and all((key_dir / g).exists() for g in groups):
            present += 1
            continue
        if not groups and all((key_dir / n).exists() for n in files):
            present += 1
            continue
        key_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if not name.startswith(_GROUP_PREFIX) and not (key_dir / name).exists():
                _write_atomic(key_dir / name, data)
        ok = True
        for g in groups:
            try:
                rel = json.loads(files[g])["child_paths"]
                children = {c: str(key_dir / Path(n).name) for c, n in rel.items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                ok = False
                continue
            if not all(Path(p).exists() for p in children.values()):
                ok = False
                continue
            _write_atomic(key_dir / g, json.dumps({"child_paths": children}).encode())
        if ok:
            installed += 1
        else:
            skipped += 1
    return {"installed": installed, "present": present, "skipped": skipped,
            "host_code_skipped": host_skipped}


def install_engine_kernels(info: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Install an engine's packed kernels into this process's Triton cache, when they apply:
    a CUDA device with the compute capability they were compiled for, the same Triton, and
    KILN_ENGINE_KERNELS not 0 (install_mode: the host-side launchers only with ``all``). Returns
    what happened (also logged); never raises for a bad pack."""
    record = info.get("kernel_cache") or {}
    root = Path(info.get("path", "."))
    pack = root / PACK_FILE
    dev = torch.device(device)
    why = None
    if record.get("status") != "packed" or not pack.is_file():
        why = "the engine has no packed kernels"
    elif dev.type != "cuda":
        why = f"device {dev.type}"
    elif install_mode() == "none":
        why = f"{_DISABLE_ENV}=0"
    else:
        import triton

        cc = list(device_target(dev).compute_capability)
        if record.get("triton") != triton.__version__:
            why = f"packed with Triton {record.get('triton')}, this is {triton.__version__}"
        elif list(record.get("compute_capability") or []) != cc:
            why = f"packed for sm_{record.get('compute_capability')}, this GPU is {cc}"
    if why is not None:
        logger.debug("engine kernels not installed: %s", why)
        return {"installed": 0, "reason": why}
    started = time.perf_counter()
    mode = install_mode()
    try:
        counts = install_pack(pack, triton_cache_dir(), host_code=mode == "all")
    except (OSError, tarfile.TarError, EOFError) as exc:
        logger.warning("engine kernels not installed (%s: %s); they compile on first use",
                       type(exc).__name__, exc)
        return {"installed": 0, "reason": f"{type(exc).__name__}: {exc}"}
    counts["seconds"] = round(time.perf_counter() - started, 3)
    counts["mode"] = mode
    logger.info("engine kernels: %d of %d compiled entries installed into the Triton cache "
                "(%d already there) in %.2f s", counts["installed"], record.get("entries", 0),
                counts["present"], counts["seconds"])
    if counts["host_code_skipped"]:
        # The build machine's launchers were not installed: compile them here from their
        # recorded signatures, in parallel while the weights load (host code of this machine).
        try:
            specs = read_launchers(pack)
        except (OSError, tarfile.TarError, EOFError):
            specs = []
        if os.environ.get("KILN_ENGINE_LAUNCHERS", "1").strip() == "0":
            specs = []
        counts["launchers_building"] = len(specs)
        if specs:
            start_launcher_build(specs, report=counts)
            logger.info("%d host-side kernel launchers compiling here in the background (the "
                        "build machine's native code is installed only with %s=all)",
                        len(specs), _DISABLE_ENV)
        else:
            logger.info("%d host-side kernel launchers (native code from the build machine) left "
                        "to compile at first use; %s=all installs them, for engines you trust",
                        counts["host_code_skipped"], _DISABLE_ENV)
    return counts


# ---------------------------------------------------------------------------------------------
# the build's stage: start the engine in a fresh process and pack what it looked up


def record_and_pack(engine_dir: str | Path, device: str, out: str | Path) -> dict[str, Any]:
    """Start the engine at ``engine_dir`` on ``device`` as LLM() would (no packed kernels of its
    own installed), recording Triton's cache lookups, then pack the entries into ``out``.
    Run in a process of its own: kernels this process already holds in memory are not looked up."""
    from kiln.engine.llm_engine import LLMEngine
    from kiln.runner import memory

    os.environ[_DISABLE_ENV] = "0"
    # This start-up is one more process on a GPU that the build (or other work) shares: it runs
    # the memory profile like any start-up (the profile's forward compiles kernels too) but then
    # takes a small KV cache. The block count enters no kernel's specialization: a cache's
    # strides are multiples of block_size x kv heads x head dim whatever the count.
    cap = int(os.environ.get("KILN_KERNEL_PACK_KV_BLOCKS", "1024"))
    profiled = memory.num_kv_blocks_cuda

    def small_cache(block_bytes, cache, device_, peak):
        try:
            return min(cap, profiled(block_bytes, cache, device_, peak))
        except KilnError:
            return cap

    memory.num_kv_blocks_cuda = small_cache
    started = time.perf_counter()
    kv_dtypes = startup_kv_cache_dtypes(engine_dir, device)
    start_recording()
    try:
        for kv in kv_dtypes:
            engine = LLMEngine.from_args(str(engine_dir), device=device, kv_cache_dtype=kv)
            del engine
            gc.collect()
            torch.cuda.empty_cache()
    finally:
        keys = stop_recording()
        memory.num_kv_blocks_cuda = profiled
    startup = time.perf_counter() - started
    summary = pack_entries(triton_cache_dir(), keys, out, recorded_launchers())
    return {**summary, "keys_looked_up": len(keys), "kv_cache_dtypes": kv_dtypes,
            "startup_s": round(startup, 2)}


def startup_kv_cache_dtypes(engine_dir: str | Path, device: str) -> list[str]:
    """The KV-cache settings the recording start-ups take: the engine's own (auto), and, on a GPU
    with fp8 (sm_89+) for an engine whose cache is not fp8 already, ``fp8`` too, since
    ``--kv-cache-dtype fp8`` at serve time is common and its attention kernels are others."""
    from kiln.build.engine_dir import is_engine_dir, read_engine_info

    info = read_engine_info(engine_dir) if is_engine_dir(engine_dir) else {}
    dev = torch.device(device)
    if dev.type != "cuda" or ((info.get("kv_cache") or {}).get("dtype") == "fp8"):
        return ["auto"]
    return ["auto", "fp8"] if device_target(dev).compute_capability >= (8, 9) else ["auto"]


def build_kernel_pack(engine_dir: str | Path, device: torch.device,
                      timeout_s: float = 900.0) -> dict[str, Any]:
    """The build's kernel-pack stage: ``python -m kiln.build.kernel_cache ENGINE_DIR`` in a fresh
    process on ``device``; returns the record for engine.json (status packed or not-packed)."""
    import triton

    engine_dir = Path(engine_dir)
    out = engine_dir / PACK_FILE
    index = device.index if device.index is not None else torch.cuda.current_device()
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "kiln.build.kernel_cache", str(engine_dir),
           "--device", f"cuda:{index}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": _pythonpath()})
    except subprocess.TimeoutExpired:
        out.unlink(missing_ok=True)
        return {"status": "not-packed", "reason": f"the recording start-up ran over {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        out.unlink(missing_ok=True)
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"status": "not-packed", "reason": f"the recording start-up failed: {tail}"}
    summary = json.loads(lines[-1])
    return {"status": "packed", "file": PACK_FILE, "triton": triton.__version__,
            "compute_capability": list(device_target(device).compute_capability),
            "device_name": torch.cuda.get_device_name(index),
            **summary, "seconds": round(time.perf_counter() - started, 2)}


def _pythonpath() -> str:
    """PYTHONPATH for the child: this kiln's package root first (an editable or source checkout)."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m kiln.build.kernel_cache",
                                description="start an engine once and pack the Triton kernels it "
                                            "compiled or found into ENGINE_DIR/" + PACK_FILE)
    p.add_argument("engine_dir")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help=f"default: ENGINE_DIR/{PACK_FILE}")
    args = p.parse_args(argv)
    out = args.out or str(Path(args.engine_dir) / PACK_FILE)
    summary = record_and_pack(args.engine_dir, args.device, out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
