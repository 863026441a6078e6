"""Quantized linear layers: int4/int8 weight-only and fp8/int8 W8A8 (x [..., K] @ W[N, K].T).

Layouts (the quantizers in kiln/quant produce exactly these):
  int4 weight-only: uint8 [N, K // 2], byte j of row n holds k = 2j (low nibble) and 2j + 1 (high
    nibble) as q + 8, q in [-8, 7]; float32 scales [N, K // group_size]; w = q * scale.
  int8 weight-only: int8 [N, K] with float32 per-channel scales [N].
  fp8 W8A8: float8_e4m3fn [N, K], scales [N]; activations quantized per token (kiln.kernels.quant_act).
  int8 W8A8 (SmoothQuant): int8 [N, K], scales [N]; activations per token as int8.

Kernels (Triton, CUDA), each in its own module with its launch candidates:
  fma_gemv._gemv_kernel  small M (decode): each program owns BLOCK_N output columns for all M
                rows and streams its weight rows along K once; dequantized values meet x in
                float32 FMAs.
  quant_gemm._gemm_kernel  larger M (prefill): tiles dequantized to x's dtype (or raw int8/fp8
                for W8A8) feeding tl.dot.
  ring_int4._ring_int4_kernel  int4 weight-only batch-1 rows (blocks of 16 rows) of large
                layers (ring_int4_worth) through a shared-memory ring of copies into the tensor
                cores (KILN_RING_INT4=1; off by default: slower in the engine).
  ring_fp8._ring_fp8_kernel  fp8 W8A8 batch-1 rows through the same ring into e4m3 tensor-core
                products (KILN_RING_FP8=1; off by default: slower than tc_gemv on an H100).
  mma_gemv._tc_gemv_kernel  fp8 W8A8 and unquantized bf16/fp16 decode rows (M <= 16) on the
                tensor cores, operands swapped so the weights stream through shared memory
                untouched (the default for those rows; KILN_TC_GEMV).
All can split K across programs (float32 partials, summed by the last program to arrive or by
_splitk_reduce_kernel; qmm_common), so a layer with few output tiles (N = 4096) still fills the
GPU. fp8 prefill uses torch._scaled_mm (row-wise scales); int8 W8A8 prefill uses the Triton int8
GEMM (torch._int_mm is a bench option). References (`*_ref`, quant_ref) dequantize and multiply
in float32 on any device; the int4 bit tricks and the blocked row layout are in int4_bits.

This module: the dispatchers the layers call, `launch` (the FMA GEMV and the GEMM), and the
autotuners' choices as `kiln build` stores and reloads them (export_tuning / import_tuning).
"""

from __future__ import annotations

import os

import torch
import triton

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.fma_gemv import (DEFAULT_GEMV, GEMV_CONFIGS, INTERPRET_GEMV, _MIN_GEMV_BLOCK_N,
                                   _gemv_split, _gemv_tuned, int4_asm_mode, int4_asm_ok)
from kiln.kernels.int4_bits import untile_int4_rows
from kiln.kernels.qmm_common import (GEMV_MAX_M, KTILE_8BIT, MAX_SPLIT_K, SMALL_M, SPLIT_LOCKS,
                                     W_FLOAT, W_FP8, W_INT4, W_INT8, W_INT8_U, _num_sms, _partials,
                                     _reduce_splits, _run, autotune_enabled, early_groups,
                                     fused_splitk_enabled, prefetch_steps, split_for, split_locks,
                                     stream_k_grid)
from kiln.kernels.mma_gemv import (TC_GEMV_CONFIGS, _tc_gemv_tuned, int4_tc_enabled, int4_tc_gemv,
                                   tc_gemv, tc_gemv_enabled, tc_gemv_ok, tc_stream_k_enabled)
from kiln.kernels.quant_act import quant_per_token
from kiln.kernels.quant_gemm import (GEMM_CONFIGS, GEMM_CONFIGS_BY_BUCKET, INTERPRET_GEMM,
                                     _gemm_prune, _gemm_split, _gemm_tuned, m_bucket)
