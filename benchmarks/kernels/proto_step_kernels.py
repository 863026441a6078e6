"""The Triton side of proto_persistent_step.py: one persistent launch of a whole batch-1 decode
step (_step_kernel) and its phases: the RMSNorm-fed, plain and SiLU·mul-fed stream-K GEMVs
(_gemv_run) and the attention over the cache (_attention, _combine). The phases and buffers are
described in proto_persistent_step.py, which launches, checks and times it."""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from proto_persistent_chain import _grid_sync, _w_tile  # noqa: E402

from kiln.kernels.qmm_common import _prefetch_rows  # noqa: E402
from kiln.kernels.quant_act import quantize_to_codes  # noqa: E402


@triton.jit
def _rstd(h_ptr, H, eps, HB: tl.constexpr):
    """1 / sqrt(mean(h^2) + eps) of the residual stream (H float32 values; HB >= H)."""
    offs = tl.arange(0, HB)
    hv = tl.load(h_ptr + offs, mask=offs < H, other=0.0)
    return 1.0 / tl.sqrt(tl.sum(hv * hv, axis=0) / H + eps)


@triton.jit
def _x_slice(x_ptr, aux_ptr, rstd, offs_k, INTER, XMODE: tl.constexpr):
    """A GEMV input slice (float32): XMODE 0 x as stored; 1 the RMSNorm of x (rstd, weights at
    aux_ptr); 2 silu(gate) * up, gate at x_ptr and up INTER values further."""
    if XMODE == 1:
        return tl.load(x_ptr + offs_k) * rstd * tl.load(aux_ptr + offs_k)
    elif XMODE == 2:
        g = tl.load(x_ptr + offs_k)
        return g / (1.0 + tl.exp(-g)) * tl.load(x_ptr + INTER + offs_k)
    else:
        return tl.load(x_ptr + offs_k)


@triton.jit
def _step_unit(w, ws_ptr, x_ptr, aux_ptr, rstd, out_ptr, u, tile, steps, u_begin, u_end,
               first_tile, INTER, acc, first_done, last_done, XMODE: tl.constexpr,
               ADD: tl.constexpr, A8: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, F32_DOT: tl.constexpr):
    """proto_persistent_chain._unit with the input made by _x_slice and, with ADD, whole tiles
    added to the output (h, which only this program writes at those rows in this phase). A8:
    fp8 weight codes (per-channel scales at ws_ptr) and the input slice quantized to fp8 with a
    scale of its own, as the chain's A8."""
    rows = tl.arange(0, BLOCK_M)
    offs_k = (u - tile * steps) * BLOCK_K + tl.arange(0, BLOCK_K)
    x = _x_slice(x_ptr, aux_ptr, rstd, offs_k, INTER, XMODE)
    xf = tl.where(rows[None, :] == 0, x[:, None], 0.0)
    if A8:
        sx = tl.div_rn(tl.maximum(tl.max(tl.max(tl.abs(xf), axis=1), axis=0), 1e-12), 448.0)
        xq = quantize_to_codes(xf, sx, False)
        if F32_DOT:  # the interpreter's dots of converted operands are not trusted
            part = tl.dot(w.to(tl.float32), xq.to(tl.float32))
        else:
            part = tl.dot(w, xq)
        acc += part * sx
    else:
        xt = xf.to(tl.bfloat16)
        if F32_DOT:  # Triton's interpreter: its bf16 dots are wrong
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc)
        else:
            acc = tl.dot(w, xt, acc)
    if (u == (tile + 1) * steps - 1) | (u == u_end - 1):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        done = acc
        if A8:
            done = acc * tl.load(ws_ptr + offs_n)[:, None]
        if (tile * steps >= u_begin) & ((tile + 1) * steps <= u_end):
            ptrs = out_ptr + offs_n[:, None] + rows[None, :] * 0
            col0 = (rows == 0)[None, :]
            if ADD:
                tl.store(ptrs, tl.load(ptrs, mask=col0, other=0.0) + done, mask=col0)
            else:
                tl.store(ptrs, done, mask=col0)
        elif tile == first_tile:
            first_done = done
        else:
            last_done = done
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    return acc, first_done, last_done


