"""Prototype: a whole batch-1 decode step of a Llama-architecture model (bf16 or fp8 W8A8) as ONE
persistent launch: every layer's RMSNorm, QKV, rotary, attention over the KV cache, output
projection, RMSNorm, gate/up, SiLU·mul and down projection, then the final norm and the LM head.

The next step after proto_persistent_chain.py (../h200-persistent/README.md). The chain times
the GEMVs alone; this is the whole step, so its time can be set against the engine's decode step
at batch 1 (bf16 8B: 4.24-4.33 ms, 231-236 tok/s; the issue #5 bar is 255 tok/s, 3.92 ms).

Phases (a grid barrier between phases, as in proto_persistent_chain), five a layer:
  0  qkv[l] = W_qkv · bf16(rmsnorm(h) * ln[l, 0])          (each program takes the norm itself)
  1  attention: units (kv head, CHUNK keys of the cache) take their 4 query heads' rotary, scores,
     softmax partials; the new token's k and v come from qkv[l] and go into the cache; the last
     unit of a kv head to finish (a counter) combines that head's chunks into ao[l]
  2  h += W_o · bf16(ao[l])
  3  gu[l] = W_gate_up · bf16(rmsnorm(h) * ln[l, 1])
  4  h += W_down · bf16(silu(gate) * up)                    (SiLU·mul done on the input slices)
and last: logits = W_head · bf16(rmsnorm(h) * final_norm).
The kernel and its phases are in proto_step_kernels.py; this file holds the model, the
reference, the checks and the timing. Each GEMV phase is the chain's stream-K GEMV (_gemv_run):
the (tile, K step) units cut into P equal runs, whole tiles stored (or added to h), the shared
first and last tiles added with atomics. The residual stream h stays in float32; every GEMV input
is rounded to bf16.

The KV cache is paged as the engine's (per layer [2, blocks, 16 slots, kv heads, head dim], bf16;
one sequence's block table, in shuffled order). Rotary has no scaling. This measures what one
launch costs; it is not yet a model runner. Checked against a float32 torch step that makes the
same roundings (reference()).

    PYTHONPATH=. python benchmarks/kernels/proto_persistent_step.py [--pos 256] [--json OUT]
    PYTHONPATH=. python benchmarks/kernels/proto_persistent_step.py --check-only   # CPU too
    PYTHONPATH=. python benchmarks/kernels/proto_persistent_step.py --compile-only # sm_90, no GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from proto_persistent_chain import (MAX_SPIN, check_setup, programs_per_sm,  # noqa: E402
                                    time_graph)
from proto_step_kernels import _step_kernel  # noqa: E402

from kiln.kernels.quant_act import quant_per_token_ref  # noqa: E402

PHASES_PER_LAYER = 5
LLAMA3_8B = dict(H=4096, HQ=32, HKV=8, D=128, INTER=14336, V=128256, L=32, eps=1e-5,
                 theta=500000.0)
BLOCK_SIZE = 16  # cache slots a block, as the engine's default
SMALL = dict(H=128, HQ=4, HKV=2, D=32, INTER=256, V=512, L=2, eps=1e-5, theta=10000.0)
# (BLOCK_N, BLOCK_K, warps, stages, programs per SM, EARLY, CHUNK[, L2PRE]), per kind of
# weights
VARIANTS = {"bf16": [(64, 128, 4, 4, 1, 1, 16), (64, 128, 4, 4, 1, 0, 16),
                     (64, 128, 8, 6, 1, 1, 32), (64, 128, 4, 4, 2, 1, 16),
                     (64, 128, 4, 4, 1, 1, 16, 8)],
            "fp8": [(64, 128, 4, 6, 1, 1, 16), (64, 128, 4, 4, 2, 1, 16),
                    (64, 256, 8, 4, 1, 1, 32), (64, 256, 8, 6, 1, 1, 16),
                    (64, 128, 4, 6, 1, 1, 16, 8)]}
CHECK_VARIANTS = [(16, 32, 4, 2, 1, 1, 16), (32, 64, 4, 2, 1, 0, 8)]


class Step:
    """Random weights of a Llama-architecture model (bf16, or with kind "fp8" the layers' weights
    as fp8 codes with per-channel scales and the LM head bf16), a KV cache filled up to pos, and
    the buffers of one decode step."""

    def __init__(self, cfg: dict, pos: int, max_ctx: int, device: str, seed: int = 0,
                 cb: int = 16, kind: str = "bf16"):
        self.cfg, self.pos, self.max_ctx, self.kind = cfg, pos, max_ctx, kind
        self.cb = cb  # chunks the combine takes at a time
        gen = torch.Generator(device=device).manual_seed(seed)
        H, HQ, HKV, D, INTER, V, L = (cfg[k] for k in ("H", "HQ", "HKV", "D", "INTER", "V", "L"))
        nqkv = (HQ + 2 * HKV) * D

        def mat(*shape):
            w = torch.empty(*shape, dtype=torch.bfloat16, device=device)
            return w.normal_(0.0, shape[-1] ** -0.5, generator=gen)

        def layer_mat(*shape):  # fp8: per layer, so the float32 copies stay one layer big
            w = mat(*shape)
            if kind != "fp8":
                return w, torch.ones(shape[:2], device=device)
            codes = torch.empty(shape, dtype=torch.float8_e4m3fn, device=device)
            scales = torch.empty(shape[:2], device=device)
            for layer in range(shape[0]):
                wf = w[layer].float()
                scales[layer] = wf.abs().amax(dim=1).clamp_min(1e-12) / 448.0
                codes[layer] = (wf / scales[layer][:, None]).clamp(-448.0, 448.0).to(codes.dtype)
            return codes, scales
        (self.wqkv, self.sqkv), (self.wo, self.so) = layer_mat(L, nqkv, H), layer_mat(L, H, HQ * D)
        (self.wgu, self.sgu), (self.wd, self.sd) = layer_mat(L, 2 * INTER, H), layer_mat(L, H, INTER)
        self.head = mat(V, H)
        self.lnw = 1.0 + 0.1 * torch.randn(L, 2, H, generator=gen, device=device)
        self.fnw = 1.0 + 0.1 * torch.randn(H, generator=gen, device=device)
        # the paged cache: the sequence's blocks in shuffled order among a few more
        n_table = -(-max_ctx // BLOCK_SIZE)
        self.n_blocks = n_table + 4
        self.block_table = torch.randperm(self.n_blocks, generator=gen, device=device)[:n_table]
        self.block_table = self.block_table.to(torch.int32)
        self.kv = torch.zeros(L, 2, self.n_blocks, BLOCK_SIZE, HKV, D, dtype=torch.bfloat16,
                              device=device)
        slots = self.slots(torch.arange(pos, device=device))
        self.kv.view(L, 2, -1, HKV, D)[:, :, slots] = torch.randn(
            L, 2, pos, HKV, D, generator=gen, device=device).to(torch.bfloat16)
        self.h0 = torch.randn(H, generator=gen, device=device)
        self.chunk_max = 0
        f32 = dict(dtype=torch.float32, device=device)
        self.h = torch.zeros(H, **f32)
        self.qkv = torch.zeros(L, nqkv, **f32)
        self.ao = torch.zeros(L, HQ * D, **f32)
        self.gu = torch.zeros(L, 2 * INTER, **f32)
        self.logits = torch.zeros(V, **f32)
        self.cnt = torch.zeros(L, HKV, dtype=torch.int32, device=device)
        self.bar = torch.zeros(1, dtype=torch.int32, device=device)
        self.err = torch.zeros(1, dtype=torch.int32, device=device)
        self.parts: dict[int, tuple] = {}

    def slots(self, t: torch.Tensor) -> torch.Tensor:
        """Flat cache slots (block * BLOCK_SIZE + offset) of positions t."""
        return self.block_table[t // BLOCK_SIZE].long() * BLOCK_SIZE + t % BLOCK_SIZE

    def cached(self, layer: int, which: int, positions: torch.Tensor) -> torch.Tensor:
        """Keys (which 0) or values (1) of a layer at positions: [kv heads, len, D] float32."""
        c = self.cfg
        flat = self.kv[layer, which].view(-1, c["HKV"], c["D"])
        return flat[self.slots(positions)].float().transpose(0, 1)

    @property
    def phases(self) -> int:
        return PHASES_PER_LAYER * self.cfg["L"] + 1

    @property
    def weight_bytes(self) -> int:
        mats = (self.wqkv, self.wo, self.wgu, self.wd, self.head)
        scales = (self.sqkv, self.so, self.sgu, self.sd) if self.kind == "fp8" else ()
        return sum(t.numel() * t.element_size() for t in mats + scales)

    def partials(self, chunk: int) -> tuple:
        """The softmax partial buffers for chunks of `chunk` keys: (m, l, acc, NCH_MAX)."""
        if chunk not in self.parts:
            c = self.cfg
            nch_max = triton.next_power_of_2(self.pos // chunk + 1)
            dev = self.h.device
            self.parts[chunk] = (torch.zeros(c["L"], c["HQ"], nch_max, device=dev),
                                 torch.zeros(c["L"], c["HQ"], nch_max, device=dev),
                                 torch.zeros(c["L"], c["HQ"], nch_max, c["D"], device=dev),
                                 nch_max)
        return self.parts[chunk]

    def reset(self) -> None:
        """The step's inputs back: h the embedding, atomic targets and counters to zero."""
        self.h.copy_(self.h0)
        for t in (self.qkv, self.gu, self.logits, self.cnt, self.bar):
            t.zero_()

    def kernel_args(self, variant: tuple, begin: int, end: int, sync: bool) -> tuple:
        """(arguments, constexpr keywords) of _step_kernel for phases [begin, end)."""
        block_n, block_k, _, _, _, early, chunk = variant[:7]
        c = self.cfg
        pm, pl, pa, nch_max = self.partials(chunk)
        args = (self.wqkv, self.wo, self.wgu, self.wd, self.sqkv, self.so, self.sgu, self.sd,
                self.lnw, self.fnw, self.head, self.h, self.kv, self.block_table, self.qkv, pm,
                pl, pa,
                self.cnt, self.ao, self.gu, self.logits, self.bar, self.err, self.pos, c["L"],
                self.n_blocks, begin, end, c["eps"], c["D"] ** -0.5, math.log2(c["theta"]))
        consts = dict(H=c["H"], HQ=c["HQ"], HKV=c["HKV"], D=c["D"], INTER=c["INTER"], V=c["V"],
                      HB=triton.next_power_of_2(c["H"]), BS=BLOCK_SIZE, CHUNK=chunk, CB=self.cb,
                      NCH_MAX=nch_max, SYNC=sync, EARLY=early, BLOCK_N=block_n,
                      BLOCK_K=block_k, BLOCK_M=16, MAX_SPIN=MAX_SPIN,
                      F32_DOT=not self.h.is_cuda, A8=self.kind == "fp8",
                      L2PRE=variant[7] if len(variant) > 7 else 0)
        return args, consts

    def launch(self, variant: tuple, programs: int, begin: int, end: int, sync: bool) -> None:
        warps, stages = variant[2:4]
        args, consts = self.kernel_args(variant, begin, end, sync)
        opts = dict(num_warps=warps, num_stages=stages) if self.h.is_cuda else {}
        _step_kernel[(programs,)](*args, **consts, **opts)

    def reference(self, group: int) -> tuple:
        """(logits, final h, new k and v of every layer) of a float32 torch step with the
        kernel's roundings: bf16 GEMV inputs, or for fp8 layers inputs quantized to fp8 per
        `group` values (the kernel's BLOCK_K). The cache is only read."""
        c = self.cfg
        H, HQ, HKV, D, INTER, L = (c[k] for k in ("H", "HQ", "HKV", "D", "INTER", "L"))
        pos, gqa = self.pos, HQ // HKV
        half = D // 2
        inv = torch.exp2(-(torch.arange(D, device=self.h.device) % half).float() * 2.0 / D
                         * math.log2(c["theta"]))
        ang = pos * inv
        cos, sin = torch.cos(ang), torch.sin(ang)

        def rope(x):  # [..., D]
            return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

        def normed(h, w):
            return h * (1.0 / torch.sqrt((h * h).sum() / H + c["eps"])) * w

        def gemv(w, scales, x):
            if self.kind != "fp8":
                return w.float() @ x.to(torch.bfloat16).float()
            q, sx = quant_per_token_ref(x.reshape(-1, group), torch.float8_e4m3fn)
            return (w.float() @ (q.float() * sx).reshape(-1)) * scales

        h = self.h0.clone()
        new_k, new_v = [], []
        for layer in range(L):
            qkv = gemv(self.wqkv[layer], self.sqkv[layer], normed(h, self.lnw[layer, 0]))
            q = rope(qkv[:HQ * D].view(HQ, D)) * D ** -0.5
            k_new = rope(qkv[HQ * D:(HQ + HKV) * D].view(HKV, D))
            v_new = qkv[(HQ + HKV) * D:].view(HKV, D)
            past = torch.arange(pos, device=h.device)
            keys = torch.cat([self.cached(layer, 0, past), k_new[:, None]], dim=1)
            vals = torch.cat([self.cached(layer, 1, past), v_new[:, None]], dim=1)
            keys, vals = keys.repeat_interleave(gqa, 0), vals.repeat_interleave(gqa, 0)
            att = torch.softmax((q[:, None, :] * keys).sum(-1), dim=-1)
            ao = (att[:, :, None] * vals).sum(1).reshape(-1)
            h = h + gemv(self.wo[layer], self.so[layer], ao)
            gu = gemv(self.wgu[layer], self.sgu[layer], normed(h, self.lnw[layer, 1]))
            act = torch.nn.functional.silu(gu[:INTER]) * gu[INTER:]
            h = h + gemv(self.wd[layer], self.sd[layer], act)
            new_k.append(k_new)
            new_v.append(v_new)
        logits = self.head.float() @ normed(h, self.fnw).to(torch.bfloat16).float()
        return logits, h, torch.stack(new_k), torch.stack(new_v)

    def _new_cached(self, which: int) -> torch.Tensor:
        """What the step wrote at position pos, every layer: [layers, kv heads, D]."""
        at = torch.tensor([self.pos], device=self.h.device)
        return torch.stack([self.cached(layer, which, at)[:, 0]
                            for layer in range(self.cfg["L"])])

    def errors(self, ref: tuple) -> dict:
        """Relative errors (norm) of logits, h and the new token's cached k and v (against the
        reference rounded to bf16), and whether the logits' argmax is the same."""
        logits, h, k_new, v_new = ref

        def rel(a, b):
            return ((a.float() - b).norm() / b.norm()).item()
        return {"logits": rel(self.logits, logits), "h": rel(self.h, h),
                "kv": max(rel(self._new_cached(which), new.to(torch.bfloat16).float())
                          for which, new in ((0, k_new), (1, v_new))),
                "argmax_same": bool(self.logits.argmax() == logits.argmax())}