from kiln.kernels.quant_ref import (_fp8_product_ref, fp8_linear_ref, int4_wo_linear_ref,
                                    int8_sq_linear_ref, int8_wo_linear_ref)
from kiln.kernels.ring_gemv import ring_gemv, ring_gemv_enabled, ring_gemv_ok
from kiln.kernels.ring_fp8 import ring_fp8_enabled, ring_fp8_gemv, ring_fp8_ok
from kiln.kernels.ring_int4 import ring_int4_enabled, ring_int4_gemv, ring_int4_ok, ring_int4_worth


def tuned_kernels() -> dict:
    """The autotuned kernels by name; each one's `.cache` maps tuning keys to chosen configs."""
    return {"gemv": _gemv_tuned, "gemm": _gemm_tuned, "tc_gemv": _tc_gemv_tuned}


def _candidates(name: str) -> list[triton.Config]:
    if name == "tc_gemv":
        return [c for c in TC_GEMV_CONFIGS if tc_stream_k_enabled() or not c.kwargs.get("STREAM_K")]
    return {"gemv": GEMV_CONFIGS}.get(name, GEMM_CONFIGS)


def config_json(cfg: triton.Config) -> dict:
    """A launch configuration as engine.json stores a tuning choice: its kwargs, warps, stages
    and, when it has one, its register cap (maxnreg)."""
    return {"config": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
            **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {})}


def _same_config(a: triton.Config, entry: dict) -> bool:
    """Whether a launches as the stored entry (config_json's form) says."""
    return (dict(a.kwargs) == dict(entry.get("config", {})) and a.num_warps == entry.get("num_warps")
            and a.num_stages == entry.get("num_stages") and a.maxnreg == entry.get("maxnreg"))


def export_tuning() -> list[dict]:
    """The autotuners' choices so far, as JSON-ready entries (what `kiln build` stores).

    Each entry: kernel name, the autotuner's cache key (the tuning-key values, then the dtypes of
    the tensor arguments) and the chosen launch configuration (with its register cap, maxnreg,
    when it has one).
    """
    entries = []
    for name, kernel in tuned_kernels().items():
        for key, cfg in kernel.cache.items():
            entries.append({"kernel": name, "key": list(key), **config_json(cfg)})
    return entries


def import_tuning(entries: list[dict]) -> int:
    """Seed the autotuners with stored choices, so those shapes run without tuning; returns how
    many were taken. An entry naming an unknown kernel or a configuration that is not one of the
    kernel's candidates is skipped (the autotuner then tunes that shape as usual)."""
    kernels = tuned_kernels()
    taken = 0
    for entry in entries:
        kernel = kernels.get(entry.get("kernel"))
        if kernel is None or not isinstance(entry.get("key"), list):
            continue
        match = next((c for c in _candidates(entry["kernel"]) if _same_config(c, entry)), None)
        if match is None:
            continue
        kernel.cache[tuple(entry["key"])] = match
        taken += 1
    return taken


def fused_act_quant_enabled() -> bool:
    """Whether W8A8 decode GEMVs quantize their activations per token themselves
    (KILN_QUANT_FUSED_ACT=1) instead of after a separate quantization launch. Off by default
    until measured on the H200 (the separate launches took 0.40 ms of a 3.96 ms fp8 step)."""
    return os.environ.get("KILN_QUANT_FUSED_ACT", "0") == "1"


