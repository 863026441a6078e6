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


def _quantized_layers(model: nn.Module) -> list[nn.Module]:
    """One Linear (or quantized LM head) per distinct (scheme, shape, bias), in model order."""
    from kiln.layers.embedding import LMHead
    from kiln.layers.linear import Linear, UnquantizedLinearMethod

    seen, layers = set(), []
    for module in model.modules():
        # An unquantized LM head has no method; a quantized one computes like a Linear.
        method = getattr(module, "method", None) if isinstance(module, (Linear, LMHead)) else None
        if method is None or isinstance(method, UnquantizedLinearMethod):
            continue
        key = (type(module.method).__name__, module.in_features, module.out_features,
               module.has_bias)
        if key not in seen:
            seen.add(key)
            layers.append(module)
    return layers


def not_tuned(reason: str) -> dict[str, Any]:
    return {"status": "not-tuned", "reason": reason, "results": []}


def tune_quant_kernels(model: nn.Module, device: torch.device, dtype: torch.dtype,
                       m_values: tuple[int, ...] = M_VALUES) -> dict[str, Any]:
    """Autotune the Triton quantized-matmul kernels for every quantized layer shape of ``model``
    on ``device``; returns engine.json's ``kernel_tuning`` record."""
    from kiln.kernels import quant_matmul as qm

    layers = _quantized_layers(model)
    if not layers:
        return {"status": "not-needed", "reason": "no quantized layers: every product runs on "
                "cuBLAS", "results": []}
    if device.type != "cuda":
        return not_tuned("built without the target GPU (the CPU runs the references)")
    if not qm.autotune_enabled():
        return not_tuned("KILN_QUANT_AUTOTUNE=0: the kernels use their default configurations")
    import triton

    started = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            for m in m_values:
                x = torch.randn(m, layer.in_features, generator=gen, device=device).to(dtype)
                layer(x)
    torch.cuda.synchronize(device)
    results = qm.export_tuning()
    return {"status": "tuned", "gpu": torch.cuda.get_device_name(device),
            "triton": triton.__version__, "seconds": round(time.perf_counter() - started, 2),
            "layer_shapes": [[type(l.method).__name__, l.in_features, l.out_features]
                             for l in layers],
            "m_values": list(m_values), "results": results}


def apply_kernel_tuning(info: dict[str, Any], device: torch.device | str) -> int:
    """Seed the autotuners with an engine's stored choices (CUDA, same Triton version); returns
    how many entries were taken (0 when none apply: the kernels then tune on first use)."""
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
