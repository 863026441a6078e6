"""Compile every kernel configuration the dispatchers launch for sm_90 (H100/H200) without a GPU.

Prints registers, spills and shared memory per kernel (from the cubin, via the cuobjdump that
ships with Triton) and checks the attention kernels' SASS for the matrix instructions. Run it on
a CPU machine before spending GPU time: a kernel that does not compile or spills shows here.

    PYTHONPATH=. python benchmarks/kernels/compile_sm90.py [LABEL-FILTER]

With SASS_DIR=DIR each kernel's SASS (addresses and encodings stripped) is also written to
DIR/<label>.sass, so that two trees' kernels can be compared with `diff -r`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource

from kiln.kernels import (activation, argmax, attention, decode_attention, decode_gluon, fma_gemv,
                          mma_direct, mma_gemv, mma_int4, prefill_fresh, quant_gemm, quant_matmul,
                          ring_gemv, rmsnorm, rotary)

TARGET = GPUTarget("cuda", 90, 32)
# Pointer element types by argument name (anything else ending in _ptr holds the activations).
PTR_TYPES = {"block_tables_ptr": "*i32", "seq_lens_ptr": "*i32", "query_start_ptr": "*i32",
             "pos_ptr": "*i64", "slot_ptr": "*i64", "cos_sin_ptr": "*fp32",
             "part_acc_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32"}
FLOAT_ARGS = {"qk_scale", "eps", "k_scale", "v_scale", "k_scale_w", "v_scale_w"}
# The quantized matmuls' pointers besides the activations (x, bias, out).
QUANT_PTRS = {"xs_ptr": "*fp32", "s_ptr": "*fp32", "part_ptr": "*fp32", "lock_ptr": "*i32"}
# Integer arguments that are not multiples of 16 for Llama-3-8B (everything else is, and Triton
# specialises such arguments at launch, which is what lets it vectorise the masked loads).
ODD_INTS = {"num_kv_heads", "max_partitions", "window", "group", "M", "split_hint", "SPLIT_K",
            "num_sms", "split_cfg", "chunk_blocks", "splits"}


def compile_one(fn, constexprs: dict, dtype: str, num_warps: int, num_stages: int):
    """Compile fn for sm_90 with 16-divisible pointers/ints (as Llama-3-8B shapes give).

    Tensor-descriptor arguments take their block shapes from constexprs["_descs"]; pointer types
    other than PTR_TYPES' (the quantized weights) come from constexprs["_ptrs"]; a register cap
    (maxnreg) from constexprs["_maxnreg"].
    """
    constexprs = dict(constexprs)
    for param in fn.params:  # constexprs left out take their defaults (not run-time arguments)
        if param.is_constexpr and param.name not in constexprs and param.has_default:
            constexprs[param.name] = param.default
    descs = constexprs.pop("_descs", {})
    maxnreg = constexprs.pop("_maxnreg", None)
    ptrs = {**PTR_TYPES, **constexprs.pop("_ptrs", {})}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in descs:
            signature[name] = f"tensordesc<{dtype}{list(descs[name])}>"
        elif name.endswith("_ptr"):
            signature[name] = ptrs.get(name, f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name not in ODD_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = GluonASTSource if fn.is_gluon() else ASTSource
    src = source(fn, signature, {(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages,
                                                       **({"maxnreg": maxnreg} if maxnreg else {})})


def plain_sass(sass: str) -> str:
    """cuobjdump's SASS with the addresses, encodings and headers left out: one instruction a line."""
    lines = (re.sub(r"/\*[0-9a-f]{4,}\*/", "", ln).split(";")[0].strip()
             for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", ln))
    return "\n".join(ln for ln in lines if ln) + "\n"


def resources(kernel, sass_file: str | None = None) -> str:
    """Registers / spills / shared memory of a compiled kernel, read from its cubin (its plain
    SASS written to sass_file when given)."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True,
                               text=True).stdout
        sass = subprocess.run([cuobjdump, "--dump-sass", f.name], capture_output=True, text=True).stdout
    if sass_file:
        with open(sass_file, "w") as out:
            out.write(plain_sass(sass))
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    mma = sorted({m for m in re.findall(r"\b(HGMMA|HMMA|QGMMA)\b", sass)})
    prefetches = len(re.findall(r"\bUBLKPF\b", sass))
    shared_ops = len(re.findall(r"\b(?:LDS|STS|LDSM)\b", sass))
    wide = len(re.findall(r"\b(?:LDG\.E|LDGSTS\.E(?:\.BYPASS)?)(?:\.LTC128B)?\.128", sass))
    return (f"regs={regs.group(1) if regs else '?'} stack={stack.group(1) if stack else '?'} "
            f"smem={kernel.metadata.shared} mma={'+'.join(mma) or '-'} 16B-loads={wide} "
            f"shared-ops={shared_ops} sass-lines={sass.count(chr(10))}"
            + (f" bulk-prefetches={prefetches}" if prefetches else ""))


def configs():
    """(label, fn, constexprs, dtype, num_warps, num_stages) for the Llama-3-8B launches."""
    for dtype in ("bf16", "fp16"):
        yield ("rmsnorm h4096", rmsnorm._rms_norm_kernel, {"HAS_RESIDUAL": False, "BLOCK": 4096},
               dtype, 8, 3)
        yield ("add+rmsnorm h4096", rmsnorm._rms_norm_kernel, {"HAS_RESIDUAL": True, "BLOCK": 4096},
               dtype, 8, 3)
        if dtype == "bf16":
            for res in (False, True):
                yield (f"rmsnorm+fp8 quant h4096 residual={res}", rmsnorm._rms_norm_quant_kernel,
                       {"out_ty": triton.language.bfloat16, "HAS_RESIDUAL": res, "IS_INT8": False,
                        "BLOCK": 4096, "_ptrs": {"q_ptr": "*fp8e4nv", "s_ptr": "*fp32"}},
                       dtype, 8, 3)
        yield ("silu_mul I14336", activation._silu_and_mul_kernel, {"BLOCK": 1024}, dtype, 4, 3)
        if dtype == "bf16":
            yield ("silu_mul+fp8 quant I14336", activation._silu_and_mul_quant_kernel,
                   {"IS_INT8": False, "BLOCK": 16384,
                    "_ptrs": {"q_ptr": "*fp8e4nv", "s_ptr": "*fp32"}}, dtype, 16, 3)
        for k_out in (False, True):
            yield (f"rotary+kv D128 k_out={k_out}", rotary._rotary_write_kv_kernel,
                   {"HALF": 64, "BLOCK_H": 32, "WRITE_CACHE": True, "KV_FP8": False,
                    "K_OUT": k_out}, dtype, 4, 3)
        yield ("rotary D128 (no cache)", rotary._rotary_write_kv_kernel,
               {"HALF": 64, "BLOCK_H": 32, "WRITE_CACHE": False, "KV_FP8": False, "K_OUT": False},
               dtype, 4, 3)
        for head_dim in (128, 64):
            yield (f"fresh prefill M64 N64 D{head_dim}", prefill_fresh._fresh_prefill_kernel,
                   {"HEAD_DIM": head_dim, "BLOCK_M": 64, "BLOCK_N": 64,
                    "_descs": {"q_desc": (64, head_dim), "k_desc": (64, head_dim),
                               "v_desc": (64, head_dim)}}, dtype, 4, 3)
        small = decode_attention.SMALL_DECODE_TILE
        for single in (True, False):
            for window in (False, True):
                yield (f"decode G4 N{small['block_n']} single={single} window={window}",
                       decode_attention._decode_partition_kernel,
                       {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16,
                        "BLOCK_N": small["block_n"], "SINGLE": single, "USE_WINDOW": window,
                        "DOT_PREC": "tf32", "KV_FP8": False, "FP8_ASM": False}, dtype,
                       small["num_warps"], small["num_stages"])
        for kv_fp8, quant in (((False, 0), (True, 0), (False, 4096), (True, 4096))
                              if dtype == "bf16" else ((False, 0),)):
            ptrs = {"lock_ptr": "*i32", "codes_ptr": "*fp8e4nv", "scales_ptr": "*fp32",
                    **({"cache_ptr": "*fp8e4nv"} if kv_fp8 else {})}
            yield (f"decode G4 N{small['block_n']} fused reduce fp8-kv={kv_fp8} quant-row={quant}",
                   decode_attention._decode_partition_kernel,
                   {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": small["block_n"],
                    "SINGLE": False, "USE_WINDOW": False, "DOT_PREC": "tf32", "KV_FP8": kv_fp8,
                    "FP8_ASM": kv_fp8, "FUSED_REDUCE": True, "GROUP_P2": 4, "MERGE_P": 16,
                    "QUANT_ROW": quant, "_ptrs": ptrs}, dtype, small["num_warps"],
                   small["num_stages"])
        # RoPE with the step's K/V write in the decode kernel (KILN_ATTN_ROPE), under PDL
        rope_ptrs = {"pos_ptr": "*i64", "cos_sin_ptr": "*fp32", "slot_ptr": "*i64"}
        for single, kv_fp8, ptrs in ((True, False, rope_ptrs), (False, False, rope_ptrs),
                                     (False, True, {**rope_ptrs, "cache_ptr": "*fp8e4nv"})):
            yield (f"decode G4 N{small['block_n']} single={single} fp8-kv={kv_fp8} rope",
                   decode_attention._decode_partition_kernel,
                   {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": small["block_n"],
                    "SINGLE": single, "USE_WINDOW": False, "DOT_PREC": "tf32", "KV_FP8": kv_fp8,
                    "FP8_ASM": kv_fp8, "PDL": 1, "FUSED_REDUCE": not single, "GROUP_P2": 4,
                    "MERGE_P": 16, "ROPE": True, "PRE_WAIT": True, "PREFETCH_KV": True,
                    "_ptrs": {"lock_ptr": "*i32", **ptrs}},
                   dtype, small["num_warps"], small["num_stages"])
        if dtype == "bf16":
            yield ("prefill fp8-kv G4 M128", attention._prefill_kernel,
                   {"HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_M": 128, "BLOCK_N": 128,
                    "USE_WINDOW": False, "DOT_PREC": "tf32", "KV_FP8": True,
                    "_ptrs": {"cache_ptr": "*fp8e4nv"}}, dtype, 8, 3)
            for asm, wide in ((False, False), (True, False), (True, True)):
                for tile, single in ((decode_attention.LARGE_DECODE_TILE, True),
                                     (decode_attention.SMALL_DECODE_TILE, False)):
                    yield (f"decode fp8-kv G4 N{tile['block_n']} w{tile['num_warps']} asm={asm}"
                           + (" keys-wide" if wide else ""),
                           decode_attention._decode_partition_kernel,
                           {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16,
                            "BLOCK_N": tile["block_n"], "SINGLE": single, "USE_WINDOW": False,
                            "DOT_PREC": "tf32", "KV_FP8": True, "FP8_ASM": asm,
                            "LATE_V": asm and single, "KEYS_WIDE": wide,
                            "_ptrs": {"cache_ptr": "*fp8e4nv"}},
                           dtype, tile["num_warps"], tile["num_stages"])
            large = decode_attention.LARGE_DECODE_TILE
            for kv_fp8 in (True, False):
                yield (f"decode fp8-kv={kv_fp8} G4 N{large['block_n']} single keys-wide quant-row=4096",
                       decode_attention._decode_partition_kernel,
                       {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16,
                        "BLOCK_N": large["block_n"], "SINGLE": True, "USE_WINDOW": False,
                        "DOT_PREC": "tf32", "KV_FP8": kv_fp8, "FP8_ASM": kv_fp8,
                        "LATE_V": kv_fp8, "KEYS_WIDE": True, "QUANT_ROW": 4096,
                        "_ptrs": {"lock_ptr": "*i32", "codes_ptr": "*fp8e4nv", "scales_ptr": "*fp32",
                                  **({"cache_ptr": "*fp8e4nv"} if kv_fp8 else {})}},
                       dtype, large["num_warps"], large["num_stages"])
            for tile, single in ((decode_attention.LARGE_DECODE_TILE, True),
                                 (decode_attention.SMALL_DECODE_TILE, False)):
                yield (f"decode G4 N{tile['block_n']} w{tile['num_warps']} single={single} keys-wide",
                       decode_attention._decode_partition_kernel,
                       {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16,
                        "BLOCK_N": tile["block_n"], "SINGLE": single, "USE_WINDOW": False,
                        "DOT_PREC": "tf32", "KV_FP8": False, "FP8_ASM": False, "KEYS_WIDE": True},
                       dtype, tile["num_warps"], tile["num_stages"])
        for window in (False, True):
            yield (f"decode reduce window={window}", decode_attention._decode_reduce_kernel,
                   {"HEAD_DIM": 128, "BLOCK_N": decode_attention.SMALL_DECODE_TILE["block_n"],
                    "BLOCK_P": 16, "USE_WINDOW": window},
                   dtype, 4, 2)
        for window in (False, True):
            yield (f"prefill G4 M128 window={window}", attention._prefill_kernel,
                   {"HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_M": 128, "BLOCK_N": 128,
                    "USE_WINDOW": window, "DOT_PREC": "tf32", "KV_FP8": False}, dtype, 8, 3)
    yield ("prefill fp32 M32", attention._prefill_kernel,
           {"HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_M": 32, "BLOCK_N": 16,
            "USE_WINDOW": False, "DOT_PREC": "ieee", "KV_FP8": False}, "fp32", 4, 3)
    yield ("decode fp32 fp8-kv", decode_attention._decode_partition_kernel,
           {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": 16, "SINGLE": False,
            "USE_WINDOW": False, "DOT_PREC": "ieee", "KV_FP8": True, "FP8_ASM": False,
            "_ptrs": {"cache_ptr": "*fp8e4nv"}}, "fp32", 4, 2)
    yield ("decode fp32", decode_attention._decode_partition_kernel,
           {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16,
            "BLOCK_N": 16, "SINGLE": False, "USE_WINDOW": False, "DOT_PREC": "ieee", "KV_FP8": False,
            "FP8_ASM": False},
           "fp32", 4, 2)


def quant_configs():
    """The quantized GEMV / GEMM at decode and prefill tile sizes (int4 group 128, fp8)."""
    for wkind, wptr, group in ((quant_matmul.W_INT4, "*u8", 128), (quant_matmul.W_FP8, "*fp8e4nv", 128)):
        name = "int4" if wkind == quant_matmul.W_INT4 else "fp8"
        ptrs = {**QUANT_PTRS, "w_ptr": wptr}
        if wkind == quant_matmul.W_FP8:
            ptrs["x_ptr"] = "*fp8e4nv"
        # int4: float16 products over double words (the default for 16-bit x), over words, and
        # float32 products; one and four rows
        modes = (4, 2, 1) if wkind == quant_matmul.W_INT4 else (0,)
        # the stream-K candidates too when KILN_GEMV_STREAM_K=0 leaves them out of GEMV_CONFIGS
        extra = [c for c in fma_gemv.GEMV_STREAM_K_CONFIGS
                 if all(c is not g for g in fma_gemv.GEMV_CONFIGS)]
        for cfg in fma_gemv.GEMV_CONFIGS + extra:
            for mode in modes:
                for block_m in ((1, 4) if mode else (1,)):
                    yield (f"{name} gemv M{block_m} N{cfg.kwargs['BLOCK_N']} U{cfg.kwargs['UNROLL']} "
                           f"w{cfg.num_warps}" + (f" asm{mode}" if mode else "")
                           + (f" stream-K {cfg.kwargs['STREAM_K']}/SM" if cfg.kwargs.get("STREAM_K") else ""),
                           fma_gemv._gemv_kernel,
                           {"WKIND": wkind, "A8": wkind == quant_matmul.W_FP8, "GROUP": group,
                            "BLOCK_M": block_m, "HAS_BIAS": False, "FUSED_SPLITK": True, "QX": 0,
                            "QX_BLOCK": 1024, "INT4_ASM": mode, "_ptrs": ptrs, **cfg.kwargs},
                           "bf16", cfg.num_warps, cfg.num_stages)
        cfg = fma_gemv.GEMV_CONFIGS[fma_gemv.DEFAULT_GEMV]
        yield (f"{name} gemv M1 N{cfg.kwargs['BLOCK_N']} early PDL + L2 prefetch",
               fma_gemv._gemv_kernel,
               {"WKIND": wkind, "A8": wkind == quant_matmul.W_FP8, "GROUP": group, "BLOCK_M": 1,
                "HAS_BIAS": False, "FUSED_SPLITK": True, "QX": 0, "QX_BLOCK": 1024,
                "INT4_ASM": wkind == quant_matmul.W_INT4, "PDL": 2, "PREFETCH": 4,
                "PREFETCH_MB": 16, "_ptrs": ptrs,
                **cfg.kwargs}, "bf16", cfg.num_warps, cfg.num_stages)
        if wkind == quant_matmul.W_INT4:
            # weights stored in blocks of rows (KILN_INT4_ROW_BLOCK, tile_int4_rows)
            variants = [(f"row-block {rb}", {"ROW_BLOCK": rb}, c)
                         for rb in (16, 64) for c in fma_gemv.GEMV_CONFIGS]
            for label, extra, cfg in variants:
                for mode, block_m in ((4, 1), (4, 4), (1, 1)):
                    yield (f"int4 gemv M{block_m} N{cfg.kwargs['BLOCK_N']} "
                           f"U{cfg.kwargs['UNROLL']} w{cfg.num_warps} asm{mode} {label}"
                           + (f" stream-K {cfg.kwargs['STREAM_K']}/SM"
                              if cfg.kwargs.get("STREAM_K") else ""),
                           fma_gemv._gemv_kernel,
                           {"WKIND": wkind, "A8": False, "GROUP": group, "BLOCK_M": block_m,
                            "HAS_BIAS": False, "FUSED_SPLITK": True, "QX": 0, "QX_BLOCK": 1024,
                            "INT4_ASM": mode, "_ptrs": ptrs, **extra, **cfg.kwargs},
                           "bf16", cfg.num_warps, cfg.num_stages)
            # the first K group loaded before the PDL wait (KILN_GEMV_EARLY_GROUP), rows in
            # blocks of 16, the default double-word mode, one row
            for cfg in fma_gemv.GEMV_BASE_CONFIGS:
                for early in (0, 1):
                    yield (f"int4 gemv M1 N{cfg.kwargs['BLOCK_N']} U{cfg.kwargs['UNROLL']} "
                           f"w{cfg.num_warps} asm4 row-block 16 PDL early-group {early}",
                           fma_gemv._gemv_kernel,
                           {"WKIND": wkind, "A8": False, "GROUP": group, "BLOCK_M": 1,
                            "HAS_BIAS": False, "FUSED_SPLITK": True, "QX": 0, "QX_BLOCK": 1024,
                            "INT4_ASM": 4, "ROW_BLOCK": 16, "PDL": 1, "EARLY": early,
                            "_ptrs": ptrs, **cfg.kwargs},
                           "bf16", cfg.num_warps, cfg.num_stages)
            for block_n, warps in ((64, 4), (128, 4), (128, 8)):
                for one in (True, False):
                    yield (f"int4 tc-gemv N{block_n} w{warps} one_dot={one}",
                           mma_gemv._int4_tc_gemv_kernel,
                           {"GROUP": group, "BLOCK_N": block_n, "BLOCK_M": 16, "HAS_BIAS": False,
                            "X_BF16": True, "ASM": True, "ONE_DOT": one, "_ptrs": ptrs},
                           "bf16", warps, 3)
            for early in (False, True):
                for bias in (False, True):
                    yield (f"int4 mma-gemv R4 w4 early={early} bias={bias}", mma_int4._int4_mma_kernel,
                           {"R": 4, "HAS_BIAS": bias, "EARLY": early, "PDL": 1,
                            "_ptrs": {**ptrs, "w_ptr": "*i32", "s_ptr": "*fp32", "part_ptr": "*fp32",
                                      "lock_ptr": "*i32"}},
                           "bf16", 4, 1)
            buckets = quant_gemm.GEMM_CONFIGS_BY_BUCKET
            for cfg in buckets[256][:1] + buckets[16][:1]:
                for row_block in (1, 16):
                    yield (f"{name} gemm M{cfg.kwargs['BLOCK_M']} N{cfg.kwargs['BLOCK_N']}"
                           + (f" row-block {row_block}" if row_block > 1 else ""),
                           quant_gemm._gemm_kernel,
                           {"WKIND": wkind, "A8": False, "GROUP": group, "M_BUCKET": 256,
                            "HAS_BIAS": False, "DOT_PREC": "tf32", "_ptrs": ptrs, **cfg.kwargs,
                            **({"ROW_BLOCK": row_block} if row_block > 1 else {})},
                           "bf16", cfg.num_warps, cfg.num_stages)


# (BLOCK_N, BLOCK_K, warps, stages) of the flat stream-K tensor-core GEMV (FLAT) compiled here:
# every tile bench_stream_k.py --flat times.
FLAT_TILES = [(64, 128, 4, 4), (64, 128, 4, 6), (64, 128, 4, 8), (64, 64, 4, 4), (64, 64, 4, 6),
              (64, 64, 4, 8), (128, 64, 4, 4), (64, 256, 4, 4), (128, 128, 4, 3)]


def tc_gemv_configs():
    """The tensor-core GEMV (fp8 W8A8 and bf16 weights, operands swapped) at its candidates."""
    for name, ty in (("fp8", "*fp8e4nv"), ("bf16", "*bf16")):
        a8 = name == "fp8"
        ptrs = {"x_ptr": ty, "w_ptr": ty, "xs_ptr": "*fp32" if a8 else ty,
                "ws_ptr": "*fp32" if a8 else ty, "part_ptr": "*fp32", "lock_ptr": "*i32"}
        seen = set()
        for cfg in (mma_gemv.TC_GEMV_CONFIGS_FP8 if a8 else mma_gemv.TC_GEMV_CONFIGS_FLOAT):
            sk = cfg.kwargs.get("STREAM_K", 0)
            flat = bool(cfg.kwargs.get("FLAT"))
            key = (cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"], cfg.num_warps, cfg.num_stages, sk,
                   flat)
            if key in seen:  # split_cfg is a run-time argument: no new variant
                continue
            seen.add(key)
            yield (f"{name} tc-gemv N{key[0]} K{key[1]} w{key[2]} s{key[3]}"
                   + (f" stream-K {sk}/SM" if sk else "") + (" flat" if flat else ""),
                   mma_gemv._tc_gemv_kernel,
                   {"A8": a8, "HAS_BIAS": False, "FUSED_SPLITK": True, "BLOCK_M": 16,
                    "BLOCK_N": key[0], "BLOCK_K": key[1], "STREAM_K": sk, "FLAT": flat,
                    "_ptrs": ptrs}, "bf16", key[2], key[3])
        # stream-K as one loop over a program's units (FLAT), at the tiles the sweeps time
        for bn, bk, warps, stages in FLAT_TILES:
            yield (f"{name} tc-gemv N{bn} K{bk} w{warps} s{stages} stream-K flat",
                   mma_gemv._tc_gemv_kernel,
                   {"A8": a8, "HAS_BIAS": False, "FUSED_SPLITK": True, "BLOCK_M": 16,
                    "BLOCK_N": bn, "BLOCK_K": bk, "STREAM_K": 2, "FLAT": True, "PDL": 1,
                    "_ptrs": ptrs}, "bf16", warps, stages)
        # the decode graphs' variant: early PDL with the weight prefetch before the wait
        cfg = (mma_gemv.TC_GEMV_CONFIGS_FP8 if a8 else mma_gemv.TC_GEMV_CONFIGS_FLOAT)[0]
        yield (f"{name} tc-gemv N{cfg.kwargs['BLOCK_N']} early PDL + L2 prefetch",
               mma_gemv._tc_gemv_kernel,
               {"A8": a8, "HAS_BIAS": False, "FUSED_SPLITK": True, "BLOCK_M": 16,
                "BLOCK_N": cfg.kwargs["BLOCK_N"], "BLOCK_K": cfg.kwargs["BLOCK_K"], "PDL": 2,
                "PREFETCH": 4, "PREFETCH_MB": 16, "_ptrs": ptrs}, "bf16", cfg.num_warps,
               cfg.num_stages)
        # under PDL with the first weight tile loaded before the wait (KILN_GEMV_EARLY_W)
        yield (f"{name} tc-gemv N{cfg.kwargs['BLOCK_N']} PDL + early first tile",
               mma_gemv._tc_gemv_kernel,
               {"A8": a8, "HAS_BIAS": False, "FUSED_SPLITK": True, "BLOCK_M": 16,
                "BLOCK_N": cfg.kwargs["BLOCK_N"], "BLOCK_K": cfg.kwargs["BLOCK_K"], "PDL": 1,
                "EARLY_W": 1, "_ptrs": ptrs}, "bf16", cfg.num_warps, cfg.num_stages)
        # straight from registers (kiln.kernels.mma_direct, KILN_MMA_DIRECT)
        # (fp8 also with the written-out conversions, cvt)
        for r, warps, cvt in ((1, 4, 0), (2, 4, 0), (2, 8, 0), (4, 4, 0), (2, 4, 1), (4, 4, 1)):
            if cvt and not a8:
                continue
            for early in (False, True):
                yield (f"{name} mma-gemv direct R{r} w{warps} early={early}" + (" cvt" if cvt else ""),
                       mma_direct._mma_direct_kernel,
                       {"R": r, "FP8": a8, "HAS_BIAS": early, "EARLY": early, "CVT": cvt, "PDL": 1,
                        "_ptrs": {"x_ptr": ty, "xs_ptr": "*fp32", "w_ptr": "*i32", "ws_ptr": "*fp32",
                                  "part_ptr": "*fp32", "lock_ptr": "*i32"}}, "bf16", warps, 1)


def argmax_configs():
    """The split argmax over a [M, 128256] logits row: the one launch configuration, per dtype
    (bf16/fp16 from the decode graphs' logits, fp32 from the eager head and the sampler)."""
    ptrs = {"out_ptr": "*i64", "part_val_ptr": "*fp32", "part_idx_ptr": "*i32", "lock_ptr": "*i32"}
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16),
                               ("fp32", torch.float32)):
        block = argmax.block_for(torch_dtype)
        yield (f"argmax V128256 B{block} w{argmax.NUM_WARPS}", argmax._argmax_kernel,
               {"BLOCK": block, "PART_BLOCK": argmax.PART_BLOCK, "PDL": False, "_ptrs": ptrs},
               dtype, argmax.NUM_WARPS, 3)