def run_check(device: str, programs: list[int], kinds: list[str]) -> int:
    """Per-phase and single launches of the small model against the reference."""
    bad = 0
    # CB 2: the combine's loop runs at 5 chunks of 8 keys
    for kind, pos, cb in ((kind, pos, cb) for kind in kinds for pos, cb in ((5, 16), (37, 2))):
        step = Step(SMALL, pos, 64, device, cb=cb, kind=kind)
        for variant in CHECK_VARIANTS:
            ref = step.reference(variant[1])
            for mode in ("per_phase", "persistent"):
                for p in programs:
                    if mode == "persistent" and device == "cpu" and p > 1:
                        continue  # the interpreter runs programs in turn: see the chain's note
                    step.reset()
                    if mode == "persistent":
                        step.launch(variant, p, 0, step.phases, True)
                    else:
                        for ph in range(step.phases):
                            step.launch(variant, p, ph, ph + 1, False)
                    err = step.errors(ref)
                    tol = 2e-3 if device == "cuda" else 1e-5
                    ok = (err["logits"] < tol and err["h"] < tol and err["kv"] < tol
                          and step.err.item() == 0)
                    bad += not ok
                    print(f"  {kind} pos {pos} {mode:<10} {variant} programs {p}: "
                          f"logits {err['logits']:.1e} "
                          f"h {err['h']:.1e} kv {err['kv']:.1e} {'ok' if ok else 'WRONG'}",
                          flush=True)
    return bad


