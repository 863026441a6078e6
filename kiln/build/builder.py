"""`kiln build`: a Hugging Face checkpoint -> a quantized engine directory, all or nothing.

Steps: load the float model, calibrate (schemes that need it), quantize, write the engine into a
staging directory next to the output, load it back exactly as a runtime would, score it against
the base model on held-out text, and only when every ``--max-accuracy-drop`` limit holds write
engine.json and move the staging directory into place. Any failure removes the staging directory.
On the target GPU the kernels are tuned (per kernel, then by the whole decode step) and the
finished engine is started once in a fresh process to pack the Triton kernels its start-up needs
(kiln.build.kernel_cache).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from kiln.build.accuracy import evaluate, limit_violations, parse_max_drop, reference_outputs
from kiln.build.engine_dir import (ENGINE_FORMAT, FORMAT_VERSION, WEIGHTS_FILE, is_engine_dir,
                                   load_engine_model, save_engine_weights, write_engine_info)
from kiln.build.gpu_target import GpuTarget, device_target, resolve_target
from kiln.build.tuning import not_tuned, tune_decode_steps, tune_quant_kernels
from kiln.errors import KilnError
from kiln.quant.calibration import collect_stats, load_windows
from kiln.quant.config import W8A8_SCHEMES, QuantConfig
from kiln.quant.model_quant import quantize_model

KV_CACHE_DTYPES = ("auto", "fp8")
# Top-level files of a checkpoint copied into the engine (config, generation config, tokenizer).
_COPIED_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
_NOT_COPIED = ("model.safetensors.index.json", "engine.json")


logger = logging.getLogger("kiln")


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``kiln build`` takes (CLI flags map one to one)."""

    model_dir: str
    output: str
    quant: QuantConfig = QuantConfig()
    kv_cache_dtype: str = "auto"
    calib_data: str | None = None
    calib_samples: int = 64
    calib_seq_len: int = 256
    eval_data: str | None = None
    eval_tokens: int = 4096
    eval_seq_len: int = 256
    target_gpu: str | None = "auto"
    max_batch_size: int = 256
    max_seq_len: int | None = None
    max_accuracy_drop: str | None = None
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    # Batch sizes whose captured decode step re-chooses the GEMV configurations on the target GPU
    # (kiln.build.tuning.tune_decode_steps); empty skips it.
    step_tuning_batch_sizes: tuple[int, ...] = (1,)
    # Start the finished engine once and pack the Triton kernels it needs into the engine
    # (kiln.build.kernel_cache), so that a fresh machine's start-up compiles none of its GPU kernels.
    kernel_cache: bool = True


def _sha256_files(files: list[Path]) -> dict[str, Any]:
    """Digest of each file and one over all of them (names and digests, in order)."""
    per_file = {}
    total = hashlib.sha256()
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
        per_file[f.name] = h.hexdigest()
        total.update(f"{f.name}:{per_file[f.name]}\n".encode())
    return {"sha256": total.hexdigest(), "files": per_file}


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KilnError(f"--device {device} asked for a GPU but torch sees none; use --device cpu")
    return dev


def _check_scheme_target(options: BuildOptions, target: GpuTarget) -> None:
    scheme = options.quant.scheme
    if scheme == "fp8" and (target.is_cpu or target.compute_capability < (8, 9)):
        raise KilnError(f"--quant fp8 needs a GPU with FP8 tensor cores (sm_89+), not "
                        f"{target.describe()}; pass --target-gpu h200 (or h100, l40s) to cross-build, "
                        "or use --quant int8-wo / int4-wo")
    if options.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise KilnError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                        f"got {options.kv_cache_dtype!r}")
    if scheme in W8A8_SCHEMES and not target.is_cpu and target.compute_capability < (8, 0):
        raise KilnError(f"--quant {scheme} needs sm_80+, not {target.describe()}")
    if options.quant.lm_head == "fp8" and (target.is_cpu or target.compute_capability < (8, 9)):
        raise KilnError(f"--lm-head-quant fp8 needs a GPU with FP8 tensor cores (sm_89+), not "
                        f"{target.describe()}; pass --target-gpu h200 (or h100, l40s) to cross-build")


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix in _COPIED_SUFFIXES and f.name not in _NOT_COPIED:
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


