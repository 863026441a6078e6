"""Prototype: the batch-1 bf16 GEMVs of a decode step as one persistent Gluon launch whose
weight copies run through a shared-memory ring that does NOT drain at the phase barriers.

Why (benchmarks/h200-persistent, run-a): a persistent Triton launch of the 8B step's 129 GEMVs
with a grid barrier between phases took 3.832 ms for 15.0 GB of bf16 weights, the engine's
launches under PDL 3.934 ms, and the same single launch without barriers (wrong results, the
streaming rate) 3.372 ms. The 0.46 ms difference is about 3.6 us a barrier: the memory pipeline
drains before each barrier and ramps after it, because Triton's software pipeline lives inside
one phase's loop. Weights do not depend on the phase before, so nothing forbids streaming the
next phase's weights while the programs wait for each other; only x, the previous output,
must wait.

The kernel (_ring_kernel): P programs (one or two an SM, all resident). Each program walks its
stream-K run of units (a BLOCK_N x BLOCK_K weight tile; N tiles x K steps in order) in every
phase, one after another, as ONE sequence. A cursor over that sequence issues cp.async copies
of the weight tile STAGES - 1 units ahead of the unit being computed, across phase boundaries,
into a ring of STAGES shared-memory slots. Before computing the first unit of a phase the
program waits at a grid barrier (counter in global memory: release on arrival, acquire while
polling), then reads x (the previous phase's float32 output, rounded to bf16) from L2. The
copies already in flight keep the memory busy through the barrier.

Every thread reads back from shared memory exactly the 16-byte chunks it copied (one register
layout for both), so the ring needs no CTA-wide synchronization: cp.async.wait_group orders a
thread's own copies. The product is FMA in float32 (acc[BLOCK_N, BLOCK_K] += w * x, reduced
over K when a tile ends); a tile's partial sum is added to the zero-filled output with atomics.

Modes timed (medians of CUDA-graph replays), all in the same run:
  ring         - the kernel above;
  ring_pdl     - the same kernel launched once a phase under programmatic dependent launch:
                 its prologue copies are issued before it waits for the launch before (a
                 drop-in GEMV for the engine's decode graphs would run this way);
  ring_nosync  - the same launch without barriers (wrong results, not checked): its streaming
                 rate, so ring - ring_nosync is what the barriers still cost;
  engine       - the engine's kernel per phase (mma_gemv.tc_gemv, autotuned, under PDL);
  engine_ring  - kiln.kernels.ring_gemv per phase under PDL (this kernel made the engine's:
                 bf16 in and out, shared tiles finished by their last program), at each
                 --ring-early count of copies issued before the wait;
  engine+norm, engine_ring+norm (--between norm) - both with the engine's RMSNorm launched
                 after each GEMV (PDL), as small kernels stand between the GEMVs of a step;
  step_tc, step_ring, step_fused (--step) - a decode step's GEMVs with its small kernels
                 between them, or with the norms and SiLU-mul fused into the ring GEMVs
                 (step_chain); not checked here (tests/gpu/test_ring_gemv_gpu.py checks the
                 fused layer), the LM head's logits norm printed for a glance;
  triton       - the Triton persistent prototype's best bf16 variant of run-a;
and the device copy bandwidth. Each checked mode is compared phase by phase with a float32
product of its own input (proto_persistent_chain.Chain.check).

    PYTHONPATH=. python benchmarks/kernels/proto_ring_chain.py [--layers 32] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_ring_chain.py --check-only     # GPU, small
    PYTHONPATH=. python benchmarks/kernels/proto_ring_chain.py --compile-only   # sm_90, no GPU

Gluon has no interpreter: correctness is checked on the GPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

sys.path.insert(0, os.path.dirname(__file__))  # proto_persistent_chain, bench_quant

from proto_persistent_chain import (LAYER, LM_HEAD, Chain, programs_per_sm,  # noqa: E402
                                    time_graph)

from kiln.kernels.ring_gemv import _tile_layout  # noqa: E402  (16-byte runs, BLOCK_K a warp)

# (BLOCK_N, BLOCK_K, warps, stages, programs per SM); a 64 x 128 bf16 unit is 16 KB
VARIANTS = [(64, 128, 4, 8, 1), (64, 128, 8, 8, 1), (64, 128, 8, 12, 1), (64, 128, 4, 5, 2),
            (64, 128, 8, 5, 2), (32, 256, 4, 5, 2), (32, 128, 4, 10, 2), (64, 256, 8, 6, 1)]
CHECK_VARIANTS = [(64, 128, 4, 4, 1), (32, 128, 4, 3, 2), (64, 256, 8, 2, 1)]
# phase p reads the first K outputs of phase p - 1
CHECK_SHAPES = [("a", 512, 256), ("b", 768, 512), ("c", 256, 768), ("d", 384, 256),
                ("e", 256, 256)]
TRITON_BEST = (64, 128, 4, 4, 2, 0)  # run-a's best persistent bf16 variant


@gluon.jit
def _grid_sync(bar_ptr, err_ptr, target):
    """All programs' stores and atomics so far visible to all (bar.sync, then one arrival with
    release and polls with acquire); gives up after MAX_SPIN polls (err = 1)."""
    gl.thread_barrier()
    seen = gl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu") + 1
    spins = gl.load(err_ptr, volatile=True) * 1048576
    while (seen < target) & (spins < 1048576):
        seen = gl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    if seen < target:
        gl.atomic_xchg(err_ptr, 1)
    gl.thread_barrier()


@gluon.jit
def _run(tab_ptr, ph, p, P, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):
    """Phase ph's weight offset, K, K steps and this program's units [u_begin, u_end)."""
    row = tab_ptr + ph * 6
    n = gl.load(row + 1).to(gl.int32)
    k = gl.load(row + 2).to(gl.int32)
    steps = k // BLOCK_K
    units = (n // BLOCK_N) * steps
    w_off = gl.multiple_of(gl.load(row), 64)
    return w_off, gl.multiple_of(k, BLOCK_K), steps, (p * units) // P, ((p + 1) * units) // P


@gluon.jit(do_not_specialize=["ph_begin", "ph_end"])
def _ring_kernel(w_ptr, tab_ptr, y_ptr, bar_ptr, err_ptr, ph_begin, ph_end, SYNC: gl.constexpr,
                 BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
                 X_CHUNKS: gl.constexpr, PDL: gl.constexpr = False):
    L: gl.constexpr = _tile_layout(BLOCK_N, BLOCK_K, gl.num_warps())
    SMEM: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    # x of the phase, bf16, in shared memory: X_CHUNKS chunks of CH K steps (4096 values)
    CH: gl.constexpr = 4096 // BLOCK_K
    XL: gl.constexpr = gl.BlockedLayout([4], [32], [gl.num_warps()], [0])
    SMEM1: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    x_flat = gl.allocate_shared_memory(gl.bfloat16, [X_CHUNKS * 4096], SMEM1)
    x_smem = x_flat._reinterpret(gl.bfloat16, [X_CHUNKS * CH, BLOCK_K], SMEM1)  # a row a K step
    x_offs = gl.arange(0, 4096, layout=XL)
    p = gl.program_id(0)
    P = gl.num_programs(0)
    rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L))
    cols = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, L))
    ring = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_N, BLOCK_K], SMEM)

    # the copy cursor: phase cph, unit cu of run [.., cend) there
    cph = ph_begin
    cw, ck, csteps, cu, cend = _run(tab_ptr, cph, p, P, BLOCK_N, BLOCK_K)
    while (cu >= cend) & (cph < ph_end - 1):  # skip empty runs
        cph += 1
        cw, ck, csteps, cu, cend = _run(tab_ptr, cph, p, P, BLOCK_N, BLOCK_K)
    for s in gl.static_range(STAGES - 1):
        tile = cu // csteps
        ptrs = (w_ptr + cw + (tile * BLOCK_N + rows).to(gl.int64)[:, None] * ck
                + ((cu - tile * csteps) * BLOCK_K + cols)[None, :])
        async_copy.async_copy_global_to_shared(ring.index(s), ptrs, mask=cu < cend)
        async_copy.commit_group()
        cu += 1
        while (cu >= cend) & (cph < ph_end - 1):
            cph += 1
            cw, ck, csteps, cu, cend = _run(tab_ptr, cph, p, P, BLOCK_N, BLOCK_K)

    if PDL:  # the copies above read weights only: issued before the kernel before ends
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)
    i = 0
    for ph in range(ph_begin, ph_end):
        row = tab_ptr + ph * 6
        _, k, steps, u_begin, u_end = _run(tab_ptr, ph, p, P, BLOCK_N, BLOCK_K)
        x_base = y_ptr + gl.multiple_of(gl.load(row + 3), 16)
        y_base = y_ptr + gl.multiple_of(gl.load(row + 4), 16)
        if SYNC:
            if ph > ph_begin:
                _grid_sync(bar_ptr, err_ptr, (ph - ph_begin) * P)
        gl.thread_barrier()  # the phase before is done with x_smem
        for c in gl.static_range(X_CHUNKS):
            if c * 4096 < k:
                xo = c * 4096 + x_offs
                xc = gl.load(x_base + xo, mask=xo < k, other=0.0, cache_modifier=".cg")
                x_flat.slice(c * 4096, 4096).store(xc.to(gl.bfloat16))
        gl.thread_barrier()
        acc = gl.zeros([BLOCK_N, BLOCK_K], gl.float32, L)
        for u in range(u_begin, u_end):
            # the copy STAGES - 1 units ahead, into the slot the unit before this one left
            tile_c = cu // csteps
            ptrs = (w_ptr + cw + (tile_c * BLOCK_N + rows).to(gl.int64)[:, None] * ck
                    + ((cu - tile_c * csteps) * BLOCK_K + cols)[None, :])
            async_copy.async_copy_global_to_shared(ring.index((i + STAGES - 1) % STAGES), ptrs,
                                                   mask=cu < cend)
            async_copy.commit_group()
            cu += 1
            while (cu >= cend) & (cph < ph_end - 1):
                cph += 1
                cw, ck, csteps, cu, cend = _run(tab_ptr, cph, p, P, BLOCK_N, BLOCK_K)
            # this unit: x from L2 (written by other programs before the barrier), w from the ring
            tile = u // steps
            ks = u - tile * steps
            xv = x_smem.index(ks).load(gl.SliceLayout(0, L)).to(gl.float32)
            async_copy.wait_group(STAGES - 1)
            w = ring.index(i % STAGES).load(L)
            acc += w.to(gl.float32) * xv[None, :]
            if (ks == steps - 1) | (u == u_end - 1):
                gl.atomic_add(y_base + tile * BLOCK_N + rows, gl.sum(acc, axis=1), sem="relaxed")
                acc = gl.zeros([BLOCK_N, BLOCK_K], gl.float32, L)
            i += 1
    async_copy.wait_group(0)


def x_chunks(shapes, block_k: int) -> int:
    """Chunks of 4096 values the largest input (K) of the chain takes."""
    return -(-max(k for _, _, k in shapes) // 4096)


def recorder(args, ceil: dict, gb: float, nph: int, t0: float, width: int):
    """rec(mode, variant, ms, err, note=""): one timed mode printed (GB/s, share of the copy
    rate, microseconds a phase over it) and, with --json, every result so far written."""
    import triton
    copy = ceil["copy_GBps"]
    results: list[dict] = []

    def rec(mode, variant, ms, err, note=""):
        over = (ms - gb / copy * 1e3) / nph * 1e3
        results.append({"mode": mode, "variant": variant, "ms": ms, "weight_GB": gb,
                        "GBps": gb / ms * 1e3, "of_copy": gb / ms * 1e3 / copy,
                        "over_copy_us_per_phase": over, "rel_err": err, "note": note})
        print(f"{mode:<12} {str(variant):<{width}} {ms:7.3f} ms {gb / ms * 1e3:6.0f} GB/s "
              f"({gb / ms * 1e3 / copy:6.1%} of copy) +{over:5.2f} us/phase "
              f"err {err if err is None else f'{err:.1e}'} {note}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ceilings": ceil, "layers": args.layers, "results": results,
                           "seconds": time.time() - t0, "device": torch.cuda.get_device_name(),
                           "torch": torch.__version__, "triton": triton.__version__}, f, indent=1)
    return rec


def gemv_chain(chain: Chain, ring: bool, between: str = "") -> tuple:
    """The chain a launch a phase through the engine's tensor-core GEMV (ring False; bf16 in and
    out) or its ring GEMV (kiln.kernels.ring_gemv: shared tiles finished by their last
    program). between="norm": each output goes through the engine's RMSNorm kernel (weights of
    ones) before the next phase reads it, as the norms, attention and SiLU-mul stand between
    the GEMVs of a decode step (the outputs are then not checked)."""
    from kiln.kernels import mma_gemv
    from kiln.kernels.ring_gemv import ring_gemv
    from kiln.kernels.rmsnorm import rms_norm
    outs: list[torch.Tensor] = []
    x0 = chain.x0.to(torch.bfloat16)[None, :]
    ones = torch.ones(max(n for _, n, _ in chain.shapes), dtype=torch.bfloat16,
                      device=chain.w.device)

    def run() -> None:
        outs.clear()
        x = x0
        for ph, row in enumerate(chain.rows):
            if ring:
                out = ring_gemv(x[:, :row[2]], chain.weight(ph))
            else:
                out = mma_gemv.tc_gemv(x[:, :row[2]], None, chain.weight(ph), None, None,
                                       torch.bfloat16)
            outs.append(out)
            x = rms_norm(out, ones[:row[1]], 1e-5) if between == "norm" else out
    return run, outs


def step_chain(chain: Chain, gemv: str, layers: int) -> tuple:
    """The GEMVs of `layers` 8B decoder layers and the LM head with the small kernels of a
    decode step between them (attention stood in for by an RMSNorm of q's part of qkv, so that
    one small kernel stands there too), each a launch under PDL:
      tc    - tc_gemv, and kiln's fused add + RMSNorm and SiLU-mul kernels between;
      ring  - ring_gemv, the same small kernels between;
      fused - ring_gemv_norm (add + RMSNorm in the GEMV's x) for qkv and gate_up and
              ring_gemv_silu (SiLU-mul in its x) for down: one small kernel a layer is left.
    Phase order of the chain's weights: qkv, o, gate_up, down a layer, then the LM head."""
    from kiln.kernels import mma_gemv
    from kiln.kernels.activation import silu_and_mul
    from kiln.kernels.ring_gemv import ring_gemv, ring_gemv_norm, ring_gemv_silu
    from kiln.kernels.rmsnorm import fused_add_rms_norm, rms_norm
    dev = chain.w.device
    ones = torch.ones(4096, dtype=torch.bfloat16, device=dev)
    x0 = chain.x0[:4096].to(torch.bfloat16)[None, :]
    res0 = torch.zeros(1, 4096, dtype=torch.bfloat16, device=dev)
    res = res0.clone()
    outs: list[torch.Tensor] = []

    def mm(x, ph):
        if gemv == "tc":
            return mma_gemv.tc_gemv(x, None, chain.weight(ph), None, None, torch.bfloat16)
        return ring_gemv(x, chain.weight(ph))

    def run() -> None:
        outs.clear()
        res.copy_(res0)
        h, r = x0, res
        for layer in range(layers):
            ph = 4 * layer
            if gemv == "fused":
                qkv, r = ring_gemv_norm(h, ones, 1e-5, chain.weight(ph), residual=r)
                a = rms_norm(qkv[:, :4096], ones, 1e-5)  # attention's stand-in
                o = ring_gemv(a, chain.weight(ph + 1))
                gu, r = ring_gemv_norm(o, ones, 1e-5, chain.weight(ph + 2), residual=r)
                h = ring_gemv_silu(gu, chain.weight(ph + 3))
            else:
                x, r = fused_add_rms_norm(h, r, ones, 1e-5)
                qkv = mm(x, ph)
                a = rms_norm(qkv[:, :4096], ones, 1e-5)
                o = mm(a, ph + 1)
                x, r = fused_add_rms_norm(o, r, ones, 1e-5)
                gu = mm(x, ph + 2)
                h = mm(silu_and_mul(gu), ph + 3)
        x, r = fused_add_rms_norm(h, r, ones, 1e-5)
        outs.append(mm(x, len(chain.rows) - 1) if gemv == "tc"
                    else ring_gemv(x, chain.weight(len(chain.rows) - 1)))
    return run, outs


def launch(chain: Chain, variant: tuple, programs: int, sync: bool, begin: int = 0,
           end: int | None = None, pdl: bool = False) -> None:
    block_n, block_k, warps, stages, _ = variant
    end = len(chain.shapes) if end is None else end
    _ring_kernel[(programs,)](chain.w, chain.table, chain.y, chain.bar, chain.err, begin, end,
                              SYNC=sync, BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages,
                              X_CHUNKS=x_chunks(chain.shapes, block_k), PDL=pdl,
                              num_warps=warps, **({"launch_pdl": True} if pdl else {}))


def fits(chain: Chain, variant: tuple) -> int:
    block_n, block_k, warps, stages, _ = variant
    kern = _ring_kernel.warmup(chain.w, chain.table, chain.y, chain.bar, chain.err, 0,
                               len(chain.shapes), SYNC=True, BLOCK_N=block_n, BLOCK_K=block_k,
                               STAGES=stages, X_CHUNKS=x_chunks(chain.shapes, block_k),
                               num_warps=warps, grid=(1,))
    return programs_per_sm(kern, warps, variant)


def compile_only() -> None:
    import compile_sm90
    ptrs = {"w_ptr": "*bf16", "tab_ptr": "*i64", "y_ptr": "*fp32", "bar_ptr": "*i32",
            "err_ptr": "*i32"}
    for variant in VARIANTS + CHECK_VARIANTS:
        block_n, block_k, warps, stages, _ = variant
        kern = compile_sm90.compile_one(
            _ring_kernel, {"SYNC": True, "BLOCK_N": block_n, "BLOCK_K": block_k,
                           "STAGES": stages, "X_CHUNKS": 4, "_ptrs": ptrs}, "bf16", warps, 1)
        print(variant, compile_sm90.resources(kern), flush=True)


def check(programs_list: list[int]) -> int:
    bad = 0
    for variant in CHECK_VARIANTS:
        chain = Chain(CHECK_SHAPES, "cuda")
        room = fits(chain, variant)
        for p in programs_list:
            if p > room * torch.cuda.get_device_properties(0).multi_processor_count:
                continue
            chain.reset()
            chain.err.zero_()
            launch(chain, variant, p, True)
            err = chain.check(chain.outputs())
            ok = err < 2e-3 and chain.err.item() == 0
            bad += not ok
            print(f"  ring {variant} programs {p}: rel err {err:.2e} {'ok' if ok else 'WRONG'}"
                  f"{' BARRIER TIMED OUT' if chain.err.item() else ''}", flush=True)
            chain.reset()
            for ph in range(len(CHECK_SHAPES)):
                launch(chain, variant, p, False, ph, ph + 1, pdl=True)
            err = chain.check(chain.outputs())
            bad += err >= 2e-3
            print(f"  ring_pdl {variant} programs {p}: rel err {err:.2e} "
                  f"{'ok' if err < 2e-3 else 'WRONG'}", flush=True)
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants", help="a Python list of variant tuples instead of VARIANTS")
    ap.add_argument("--no-baselines", action="store_true", help="skip engine and Triton modes")
    ap.add_argument("--ring-gemv-only", action="store_true",
                    help="the engine's tc_gemv and ring_gemv chains only")
    ap.add_argument("--ring-early", default="4",
                    help="KILN_RING_EARLY values to time ring_gemv's chain at (comma-separated)")
    ap.add_argument("--step", action="store_true",
                    help="also time the GEMVs with a decode step's small kernels between them: "
                         "tc_gemv, ring_gemv, and ring_gemv with the norms and SiLU-mul fused "
                         "(step_chain)")
    ap.add_argument("--between", choices=["norm"],
                    help="also time both engine chains with an RMSNorm launch after each GEMV")
    ap.add_argument("--json")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    if args.compile_only:
        compile_only()
        return 0
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if args.check_only:
        bad = check([1, 3, 7, sms, 2 * sms])
        print("all correct" if not bad else f"{bad} wrong")
        return 1 if bad else 0

    import bench_quant
    variants = VARIANTS
    if args.variants:
        import ast
        variants = [tuple(v) for v in ast.literal_eval(args.variants)]
    shapes = LAYER * args.layers + [LM_HEAD]
    t0 = time.time()
    ceil = bench_quant.ceilings()
    copy = ceil["copy_GBps"]
    chain = Chain(shapes, "cuda")
    gb = chain.weight_bytes / 1e9
    nph = len(shapes)
    print(f"copy {copy:.0f} GB/s; {nph} phases, {gb:.2f} GB: {gb / copy * 1e3:.3f} ms at copy",
          flush=True)
    rec = recorder(args, ceil, gb, nph, t0, 24)

    if not args.no_baselines:
        from kiln.kernels import pdl_scope
        run, outs = gemv_chain(chain, False)
        with pdl_scope(True):
            ms = time_graph(run, args.reps)
        rec("engine", "tc_gemv (autotuned, PDL)", ms, chain.check(outs, 0))
        del outs
        for early in args.ring_early.split(","):
            os.environ["KILN_RING_EARLY"] = early  # read at each launch, so at each capture
            run, outs = gemv_chain(chain, True)
            with pdl_scope(True):
                ms = time_graph(run, args.reps)
            rec("engine_ring", f"kiln.kernels.ring_gemv (PDL, {early} early)", ms, chain.check(outs, 0))
            del outs
        if args.between:
            for name, ring, early in [("engine+" + args.between, False, "")] + [
                    ("engine_ring+" + args.between, True, e) for e in args.ring_early.split(",")]:
                os.environ["KILN_RING_EARLY"] = early or "4"
                run, outs = gemv_chain(chain, ring, args.between)
                with pdl_scope(True):
                    ms = time_graph(run, args.reps)
                rec(name, f"{'ring_gemv, ' + early + ' early' if ring else 'tc_gemv'} (PDL), "
                    f"an RMSNorm launch after each", ms, None, "not checked")
                del outs
        if args.step:
            for name, early in [("tc", "4"), ("ring", "4"), ("ring", "1"), ("fused", "4"),
                                ("fused", "1"), ("fused", "0")]:
                os.environ["KILN_RING_EARLY"] = early
                run, outs = step_chain(chain, name, args.layers)
                with pdl_scope(True):
                    ms = time_graph(run, args.reps)
                logits = outs[0].float()
                rec("step_" + name, f"{args.layers} layers + LM head"
                    + ("" if name == "tc" else f", {early} early"), ms, None,
                    f"logits norm {logits.norm().item():.4g}")
                del outs
        if args.ring_gemv_only:
            return 0
        from proto_persistent_chain import fits as triton_fits
        if triton_fits(chain, TRITON_BEST, nph) >= TRITON_BEST[4]:
            def triton_fn():
                chain.reset()
                chain.launch(TRITON_BEST, sms * TRITON_BEST[4], 0, nph, True)
            chain.err.zero_()
            ms = time_graph(triton_fn, args.reps)
            rec("triton", TRITON_BEST, ms, chain.check(chain.outputs(), TRITON_BEST[1]),
                "BARRIER TIMED OUT" if chain.err.item() else "")
    for variant in variants:
        try:
            room = fits(chain, variant)
        except Exception as exc:  # a variant that does not compile is reported, not fatal
            print(f"{variant}: does not compile: {str(exc).splitlines()[0][:300]}", flush=True)
            continue
        if room < variant[4]:
            print(f"{variant}: {room} programs fit an SM, not {variant[4]}", flush=True)
            continue
        programs = sms * variant[4]

        def fn(sync):
            def go():
                chain.reset()
                launch(chain, variant, programs, sync)
            return go

        def per_phase_pdl():
            chain.reset()
            for ph in range(nph):
                launch(chain, variant, programs, False, ph, ph + 1, pdl=True)
        ms = time_graph(per_phase_pdl, args.reps)
        rec("ring_pdl", variant, ms, chain.check(chain.outputs()), "a launch a phase, PDL")
        chain.err.zero_()
        ms = time_graph(fn(True), args.reps)
        timed_out = chain.err.item() != 0
        rec("ring", variant, ms, chain.check(chain.outputs()),
            "BARRIER TIMED OUT" if timed_out else "")
        if timed_out:
            continue
        ms = time_graph(fn(False), args.reps)
        rec("ring_nosync", variant, ms, None, "results race: not checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