def launch(x2: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, stride_sg: int, group: int,
           wkind: int, bias: torch.Tensor | None, out_dtype: torch.dtype, path: str,
           x_scales: torch.Tensor | None = None, split_k: int = 0,
           quant_x: torch.dtype | None = None, config: triton.Config | None = None,
           row_block: int = 1) -> torch.Tensor:
    """Run one quantized matmul kernel on 2-D x2 [M, K] (row-major); returns [M, N] of out_dtype.

    path: "gemv" (M <= GEMV_MAX_M) or "gemm". x_scales [M, 1] float32 marks a W8A8 call (x2 is
    then the quantized activations). split_k > 0 forces the K split (benchmarks; at most
    MAX_SPLIT_K, and only for M <= SMALL_M). quant_x (float8_e4m3fn or int8, GEMV only) makes a
    W8A8 call on the float activations x2: the GEMV quantizes them per token itself. config (CUDA,
    benchmarks) runs that launch configuration instead of the autotuned or default one.
    row_block > 1 (int4): w holds its rows in blocks of that many (tile_int4_rows). Layers call
    the per-scheme dispatchers below.
    """
    m, k = x2.shape
    n = w.shape[0]
    if path == "gemv" and m > GEMV_MAX_M:
        raise ValueError(f"gemv path takes at most {GEMV_MAX_M} rows, got {m}")
    if split_k and (split_k > MAX_SPLIT_K or m > SMALL_M):
        raise ValueError(f"split_k={split_k} needs split_k <= {MAX_SPLIT_K} and M <= {SMALL_M}")
    if quant_x is not None and (path != "gemv" or x_scales is not None):
        raise ValueError("quant_x is for the GEMV path, on float activations without x_scales")
    a8 = x_scales is not None or quant_x is not None
    sms = _num_sms(x2.device)
    tune = x2.is_cuda and autotune_enabled() and config is None
    flags = dict(WKIND=wkind, A8=a8, GROUP=group, HAS_BIAS=bias is not None)
    if row_block > 1:
        if wkind != W_INT4 or n % row_block:
            raise ValueError(f"row_block {row_block} needs int4 weights with N ({n}) a multiple of it")
        flags["ROW_BLOCK"] = row_block
    locks = None
    if path == "gemv":
        flags["BLOCK_M"] = triton.next_power_of_2(m)
        if fused_splitk_enabled() and triton.cdiv(n, _MIN_GEMV_BLOCK_N) <= SPLIT_LOCKS:
            locks = split_locks(x2.device)
        flags["FUSED_SPLITK"] = locks is not None
        if wkind == W_INT4 and int4_asm_ok(x2, w):
            flags["INT4_ASM"] = int4_asm_mode(x2, w)
        if quant_x is not None:
            flags["QX"] = 2 if quant_x == torch.int8 else 1
            flags["QX_BLOCK"] = min(1024, triton.next_power_of_2(k))
        kernel = _gemv_tuned if tune else _gemv_split
        fixed = config or (GEMV_CONFIGS[DEFAULT_GEMV] if x2.is_cuda else triton.Config(INTERPRET_GEMV))
        candidates = GEMV_CONFIGS if tune else [fixed]
    else:
        flags["M_BUCKET"] = m_bucket(m)
        flags["DOT_PREC"] = "ieee" if x2.dtype == torch.float32 else "tf32"
        kernel = _gemm_tuned if tune else _gemm_split
        pruned = _gemm_prune(GEMM_CONFIGS_BY_BUCKET[flags["M_BUCKET"]], None, **flags)
        fixed = config or (pruned[0] if x2.is_cuda else triton.Config(INTERPRET_GEMM))
        candidates = pruned if tune else [fixed]
    if split_k > 0 and path == "gemv" and fixed.kwargs.get("STREAM_K") and not tune:
        raise ValueError("a stream-K configuration cuts K itself: it takes no split_k")

    def shape(c: dict) -> tuple[int, int]:
        """(programs along N, K splits or most contributors per tile) of configuration kwargs c."""
        block_m = c.get("BLOCK_M") if path == "gemm" else None
        if c.get("STREAM_K"):  # (GEMV only) programs, in a grid (programs, 1)
            return stream_k_grid(triton.cdiv(n, c["BLOCK_N"]), triton.cdiv(k, group), sms,
                                 c["STREAM_K"])
        tiles_m = 1 if block_m is None else triton.cdiv(m, block_m)
        return (tiles_m * triton.cdiv(n, c["BLOCK_N"]),
                split_for(m, n, k, group, sms, split_k, c["BLOCK_N"], block_m,
                          int(c.get("split_cfg") or 0) if path == "gemv" else 0))

    # Partials for a K split, sized for the largest split any candidate config may choose.
    max_split = max(max(shape(c.kwargs)[1] for c in candidates), 1)
    out = torch.empty(m, n, dtype=out_dtype, device=x2.device)
    part = _partials(max_split, m, n, out, locks is None and any(c.kwargs.get("STREAM_K")
                                                                 for c in candidates))
    chosen = {}
    pdl = pdl_args(x2)
    if path == "gemv":
        flags.update(early_groups(pdl))
    if path == "gemv" and row_block == 1:  # (the L2 prefetch reads row-major weights)
        flags.update(prefetch_steps(w, group * w.element_size() // (2 if wkind == W_INT4 else 1), pdl))
    has_bias = bias is not None
    args = (x2, x_scales if x_scales is not None else x2, w, scales, bias if has_bias else out, out, part,
            *((locks if locks is not None else out,) if path == "gemv" else ()),
            m, n, k, x2.stride(0), w.stride(0), scales.stride(0), stride_sg, out.stride(0),
            sms, split_k)

    def grid(meta):
        # Called with the final meta-parameters of each launch (the last call is the real one).
        # (Recomputed rather than read from meta: the interpreter hands over wrapped values.)
        width, chosen["split"] = shape(meta)
        return (width, 1) if meta.get("STREAM_K") else (width, chosen["split"])

    _run(kernel, grid, args, flags, fixed, tune, x2, pdl)
    split = chosen["split"]
    assert split <= max_split, "partial buffer sized for fewer splits than the kernel used"
    if split > 1 and locks is None:
        _reduce_splits(part, bias, out, split, pdl)
    return out


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as a row-major [M, K] view (copying only when needed)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _check(x: torch.Tensor, k: int, what: str) -> None:
    """Reject an x that does not fit the weight (K) or is not a float activation."""
    if x.shape[-1] != k:
        raise ValueError(f"{what}: x has K={x.shape[-1]} but the weight expects {k}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{what}: x must be float16/bfloat16/float32, got {x.dtype}")


def int4_wo_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                   bias: torch.Tensor | None = None, row_block: int = 1) -> torch.Tensor:
    """int4 weight-only linear (dispatcher): x [..., K] @ dequant(qweight [N, K//2], scales).T + bias.
    row_block > 1: qweight holds its rows in blocks of that many (tile_int4_rows)."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    _check(x, k, "int4_wo_linear")
    if group_size not in (32, 64, 128) or k % group_size or scales.shape != (n, k // group_size):
        raise ValueError(f"int4_wo_linear: group_size {group_size} / scales {tuple(scales.shape)} "
                         f"do not fit K={k}, N={n}")
    if not use_triton(x) or x.numel() == 0:
        if row_block > 1:
            qweight = untile_int4_rows(qweight, row_block, group_size)
        return int4_wo_linear_ref(x, qweight, scales, group_size, bias)
    x2 = _rows(x)
    s = scales.float().contiguous()
    qweight = qweight.contiguous()
    if (x2.shape[0] == 1 and ring_int4_enabled() and ring_int4_worth(n, k)
            and ring_int4_ok(x2, qweight, s, group_size, row_block)):
        return ring_int4_gemv(x2, qweight, s, bias).reshape(*x.shape[:-1], n)
    if (x2.shape[0] <= GEMV_MAX_M and int4_tc_enabled() and group_size == 128 and row_block == 1
            and x.dtype in (torch.float16, torch.bfloat16) and qweight.stride(0) % 4 == 0
            and qweight.data_ptr() % 4 == 0):
        return int4_tc_gemv(x2, qweight, s, group_size, bias, x.dtype).reshape(*x.shape[:-1], n)
    path = "gemv" if x2.shape[0] <= GEMV_MAX_M else "gemm"
    out = launch(x2, qweight, s, s.stride(1), group_size, W_INT4, bias, x.dtype, path,
                 row_block=row_block)
    return out.reshape(*x.shape[:-1], n)


def int8_wo_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """int8 weight-only linear (dispatcher): x [..., K] @ (qweight [N, K] * scales[:, None]).T + bias."""
    n, k = qweight.shape
    _check(x, k, "int8_wo_linear")
    if not use_triton(x) or x.numel() == 0:
        return int8_wo_linear_ref(x, qweight, scales, bias)
    x2 = _rows(x)
    path = "gemv" if x2.shape[0] <= GEMV_MAX_M else "gemm"
    # The kernels read int8 weights as their uint8 bits (see _bytes_f32); the view is free.
    out = launch(x2, qweight.contiguous().view(torch.uint8), scales.float().contiguous(), 0, KTILE_8BIT,
                 W_INT8_U, bias, x.dtype, path)
    return out.reshape(*x.shape[:-1], n)


def scaled_mm_supported(x2: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch._scaled_mm (row-wise fp8) can run this product: sm89+, K and N multiples of 16."""
    if not x2.is_cuda or not hasattr(torch, "_scaled_mm"):
        return False
    n, k = weight.shape
    return torch.cuda.get_device_capability(x2.device) >= (8, 9) and k % 16 == 0 and n % 16 == 0


def fp8_scaled_mm(x2: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype,
                  fast_accum: bool | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp8 W8A8 through torch._scaled_mm with row-wise scales (CUDA, sm89+); x2 [M, K] -> [M, N].

    Rows are padded to a multiple of 16 for cuBLASLt/CUTLASS; row-wise scaling returns bfloat16
    (the only output type torch accepts with it), cast to out_dtype afterwards. fast_accum uses
    the tensor cores' reduced-precision fp8 accumulation (None: KILN_FP8_FAST_ACCUM decides).
    ``out`` [M, N] receives the product (see _scaled_mm_rows).
    """
    xq, sx = quant_per_token(x2, torch.float8_e4m3fn, pad_rows_to=16)
    return _scaled_mm_rows(xq, sx, x2.shape[0], weight, weight_scale, bias, out_dtype, fast_accum,
                           out)


def fp8_fast_accum_enabled() -> bool:
    """Whether torch._scaled_mm accumulates fp8 products in the tensor cores' own accumulator
    (use_fast_accum) instead of promoting partial sums to float32 every few K steps: the default
    (the fp8 8B engine's 1000 x 128/128 throughput +7% on the H200, the demo model's fp8 top-1
    agreement 97.73% against 97.78%; benchmarks/h200-quant run-r). KILN_FP8_FAST_ACCUM=0 promotes."""
    return os.environ.get("KILN_FP8_FAST_ACCUM", "1") != "0"


def _scaled_mm_rows(xq: torch.Tensor, sx: torch.Tensor, m: int, weight: torch.Tensor,
                    weight_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                    fast_accum: bool | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """torch._scaled_mm of fp8 codes xq [R, K] (R a multiple of 16, scales sx [R, 1]); the first
    m rows of the product (+ bias) in out_dtype. fast_accum None follows KILN_FP8_FAST_ACCUM.

    ``out`` [m, N] receives the product: written by the GEMM itself when nothing is left to do
    after it (no padding rows, bfloat16, the bias fused or absent, contiguous), else copied.
    """
    if fast_accum is None:
        fast_accum = fp8_fast_accum_enabled()
    fused_bias = bias if bias is not None and bias.dtype == torch.bfloat16 else None
    args = dict(scale_a=sx, scale_b=weight_scale.float().reshape(1, -1), bias=fused_bias,
                out_dtype=torch.bfloat16, use_fast_accum=fast_accum)
    if (out is not None and xq.shape[0] == m and out_dtype == out.dtype == torch.bfloat16
            and (bias is None or fused_bias is not None) and out.is_contiguous()
            and out.shape == (m, weight.shape[0])):
        return torch._scaled_mm(xq, weight.t(), out=out, **args)
    y = torch._scaled_mm(xq, weight.t(), **args)[:m]
    if bias is not None and fused_bias is None:
        y = (y.float() + bias.float()).to(out_dtype)
    elif out_dtype != torch.bfloat16:
        y = y.to(out_dtype)
    return y if out is None else out.copy_(y)


def _fp8_linear_prequantized(x, weight: torch.Tensor, weight_scale: torch.Tensor,
                             bias: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp8_linear of activations their producer already quantized (quant_act.QuantizedRows)."""
    n, k = weight.shape
    if x.shape[-1] != k or x.q.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_linear: quantized x has K={x.shape[-1]} of {x.q.dtype}, the weight "
                         f"expects K={k} of float8_e4m3fn")
    m = x.m
    xq, sx = x.q, x.scale
    if not use_triton(xq) or m == 0:
        y = _fp8_product_ref(xq[:m], sx[:m], weight, weight_scale)
        y = (y if bias is None else y + bias.float()).to(x.dtype)
    elif m > SMALL_M and scaled_mm_supported(xq, weight) and xq.shape[0] % 16 == 0:
        return _into(_scaled_mm_rows(xq, sx, m, weight.contiguous(), weight_scale, bias, x.dtype,
                                     out=_rows_of(out, m, n)), x, n, out)
    elif m == 1 and ring_fp8_enabled() and ring_fp8_ok(xq[:1], sx, weight, weight_scale):
        y = ring_fp8_gemv(xq[:1], sx, weight, weight_scale, bias, x.dtype)
    elif tc_gemv_enabled("fp8") and tc_gemv_ok(xq[:m], weight):
        y = tc_gemv(xq[:m], sx[:m], weight.contiguous(), weight_scale.float().contiguous(), bias,
                    x.dtype)
    else:
        path = "gemv" if m <= GEMV_MAX_M else "gemm"
        y = launch(xq[:m], weight.contiguous(), weight_scale.float().contiguous(), 0, KTILE_8BIT,
                   W_FP8, bias, x.dtype, path, x_scales=sx[:m])
    return _into(y, x, n, out)


def _rows_of(out: torch.Tensor | None, m: int, n: int) -> torch.Tensor | None:
    """out [..., n] viewed as [m, n] rows (None: none given, or not viewable so)."""
    if out is None or out.numel() != m * n or not out.is_contiguous():
        return None
    return out.view(m, n)


def _into(y: torch.Tensor, x, n: int, out: torch.Tensor | None) -> torch.Tensor:
    """The product y [M, N] shaped as x's rows [..., N], or copied into ``out`` (returned) unless
    it is already there (a GEMM that wrote out itself)."""
    if out is None:
        return y.reshape(*x.shape[:-1], n)
    if y.data_ptr() != out.data_ptr():
        out.copy_(y.reshape(out.shape))
    return out


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp8 W8A8 linear (dispatcher): per-token fp8 activations times fp8 weights [N, K] (+ bias).

    M <= SMALL_M: the tensor-core GEMV (KILN_TC_GEMV, the default), else the Triton GEMV
    (M <= GEMV_MAX_M) or fp8 tl.dot with split-K; larger M: torch._scaled_mm where supported
    (else the Triton GEMM). x may also be a
    quant_act.QuantizedRows (its producer quantized it): the same products, no quantization here.
    ``out`` (x's rows by N, x's dtype) receives the product and is returned: the large-M
    torch._scaled_mm path writes it directly where it can (the decode graphs' logits buffer of a
    quantized LM head), the others copy into it.
    """
    from kiln.kernels.quant_act import QuantizedRows

    if isinstance(x, QuantizedRows):
        return _fp8_linear_prequantized(x, weight, weight_scale, bias, out)
    n, k = weight.shape
    _check(x, k, "fp8_linear")
    if not use_triton(x) or x.numel() == 0:
        return _into(fp8_linear_ref(x, weight, weight_scale, bias), x, n, out)
    x2 = _rows(x)
    m = x2.shape[0]
    weight = weight.contiguous()
    ws = weight_scale.float().contiguous()
    if m > SMALL_M and scaled_mm_supported(x2, weight):
        y = fp8_scaled_mm(x2, weight, ws, bias, x.dtype, out=_rows_of(out, m, n))
    elif m <= GEMV_MAX_M and fused_act_quant_enabled():
        y = launch(x2, weight, ws, 0, KTILE_8BIT, W_FP8, bias, x.dtype, "gemv",
                   quant_x=torch.float8_e4m3fn)
    elif m <= SMALL_M and tc_gemv_enabled("fp8") and k % 32 == 0:
        xq, sx = quant_per_token(x2, torch.float8_e4m3fn)
        if m == 1 and ring_fp8_enabled() and ring_fp8_ok(xq, sx, weight, ws):
            y = ring_fp8_gemv(xq, sx, weight, ws, bias, x.dtype)
        else:
            y = tc_gemv(xq, sx, weight, ws, bias, x.dtype)
    else:
        xq, sx = quant_per_token(x2, torch.float8_e4m3fn)
        path = "gemv" if m <= GEMV_MAX_M else "gemm"
        y = launch(xq, weight, ws, 0, KTILE_8BIT, W_FP8, bias, x.dtype, path, x_scales=sx)
    return _into(y, x, n, out)


def triton_gemv_enabled() -> bool:
    """Whether unquantized layers run rows <= GEMV_MAX_M through the Triton GEMV instead of
    cuBLAS (KILN_TRITON_GEMV=1). Off by default until measured on the H200."""
    return os.environ.get("KILN_TRITON_GEMV", "0") == "1"


def float_gemv_linear(x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight [N, K].T (+ bias) for at most GEMV_MAX_M rows through the Triton GEMV
    (float32 accumulation, like the quantized GEMVs), or up to SMALL_M rows through tc_gemv
    when KILN_TC_GEMV names float, one row through ring_gemv where it applies (KILN_RING_GEMV);
    more rows or no Triton: F.linear."""
    n, k = weight.shape
    _check(x, k, "float_gemv_linear")
    x2 = _rows(x)
    if not use_triton(x) or x.numel() == 0 or x2.shape[0] > SMALL_M:
        return torch.nn.functional.linear(x, weight, bias)
    weight = weight.contiguous()
    if x2.shape[0] == 1 and ring_gemv_enabled() and ring_gemv_ok(x2, weight):
        return ring_gemv(x2, weight, bias).reshape(*x.shape[:-1], n)
    if tc_gemv_enabled("float") and tc_gemv_ok(x2, weight):
        return tc_gemv(x2, None, weight, None, bias, x.dtype).reshape(*x.shape[:-1], n)
    if x2.shape[0] > GEMV_MAX_M:
        return torch.nn.functional.linear(x, weight, bias)
    # W_FLOAT reads no scales: the weight itself stands in for the scales argument.
    out = launch(x2, weight, weight, 0, KTILE_8BIT, W_FLOAT, bias, x.dtype, "gemv")
    return out.reshape(*x.shape[:-1], n)


def int8_sq_int_mm(x2: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """int8 W8A8 through torch._int_mm (CUDA: needs M > 16, K and N multiples of 8), torch epilogue.

    An alternative to the Triton GEMM, kept for the benchmark's comparison.
    """
    xq, sx = quant_per_token(x2, torch.int8)
    acc = torch._int_mm(xq, weight.t())
    y = acc.float() * sx * weight_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def int8_sq_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """int8 W8A8 (SmoothQuant) linear (dispatcher): per-token int8 activations, int8 weights [N, K].

    M <= GEMV_MAX_M: Triton GEMV (float32 FMAs); otherwise the Triton int8 tl.dot GEMM (int32
    accumulation, scales and bias in the epilogue).
    """
    n, k = weight.shape
    _check(x, k, "int8_sq_linear")
    if not use_triton(x) or x.numel() == 0:
        return int8_sq_linear_ref(x, weight, weight_scale, bias)
    x2 = _rows(x)
    m = x2.shape[0]
    weight = weight.contiguous()
    ws = weight_scale.float().contiguous()
    if m <= GEMV_MAX_M and fused_act_quant_enabled():
        out = launch(x2, weight.view(torch.uint8), ws, 0, KTILE_8BIT, W_INT8_U, bias, x.dtype, "gemv",
                     quant_x=torch.int8)
    elif m <= GEMV_MAX_M:
        xq, sx = quant_per_token(x2, torch.int8)
        out = launch(xq, weight.view(torch.uint8), ws, 0, KTILE_8BIT, W_INT8_U, bias, x.dtype, "gemv",
                     x_scales=sx)
    else:
        xq, sx = quant_per_token(x2, torch.int8)
        out = launch(xq, weight, ws, 0, KTILE_8BIT, W_INT8, bias, x.dtype, "gemm", x_scales=sx)
    return out.reshape(*x.shape[:-1], n)