class _Progress:
    """A tqdm bar per stage (or nothing when progress is off)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def stage(self, desc: str, total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
        if not self.enabled:
            return (lambda n: None), (lambda: None)
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="step", leave=True)

        def update(n: int) -> None:
            bar.n = n
            bar.refresh()
        return update, bar.close


def _kernel_cache_stage(options: BuildOptions, staging: Path, device: torch.device,
                        target: GpuTarget, info: dict[str, Any], progress: "_Progress") -> dict[str, Any]:
    """Pack the engine's compiled Triton kernels (on the target GPU only), or say why not."""
    from kiln.build.kernel_cache import build_kernel_pack

    if not options.kernel_cache:
        return {"status": "not-packed", "reason": "--no-kernel-cache"}
    if device.type != "cuda":
        return {"status": "not-packed", "reason": f"built on {device.type}: nothing compiled for a GPU"}
    here = device_target(device)
    if here.name != target.name:
        return {"status": "not-packed", "reason": f"cross-built on {here.name} for {target.name}"}
    import gc

    gc.collect()
    torch.cuda.empty_cache()  # the recording start-up is another process on this GPU
    write_engine_info(staging, info)  # the engine it starts
    update, close = progress.stage("pack kernels", 1)
    record = build_kernel_pack(staging, device)
    update(1)
    close()
    if record["status"] != "packed":
        logger.warning("kernels not packed into the engine: %s", record["reason"])
    return record