def report(label: str, fn, constexprs: dict, dtype: str, warps: int, stages: int) -> bool:
    """Compile one configuration and print its resources (its SASS to $SASS_DIR when set), or
    print why it failed; True if it compiled."""
    sass_dir = os.environ.get("SASS_DIR")
    try:
        kernel = compile_one(fn, constexprs, dtype, warps, stages)
        name = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{dtype} {label}").strip("_")
        if sass_dir:
            os.makedirs(sass_dir, exist_ok=True)
        sass_file = os.path.join(sass_dir, name + ".sass") if sass_dir else None
        print(f"{dtype:5s} {label:42s} {resources(kernel, sass_file)}", flush=True)
        return True
    except Exception as exc:  # report every failing configuration; the caller decides
        print(f"{dtype:5s} {label:42s} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return False


def gluon_configs():
    """The Gluon decode kernels (kiln.kernels.decode_gluon), one warp, at the default tile and the
    others the GPU tests run."""
    for keys_m in (True, False):
        fn = decode_gluon.decode_fp8_keys_m_kernel if keys_m else decode_gluon.decode_fp8_kernel
        for block_n, stages in ((32, 3), (32, 2), (16, 4)):
            yield (f"gluon decode fp8-kv keys_m={keys_m} N{block_n} s{stages}", fn,
                   {"BLOCK_N": block_n, "BLOCK_SIZE": 16, "STAGES": stages, "PDL": True,
                    "_ptrs": {"cache_ptr": "*fp8e4nv"}}, "bf16", 1, 1)


def ring_configs():
    """The batch-1 ring GEMV (kiln.kernels.ring_gemv): both configurations, x of 4096 and of
    14336 values, with and without bias, every early-copy count and x prologue."""
    for dtype in ("bf16", "fp16"):
        for cfg in (ring_gemv.CONFIG_K256, ring_gemv.CONFIG_K128):
            block_n, block_k, warps, stages, _ = cfg
            for chunks, bias in ((1, False), (4, True)):
                for early, prologue in ([(e, 0) for e in range(stages)]
                                        + [(stages - 1, pr) for pr in (1, 2, 3)]):
                    yield (f"ring gemv N{block_n} K{block_k} x{chunks * 4096} bias={bias} "
                           f"early={early} prologue={prologue}",
                           ring_gemv._ring_gemv_kernel,
                           {"HAS_BIAS": bias, "BLOCK_N": block_n, "BLOCK_K": block_k,
                            "STAGES": stages, "X_CHUNKS": chunks, "MAX_SEGS": 3, "PDL": True,
                            "EARLY": early, "PROLOGUE": prologue,
                            "_ptrs": {"part_ptr": "*fp32", "count_ptr": "*i32"}},
                           dtype, warps, 1)


def main() -> int:
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    every = (list(configs()) + list(quant_configs()) + list(tc_gemv_configs())
             + list(argmax_configs()) + list(gluon_configs()) + list(ring_configs()))
    failed = sum(not report(*c) for c in every if only in c[0])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