def compile_only() -> None:
    """Each variant's single launch compiled for sm_90 at the 8B sizes, without a GPU."""
    import compile_sm90
    c = LLAMA3_8B
    ptrs = {name: "*fp32" for name in ("lnw_ptr", "fnw_ptr", "h_ptr", "qkv_ptr", "pm_ptr", "pl_ptr",
                                       "pa_ptr", "ao_ptr", "gu_ptr", "logits_ptr")}
    ptrs.update({"cnt_ptr": "*i32", "bar_ptr": "*i32", "err_ptr": "*i32", "bt_ptr": "*i32",
                 "sqkv_ptr": "*fp32", "so_ptr": "*fp32", "sgu_ptr": "*fp32", "sd_ptr": "*fp32"})
    for kind, variants in VARIANTS.items():
        a8 = kind == "fp8"
        weights = {name: "*fp8e4nv" if a8 else "*bf16"
                   for name in ("wqkv_ptr", "wo_ptr", "wgu_ptr", "wd_ptr")}
        for variant in variants:
            block_n, block_k, warps, stages, _, early, chunk = variant[:7]
            consts = dict(H=c["H"], HQ=c["HQ"], HKV=c["HKV"], D=c["D"], INTER=c["INTER"], V=c["V"],
                          HB=c["H"], BS=BLOCK_SIZE, CHUNK=chunk, CB=16, NCH_MAX=128,
                          SYNC=True, EARLY=early,
                          BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_M=16, MAX_SPIN=MAX_SPIN,
                          F32_DOT=False, A8=a8, _ptrs={**ptrs, **weights},
                          L2PRE=variant[7] if len(variant) > 7 else 0)
            kern = compile_sm90.compile_one(_step_kernel, consts, "bf16", warps, stages)
            print(kind, variant, compile_sm90.resources(kern), flush=True)


