"""Where the decode kernel's RoPE and K/V write (KILN_ATTN_ROPE) and the rotary launch differ:
one sequence at the 8B shapes, the cache bytes and the outputs compared element by element."""

import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../tests/gpu"))
from test_kernels_gpu import paged_case  # noqa: E402

from kiln.kernels.attention import paged_attention  # noqa: E402
from kiln.kernels.decode_attention import DecodeRope  # noqa: E402
from kiln.kernels.rotary import apply_rotary_ref, rotary_and_write_kv  # noqa: E402
from kiln.layers.rotary import RopeConfig, build_cos_sin_cache  # noqa: E402


def case(rows, graph_len, dtype, pdl):
    os.environ["KILN_PDL"] = pdl
    gen = torch.Generator(device="cuda").manual_seed(rows)
    contexts = torch.randint(30, 3000, (rows,), generator=gen, device="cuda").tolist()
    kv_cache, meta = paged_case([(c, 1) for c in contexts], 8, 128, 16, dtype, gen)
    if graph_len:
        meta = dataclasses.replace(meta, max_seq_len=graph_len)
    qkv = torch.randn(rows, 6144, device="cuda").to(dtype)
    q, k, v = qkv.split((4096, 1024, 1024), dim=-1)
    q, k, v = q.view(rows, 32, 128), k.view(rows, 8, 128), v.view(rows, 8, 128)
    positions = torch.tensor(contexts, device="cuda")
    cos_sin = build_cos_sin_cache(128, 8192, RopeConfig(theta=500000.0), "cuda")
    want_cache = kv_cache.clone()
    q_rot = rotary_and_write_kv(q, k, v, positions, cos_sin, want_cache, meta.slot_mapping)
    want = paged_attention(q_rot, want_cache, meta, 128 ** -0.5, None)
    cache = kv_cache.clone()
    out = paged_attention(q, cache, meta, 128 ** -0.5, None,
                          rope=DecodeRope(positions, meta.slot_mapping, cos_sin, k, v))
    torch.cuda.synchronize()
    print(f"== rows {rows} graph_len {graph_len} {dtype} PDL {pdl}: contexts {contexts[:4]} "
          f"slots {meta.slot_mapping[:4].tolist()}")
    diff = (cache.view(torch.int16) != want_cache.view(torch.int16)).nonzero()
    print(f"  cache elements differing: {len(diff)} of {cache.numel()}; untouched differ: "
          f"{int((cache != kv_cache).sum())} vs want {int((want_cache != kv_cache).sum())}")
    for idx in diff[:12].tolist():
        kv, blk, off, head, dim = idx
        slot = blk * 16 + off
        print(f"   kv {kv} slot {slot} head {head} dim {dim}: got {cache[tuple(idx)].item():.6g} "
              f"want {want_cache[tuple(idx)].item():.6g} before {kv_cache[tuple(idx)].item():.6g}")
    if len(diff):
        slots = sorted({r[1] * 16 + r[2] for r in diff.tolist()})
        print(f"  slots differing: {slots[:10]}")
    od = (out != want)
    print(f"  output elements differing: {int(od.sum())} of {out.numel()}; max |diff| "
          f"{float((out.float() - want.float()).abs().max()):.3g}")
    # each path's rotated keys (and the rotary launch's queries) against the torch reference
    ref_q, ref_k = apply_rotary_ref(q, k, positions, cos_sin)
    slots = meta.slot_mapping.long()
    keys = {"rotary launch": want_cache[0].reshape(-1, 8, 128)[slots],
            "decode kernel": cache[0].reshape(-1, 8, 128)[slots]}
    print(f"  rotary launch q vs reference: {int((q_rot != ref_q).sum())} of {q_rot.numel()} differ")
    for name, got in keys.items():
        print(f"  {name} keys vs reference: {int((got != ref_k).sum())} of {got.numel()} differ")


for pdl in ("0", "1"):
    for rows, gl in ((1, 0), (4, 8192)):
        for dtype in (torch.bfloat16, torch.float16):
            case(rows, gl, dtype, pdl)
