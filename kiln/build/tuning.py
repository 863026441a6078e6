"""Kernel tuning at build time: autotune the quantized-matmul kernels for every layer shape of the
engine on the target GPU, store the choices in engine.json, and seed the autotuners with them when
the engine loads (so start-up skips the tuning).

Rows tuned per layer shape (`M_VALUES`): 1, 2 and 4 select the GEMV kernel's row tiles (3 shares 4's
tile); 16, 64, 256 and 1024 are the GEMM kernel's row buckets (1024 stands for every larger M:
prefill chunks). Schemes whose larger products run on cuBLAS (fp8 above 16 rows) only tune the
Triton paths they use.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("kiln")

M_VALUES = (1, 2, 4, 16, 64, 256, 1024)


def _distinct_layers(model: nn.Module, keep) -> list[nn.Module]:
    """One module per distinct (method, shape, bias) among those keep(module, method) accepts, in
    model order (method: a Linear's or LM head's LinearMethod, None for an unquantized head)."""
    from kiln.layers.embedding import LMHead
    from kiln.layers.linear import Linear

    seen, layers = set(), []
    for module in model.modules():
        if not isinstance(module, (Linear, LMHead)) or not keep(module, module.method):
            continue
        key = (type(module.method).__name__, module.in_features, module.out_features,
               module.has_bias)
        if key not in seen:
            seen.add(key)
            layers.append(module)
    return layers


def _quantized_layers(model: nn.Module) -> list[nn.Module]:
    """One Linear (or quantized LM head) per distinct (scheme, shape, bias), in model order."""
    from kiln.layers.linear import UnquantizedLinearMethod

    return _distinct_layers(model, lambda m, method: method is not None
                            and not isinstance(method, UnquantizedLinearMethod))


def not_tuned(reason: str) -> dict[str, Any]:
    return {"status": "not-tuned", "reason": reason, "results": []}


def _float_gemv_layers(model: nn.Module) -> list[nn.Module]:
    """One unquantized Linear per distinct (shape, bias) whose decode rows a Triton GEMV computes
    on CUDA (the tensor-core GEMV for float weights, KILN_TC_GEMV; or KILN_TRITON_GEMV=1)."""
    from kiln.kernels import quant_matmul as qm
    from kiln.kernels import mma_gemv
    from kiln.layers.linear import Linear, UnquantizedLinearMethod

    if not (mma_gemv.tc_gemv_enabled("float") or qm.triton_gemv_enabled()):
        return []
    return _distinct_layers(model, lambda m, method: isinstance(m, Linear)
                            and isinstance(method, UnquantizedLinearMethod)
                            and m.in_features % 32 == 0)


def tune_quant_kernels(model: nn.Module, device: torch.device, dtype: torch.dtype,
                       m_values: tuple[int, ...] = M_VALUES) -> dict[str, Any]:
    """Autotune the Triton matmul kernels for every quantized layer shape of ``model`` on
    ``device``, and on CUDA the decode GEMV of every unquantized layer shape that one serves
    (rows up to SMALL_M; more rows run on cuBLAS); returns engine.json's ``kernel_tuning``
    record."""
    from kiln.kernels import quant_matmul as qm
    from kiln.kernels import qmm_common

    layers = _quantized_layers(model)
    float_layers = _float_gemv_layers(model) if device.type == "cuda" else []
    if not layers and not float_layers:
        return {"status": "not-needed", "reason": "no quantized layers: every product runs on "
                "cuBLAS", "results": []}
    if device.type != "cuda":
        return not_tuned("built without the target GPU (the CPU runs the references)")
    if not qmm_common.autotune_enabled():
        return not_tuned("KILN_QUANT_AUTOTUNE=0: the kernels use their default configurations")
    import triton

    small = tuple(m for m in m_values if m <= qm.SMALL_M)
    started = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for layer, ms in [(l, m_values) for l in layers] + [(l, small) for l in float_layers]:
            for m in ms:
                x = torch.randn(m, layer.in_features, generator=gen, device=device).to(dtype)
                layer(x)
    torch.cuda.synchronize(device)
    results = qm.export_tuning()
    return {"status": "tuned", "gpu": torch.cuda.get_device_name(device),
            "triton": triton.__version__, "seconds": round(time.perf_counter() - started, 2),
            "layer_shapes": [[type(l.method).__name__, l.in_features, l.out_features]
                             for l in layers + float_layers],
            "m_values": list(m_values), "results": results}


def apply_kernel_tuning(info: dict[str, Any], device: torch.device | str) -> int:
    """Seed the autotuners with an engine's stored choices (CUDA, same Triton version); returns
    how many entries were taken (0 when none apply: the kernels then tune on first use). The
    batch-1 decode path the step tuning chose (batch1_gemv) is the engine's to apply when it
    captures its decode graphs."""
    record = info.get("kernel_tuning") or {}
    if torch.device(device).type != "cuda" or record.get("status") != "tuned":
        return 0
    import triton

    if record.get("triton") != triton.__version__:
        logger.info("engine kernel tuning was made with Triton %s, this is %s: tuning again",
                    record.get("triton"), triton.__version__)
        return 0
    from kiln.kernels import quant_matmul as qm

    taken = qm.import_tuning(record.get("results", []))
    logger.info("kernel tuning from the engine: %d of %d launch configurations", taken,
                len(record.get("results", [])))
    return taken


def tune_decode_steps(engine_dir, device: torch.device, batch_sizes: tuple[int, ...],
                      tuning: dict[str, Any], context: int = 256,
                      progress=None) -> dict[str, Any]:
    """Re-choose a built engine's decode GEMV configurations by the time of its whole captured
    decode step, once per batch size (kiln.tune.in_situ.tune_decode_step), and return the
    kernel_tuning record with the choices stored (results) and the runs summarised (in_situ).

    The per-kernel tuning times each candidate alone; inside a captured step under programmatic
    dependent launch the fastest kernel alone is not always the fastest step. On the H200, the
    8B int4-wo engine's batch-1 step went from 2.737 to 2.619 ms this way (365.8 -> 381.6 tok/s,
    benchmarks/h200-quant/run-n). The engine is loaded from engine_dir (its engine.json written
    with `tuning`) with a small KV cache and no graphs of its own, and dropped afterwards. The
    FMA GEMV's key holds the decode rows' bucket (1, 2 or 4), so each batch size keeps its own
    choices there; the tensor-core GEMV's does not, and the smallest batch size's choice stands."""
    import gc

    from kiln.tune import in_situ

    # Largest first: the tensor-core GEMV's tuning key holds no row count (every batch up to 16
    # rows shares its choice), so the smallest batch size, the latency-bound one, has the last word.
    sizes = sorted(set(batch_sizes), reverse=True)
    started = time.perf_counter()
    engine = step_tuning_engine(engine_dir, device, sizes, context)
    engine_start = time.perf_counter() - started
    try:
        for b in sizes:
            best, record = in_situ.tune_decode_step(engine, b, context, log=logger.info)
            if best:
                tuning = in_situ.store_choices(tuning, best, record)
            if progress is not None:
                progress(1)
    finally:
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    # the whole stage's cost, the engine's start included (each in_situ entry has its search's)
    return {**tuning, "in_situ_seconds": {"engine_start": round(engine_start, 2),
                                          "total": round(time.perf_counter() - started, 2)}}


def step_tuning_engine(engine_dir, device: torch.device, batch_sizes, context: int):
    """The engine tune_decode_steps times: KV blocks for the largest batch at `context` tokens
    (each row its own blocks) and no more, no CUDA graphs of its own (the tuner captures its own)."""
    from kiln.engine.llm_engine import LLMEngine

    block_size = 16
    blocks = max(batch_sizes) * -(-context // block_size) + 16
    return LLMEngine.from_args(str(engine_dir), device=str(device), block_size=block_size,
                               max_num_seqs=max(8, max(batch_sizes)),
                               max_model_len=max(2 * context, 512), num_kv_blocks=blocks,
                               enforce_eager=True, enable_prefix_caching=False)