def room(step: Step, variant: tuple) -> int:
    """Programs of this variant's single launch an SM holds at once (compiled kernel)."""
    warps, stages = variant[2:4]
    step.reset()
    args, consts = step.kernel_args(variant, 0, step.phases, True)
    kern = _step_kernel.warmup(*args, **consts, num_warps=warps, num_stages=stages, grid=(1,))
    return programs_per_sm(kern, warps, variant)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pos", default="256,1024", help="positions (context before the new token)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--weights", default="bf16,fp8",
                    help="bf16 and/or fp8 (the layers' weights fp8 W8A8, the LM head bf16)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    if args.compile_only:
        compile_only()
        return 0
    if args.check_only or not torch.cuda.is_available():
        device, programs = check_setup()
        bad = run_check(device, programs, args.weights.split(","))
        print(f"{'all correct' if not bad else f'{bad} wrong'} ({device})")
        return 1 if bad else 0

    import bench_quant
    t0 = time.time()
    ceil = bench_quant.ceilings()
    copy = ceil["copy_GBps"]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    results = []
    cfg = dict(LLAMA3_8B, L=args.layers)
    for kind, pos in ((k, int(x)) for k in args.weights.split(",") for x in args.pos.split(",")):
        step = Step(cfg, pos, pos + 64, "cuda", kind=kind)
        gb = step.weight_bytes / 1e9
        refs: dict[int, tuple] = {}
        print(f"{kind} pos {pos}: {step.phases} phases, {gb:.2f} GB of weights, "
              f"{gb / copy * 1e3:.3f} ms at the copy rate ({copy:.0f} GB/s)", flush=True)
        for variant in VARIANTS[kind]:
            try:
                fit = room(step, variant)
            except Exception as exc:  # reported, not fatal
                print(f"{variant}: does not compile: {str(exc).splitlines()[0][:200]}", flush=True)
                continue
            if variant[1] not in refs:
                refs[variant[1]] = step.reference(variant[1])
            programs = sms * variant[4]
            modes = [("per_phase", False)] + ([("persistent", True)] if fit >= variant[4] else [])
            for mode, sync in modes:
                def fn() -> None:
                    step.reset()
                    if sync:
                        step.launch(variant, programs, 0, step.phases, True)
                    else:
                        for ph in range(step.phases):
                            step.launch(variant, programs, ph, ph + 1, False)
                step.err.zero_()
                ms = time_graph(fn, args.reps)
                err = step.errors(refs[variant[1]])
                note = "BARRIER TIMED OUT" if step.err.item() else ""
                results.append({"weights": kind, "pos": pos, "mode": mode, "variant": variant,
                                "ms": ms, "tok_s": 1e3 / ms, "weight_GB": gb,
                                "of_copy": gb / ms * 1e3 / copy, "errors": err, "note": note})
                print(f"{kind} pos {pos} {mode:<10} {str(variant):<30} {ms:7.3f} ms "
                      f"{1e3 / ms:6.1f} tok/s ({gb / ms * 1e3 / copy:6.1%} of copy) "
                      f"logits err {err['logits']:.1e} "
                      f"argmax {'same' if err['argmax_same'] else 'DIFFERS'} {note}", flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"ceilings": ceil, "layers": args.layers, "results": results,
                                   "seconds": time.time() - t0,
                                   "device": torch.cuda.get_device_name(),
                                   "torch": torch.__version__, "triton": triton.__version__}, f,
                                  indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