@triton.jit
def _gemv_run(w_base, ws_ptr, w0, N, K, x_ptr, aux_ptr, rstd, out_ptr, p, P, INTER,
              XMODE: tl.constexpr, ADD: tl.constexpr, A8: tl.constexpr, EARLY: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
              F32_DOT: tl.constexpr):
    """This program's run of one stream-K GEMV phase; w0 is its first unit's weight tile when
    EARLY (loaded before the barrier)."""
    steps = K // BLOCK_K
    units = (N // BLOCK_N) * steps
    u_begin = (p * units) // P
    u_end = ((p + 1) * units) // P
    first_tile = u_begin // steps
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    first_done = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    last_done = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    if EARLY:
        if u_begin < u_end:
            acc, first_done, last_done = _step_unit(
                w0, ws_ptr, x_ptr, aux_ptr, rstd, out_ptr, u_begin, first_tile, steps, u_begin,
                u_end, first_tile, INTER, acc, first_done, last_done, XMODE, ADD, A8, BLOCK_N,
                BLOCK_K, BLOCK_M, F32_DOT)
    for u in range(tl.minimum(u_begin + EARLY, u_end), u_end):
        tile = u // steps
        w = _w_tile(w_base, u, steps, K, True, BLOCK_N, BLOCK_K)
        acc, first_done, last_done = _step_unit(
            w, ws_ptr, x_ptr, aux_ptr, rstd, out_ptr, u, tile, steps, u_begin, u_end, first_tile,
            INTER, acc, first_done, last_done, XMODE, ADD, A8, BLOCK_N, BLOCK_K, BLOCK_M, F32_DOT)
    if u_begin < u_end:
        rows = tl.arange(0, BLOCK_M)
        col0 = (rows == 0)[None, :]
        last_tile = (u_end - 1) // steps
        for i in tl.static_range(2):
            tile = first_tile if i == 0 else last_tile
            shared = (tile * steps < u_begin) | ((tile + 1) * steps > u_end)
            if shared & ((i == 0) | (last_tile != first_tile)):
                ptrs = (out_ptr + (tile * BLOCK_N + tl.arange(0, BLOCK_N))[:, None]
                        + rows[None, :] * 0)
                tl.atomic_add(ptrs, first_done if i == 0 else last_done, mask=col0,
                              sem="relaxed")


@triton.jit
def _combine(heads, nch, pm_l, pl_l, pa_l, ao_l, GQA: tl.constexpr, D: tl.constexpr,
             CB: tl.constexpr, NCH_MAX: tl.constexpr):
    """The attention output of `heads` from their nch chunks' softmax partials."""
    d = tl.arange(0, D)
    big_m = tl.full([GQA], float("-inf"), tl.float32)
    big_l = tl.zeros([GQA], tl.float32)
    o = tl.zeros([GQA, D], tl.float32)
    for c0 in range(0, nch, CB):
        cc = c0 + tl.arange(0, CB)
        ok = (cc < nch)[None, :]
        slot = heads[:, None] * NCH_MAX + cc[None, :]
        mm = tl.load(pm_l + slot, mask=ok, other=float("-inf"))
        ll = tl.load(pl_l + slot, mask=ok, other=0.0)
        aa = tl.load(pa_l + slot.to(tl.int64)[:, :, None] * D + d[None, None, :],
                     mask=ok[:, :, None], other=0.0)
        new_m = tl.maximum(big_m, tl.max(mm, axis=1))
        keep = tl.exp(big_m - new_m)
        wgt = tl.exp(mm - new_m[:, None])
        big_l = big_l * keep + tl.sum(wgt * ll, axis=1)
        o = o * keep[:, None] + tl.sum(wgt[:, :, None] * aa, axis=1)
        big_m = new_m
    tl.store(ao_l + heads[:, None] * D + d[None, :], o / big_l[:, None])


@triton.jit
def _attention(qkv_l, kc_l, vc_l, bt_ptr, pm_l, pl_l, pa_l, cnt_l, ao_l, pos, p, P, qk_scale,
               log2_theta, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
               BS: tl.constexpr, CHUNK: tl.constexpr, CB: tl.constexpr,
               NCH_MAX: tl.constexpr):
    """Phase 1 of a layer (proto_persistent_step.py): units (kv head g, chunk c of CHUNK token
    positions 0..pos) in turn over the programs. The layer's cache is paged as the engine's:
    keys at kc_l and values at vc_l, each [blocks, BS slots, kv heads, D], position t in slot
    t % BS of block bt_ptr[t // BS]."""
    GQA: tl.constexpr = HQ // HKV
    HALF: tl.constexpr = D // 2
    nch = pos // CHUNK + 1
    d = tl.arange(0, D)
    # rotary of position pos, rotate-half layout: d and d + D/2 share frequency d mod D/2
    inv = tl.exp2(-((d % HALF).to(tl.float32) * 2.0 / D) * log2_theta)
    ang = pos.to(tl.float32) * inv
    cos = tl.cos(ang)
    sin = tl.sin(ang)
    sign = tl.where(d < HALF, -1.0, 1.0)
    partner = (d + HALF) % D
    for u in range(p, HKV * nch, P):
        g = u // nch
        c = u - g * nch
        heads = g * GQA + tl.arange(0, GQA)
        q_rows = qkv_l + heads[:, None] * D
        q = (tl.load(q_rows + d[None, :]) * cos[None, :]
             + sign[None, :] * tl.load(q_rows + partner[None, :]) * sin[None, :]) * qk_scale
        k_row = qkv_l + HQ * D + g * D
        k_new = tl.load(k_row + d) * cos + sign * tl.load(k_row + partner) * sin
        v_new = tl.load(qkv_l + (HQ + HKV) * D + g * D + d)
        t = c * CHUNK + tl.arange(0, CHUNK)
        block = tl.load(bt_ptr + t // BS, mask=t <= pos, other=0).to(tl.int64)
        slots = ((block * BS + t % BS) * HKV + g)[:, None] * D + d[None, :]
        cached = (t < pos)[:, None]
        is_new = (t == pos)[:, None]
        kt = tl.where(is_new, k_new[None, :],
                      tl.load(kc_l + slots, mask=cached, other=0.0).to(tl.float32))
        vt = tl.where(is_new, v_new[None, :],
                      tl.load(vc_l + slots, mask=cached, other=0.0).to(tl.float32))
        s = tl.sum(q[:, None, :] * kt[None, :, :], axis=2)
        s = tl.where((t <= pos)[None, :], s, float("-inf"))
        m = tl.max(s, axis=1)
        e = tl.exp(s - m[:, None])
        slot = heads * NCH_MAX + c
        tl.store(pm_l + slot, m)
        tl.store(pl_l + slot, tl.sum(e, axis=1))
        tl.store(pa_l + slot.to(tl.int64)[:, None] * D + d[None, :],
                 tl.sum(e[:, :, None] * vt[None, :, :], axis=1))
        if c == nch - 1:  # the chunk holding the new token puts it in the cache
            new_block = tl.load(bt_ptr + pos // BS).to(tl.int64)
            new_slot = ((new_block * BS + pos % BS) * HKV + g) * D + d
            tl.store(kc_l + new_slot, k_new.to(tl.bfloat16))
            tl.store(vc_l + new_slot, v_new.to(tl.bfloat16))
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_l + g, 1, sem="acq_rel", scope="gpu")
        if arrived == nch - 1:  # the last of this kv head's chunks: combine its query heads
            _combine(heads, nch, pm_l, pl_l, pa_l, ao_l, GQA, D, CB, NCH_MAX)


@triton.jit(do_not_specialize=["pos", "ph_begin", "ph_end"])
def _step_kernel(wqkv_ptr, wo_ptr, wgu_ptr, wd_ptr, sqkv_ptr, so_ptr, sgu_ptr, sd_ptr,
                 lnw_ptr, fnw_ptr, head_ptr,
                 h_ptr, kv_ptr, bt_ptr, qkv_ptr, pm_ptr, pl_ptr, pa_ptr, cnt_ptr, ao_ptr, gu_ptr,
                 logits_ptr, bar_ptr, err_ptr,
                 pos, n_layers, n_blocks, ph_begin, ph_end, eps, qk_scale, log2_theta,
                 H: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                 INTER: tl.constexpr, V: tl.constexpr, HB: tl.constexpr, BS: tl.constexpr,
                 CHUNK: tl.constexpr,
                 CB: tl.constexpr, NCH_MAX: tl.constexpr, SYNC: tl.constexpr,
                 EARLY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_M: tl.constexpr, MAX_SPIN: tl.constexpr, F32_DOT: tl.constexpr,
                 A8: tl.constexpr = False, L2PRE: tl.constexpr = 0):
    # Phases [ph_begin, ph_end) of the step (module docstring): phase ph is layer ph // 5's
    # phase ph % 5, and phase 5 * n_layers the LM head. SYNC: a grid barrier before each
    # phase but the launch's first; EARLY: a GEMV phase's first weight tile of this program's
    # run is loaded before it (the layers' GEMVs; not the LM head's). A8: the layers' weights are
    # fp8 codes with per-channel scales (s*_ptr, float32), the LM head stays bf16. L2PRE > 0
    # (CUDA; with EARLY): an L2 prefetch of the next L2PRE K steps of the run's first tile too.
    p = tl.program_id(0)
    P = tl.num_programs(0)
    NQKV: tl.constexpr = (HQ + 2 * HKV) * D
    HQD: tl.constexpr = HQ * D
    for ph in range(ph_begin, ph_end):
        layer = ph // 5
        kind = ph - layer * 5
        lay = layer.to(tl.int64)
        in_layer = layer < n_layers
        # the layer phase's GEMV (none for attention: its sizes then only keep EARLY's load valid)
        w_base = wqkv_ptr + lay * (NQKV * H)
        ws_base = sqkv_ptr + lay * NQKV
        if kind == 2:
            w_base = wo_ptr + lay * (H * HQD)
            ws_base = so_ptr + lay * H
        elif kind == 3:
            w_base = wgu_ptr + lay * (2 * INTER * H)
            ws_base = sgu_ptr + lay * (2 * INTER)
        elif kind == 4:
            w_base = wd_ptr + lay * (H * INTER)
            ws_base = sd_ptr + lay * H
        N = tl.where(kind == 0, NQKV, tl.where(kind == 3, 2 * INTER, H))
        K = tl.where(kind == 2, HQD, tl.where(kind == 4, INTER, H))
        K = tl.multiple_of(K, BLOCK_K)
        w0 = tl.zeros([BLOCK_N, BLOCK_K], w_base.dtype.element_ty)
        if EARLY:
            steps = K // BLOCK_K
            u_begin = (p * ((N // BLOCK_N) * steps)) // P
            u_end = ((p + 1) * ((N // BLOCK_N) * steps)) // P
            w0 = _w_tile(w_base, u_begin, steps, K, in_layer & (kind != 1) & (u_begin < u_end),
                         BLOCK_N, BLOCK_K)
            if L2PRE > 0:
                first_tile = u_begin // steps
                k_begin = (u_begin + 1 - first_tile * steps) * BLOCK_K
                k_end = tl.minimum(tl.minimum(k_begin + L2PRE * BLOCK_K, K),
                                   (u_end - first_tile * steps) * BLOCK_K)
                offs_n = first_tile * BLOCK_N + tl.arange(0, BLOCK_N)
                _prefetch_rows(w_base, offs_n, (offs_n < N) & in_layer & (kind != 1), K, k_begin,
                               tl.maximum(k_end, k_begin),
                               w_base.dtype.element_ty.primitive_bitwidth // 8)
        if SYNC:
            if ph > ph_begin:
                _grid_sync(bar_ptr, err_ptr, (ph - ph_begin) * P, MAX_SPIN)
        if in_layer & (kind == 1):
            kv_half = n_blocks.to(tl.int64) * (BS * HKV * D)  # one layer's keys (or values)
            _attention(qkv_ptr + lay * NQKV, kv_ptr + lay * 2 * kv_half,
                       kv_ptr + (lay * 2 + 1) * kv_half, bt_ptr, pm_ptr + lay * (HQ * NCH_MAX),
                       pl_ptr + lay * (HQ * NCH_MAX), pa_ptr + lay * (HQ * NCH_MAX * D),
                       cnt_ptr + lay * HKV, ao_ptr + lay * HQD, pos, p, P, qk_scale,
                       log2_theta, HQ, HKV, D, BS, CHUNK, CB, NCH_MAX)
        elif in_layer & (kind == 2):
            _gemv_run(w_base, ws_base, w0, N, K, ao_ptr + lay * HQD, ao_ptr, 1.0, h_ptr, p, P,
                      INTER, 0, True, A8, EARLY, BLOCK_N, BLOCK_K, BLOCK_M, F32_DOT)
        elif in_layer & (kind == 4):
            _gemv_run(w_base, ws_base, w0, N, K, gu_ptr + lay * (2 * INTER), gu_ptr, 1.0, h_ptr, p,
                      P, INTER, 2, True, A8, EARLY, BLOCK_N, BLOCK_K, BLOCK_M, F32_DOT)
        elif in_layer:  # a normed input: qkv (kind 0) or gate/up (3)
            aux = lnw_ptr + lay * (2 * H)
            out = qkv_ptr + lay * NQKV
            if kind == 3:
                aux = lnw_ptr + lay * (2 * H) + H
                out = gu_ptr + lay * (2 * INTER)
            rstd = _rstd(h_ptr, H, eps, HB)
            _gemv_run(w_base, ws_base, w0, N, K, h_ptr, aux, rstd, out, p, P, INTER, 1, False, A8,
                      EARLY, BLOCK_N, BLOCK_K, BLOCK_M, F32_DOT)
        else:  # the LM head (bf16 always; no early tile)
            rstd = _rstd(h_ptr, H, eps, HB)
            _gemv_run(head_ptr, fnw_ptr, tl.zeros([BLOCK_N, BLOCK_K], tl.bfloat16), V, H, h_ptr,
                      fnw_ptr, rstd, logits_ptr, p, P, INTER, 1, False, False, 0, BLOCK_N, BLOCK_K,
                      BLOCK_M, F32_DOT)