def build_engine(options: BuildOptions) -> dict[str, Any]:
    """Build an engine directory; returns its engine.json content.

    Raises KilnError (leaving no output behind) for bad inputs or when the accuracy limits fail.
    """
    from kiln import __version__
    from kiln.models.args import ModelArgs
    from kiln.models.loader import (load_hf_config, load_model, load_tokenizer, resolve_dtype,
                                    weight_files)

    started = time.perf_counter()
    src = Path(options.model_dir).expanduser().resolve()
    out = Path(options.output).expanduser().resolve()
    if is_engine_dir(src):
        raise KilnError(f"{src} is already an engine; build from the original checkpoint")
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise KilnError(f"output {out} exists and is not empty; pass --overwrite or another --output")
    limits = parse_max_drop(options.max_accuracy_drop)
    if limits and options.eval_tokens <= 0:
        raise KilnError("--max-accuracy-drop needs the accuracy report; do not pass --eval-tokens 0")
    device = _resolve_device(options.device)
    target = resolve_target(options.target_gpu)
    _check_scheme_target(options, target)
    files = weight_files(src)
    hasher = ThreadPoolExecutor(max_workers=1)
    source_hash = hasher.submit(_sha256_files, files)  # disk-bound: overlaps with the compute

    progress = _Progress(options.progress)
    tokenizer = load_tokenizer(src)
    # Calibrate and quantize in float32 on the CPU (cheap there, and exact); on a GPU in the
    # checkpoint's dtype. Unquantized tensors are stored in the checkpoint's dtype either way.
    compute_dtype = "float32" if device.type == "cpu" else "auto"
    base = load_model(src, dtype=compute_dtype, device=device)
    storage_dtype = resolve_dtype("auto", ModelArgs.from_hf_config(load_hf_config(src)), files)
    max_seq_len = options.max_seq_len or base.args.max_position_embeddings

    calibration = None
    stats = None
    if options.quant.needs_calibration or options.kv_cache_dtype == "fp8":
        windows = load_windows(tokenizer, options.calib_data, options.calib_samples,
                               options.calib_seq_len, split="train")
        update, close = progress.stage("calibrate", windows.num_samples)
        stats = collect_stats(base, windows, options.quant.max_calib_rows, progress=update)
        close()
        calibration = windows.describe()

    reference = None
    if options.eval_tokens > 0:
        eval_windows = load_windows(tokenizer, options.eval_data,
                                    max(1, options.eval_tokens // options.eval_seq_len),
                                    options.eval_seq_len + 1, split="test")
        update, close = progress.stage("reference", eval_windows.num_samples)
        reference = reference_outputs(base, eval_windows, progress=update)
        close()

    update, close = progress.stage(f"quantize {options.quant.scheme}", base.args.num_hidden_layers)
    quantized = quantize_model(base, options.quant, stats, storage_dtype, progress=update)
    close()
    del base

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        save_engine_weights(staging, quantized.tensors)
        del quantized.tensors
        side_files = _copy_side_files(src, staging)
        quant_record = {"scheme": options.quant.scheme, **options.quant.params(),
                        "calibration": calibration, "runtime_input_scale": quantized.runtime_input_scale,
                        "details": quantized.details}
        kv_record: dict[str, Any] = {"dtype": options.kv_cache_dtype}
        if options.kv_cache_dtype == "fp8" and stats is not None:
            # Per-layer scales for an e4m3 cache: the largest |k| (post-RoPE bound) / |v| over 448,
            # |v| bounded anew where o_proj's AWQ / SmoothQuant scale was folded into the v rows.
            gain = quantized.v_absmax_gain
            kv_record["scales"] = {name: {"k_scale": k / 448.0, "v_scale": v * gain.get(name, 1.0) / 448.0}
                                   for name, (k, v) in sorted(stats.kv_absmax.items())}
        info: dict[str, Any] = {
            "format": ENGINE_FORMAT, "format_version": FORMAT_VERSION, "kiln_version": __version__,
            "source": {"path": str(src), "architecture": None, **source_hash.result()},
            "dtype": next(k for k, v in {"float32": torch.float32, "float16": torch.float16,
                                         "bfloat16": torch.bfloat16}.items() if v == storage_dtype),
            "quantization": quant_record,
            "kv_cache": kv_record,
            "target": target.to_dict(),
            "limits": {"max_batch_size": options.max_batch_size, "max_seq_len": max_seq_len},
            "kernel_tuning": not_tuned("not tuned yet"),  # filled in below
            "weights": {"file": WEIGHTS_FILE, "bytes": (staging / WEIGHTS_FILE).stat().st_size},
            "files": side_files,
        }
        write_engine_info(staging, info)  # provisional, so that the engine loads for scoring
        engine_model, _ = load_engine_model(staging, device, dtype=compute_dtype,
                                                 check_target=False)
        info["source"]["architecture"] = engine_model.args.architecture
        if device.type == "cuda" and device_target(device).name != target.name:
            info["kernel_tuning"] = not_tuned(f"cross-built on {device_target(device).name} for "
                                              f"{target.name}: tune on the target GPU")
        else:
            update, close = progress.stage("tune kernels", 1)
            info["kernel_tuning"] = tune_quant_kernels(engine_model, device,
                                                       engine_model.embed_tokens.weight.dtype)
            update(1)
            close()
        accuracy: dict[str, Any] = {"measured": False, "reason": "skipped (--eval-tokens 0)"}
        if reference is not None:
            # The report scores what will run: an fp8 KV cache with its scales when asked for.
            kv_dtype = None
            if kv_record.get("scales"):
                engine_model.set_kv_cache_scales(kv_record["scales"])
                kv_dtype = torch.float8_e4m3fn
            update, close = progress.stage("evaluate", reference.windows.num_samples)
            report = evaluate(engine_model, reference, progress=update, kv_cache_dtype=kv_dtype)
            close()
            accuracy = {**report.to_dict(), "device": device.type,
                        "kv_cache_dtype": options.kv_cache_dtype,
                        "compute_dtype": str(engine_model.embed_tokens.weight.dtype).replace("torch.", "")}
            if device.type == "cuda" and "fp8" in (options.quant.scheme, options.quant.lm_head):
                # fp8 GEMMs of more than 16 rows accumulate as KILN_FP8_FAST_ACCUM said here.
                from kiln.kernels.quant_matmul import fp8_fast_accum_enabled

                accuracy["fp8_fast_accum"] = fp8_fast_accum_enabled()
            broken = limit_violations(report, limits)
            if broken:
                raise KilnError(f"engine fails --max-accuracy-drop {options.max_accuracy_drop}: "
                                f"{'; '.join(broken)}; nothing was written to {out}")
        del engine_model, reference
        info["accuracy"] = accuracy
        if info["kernel_tuning"].get("status") == "tuned" and options.step_tuning_batch_sizes:
            write_engine_info(staging, info)  # the engine the step tuning loads
            sizes = options.step_tuning_batch_sizes
            update, close = progress.stage("tune decode steps", len(set(sizes)))
            try:
                info["kernel_tuning"] = tune_decode_steps(staging, device, sizes,
                                                          info["kernel_tuning"], progress=update)
            except Exception as exc:  # an optional search: the per-kernel tuning still stands
                logger.warning("decode-step tuning failed, keeping the per-kernel tuning: %s", exc)
                info["kernel_tuning"]["in_situ_error"] = f"{type(exc).__name__}: {exc}"
            close()
        info["kernel_cache"] = _kernel_cache_stage(options, staging, device, target, info, progress)
        info["build"] = {"time_s": round(time.perf_counter() - started, 2),
                         "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "device": str(device), "torch": torch.__version__}
        write_engine_info(staging, info)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        hasher.shutdown(wait=False)
        shutil.rmtree(staging, ignore_errors=True)
    info["path"] = str(out)
    return info
