"""The batch-1 GEMV of unquantized float16/bfloat16 weights through a shared-memory ring of
weight copies that are issued before the kernel waits for the one before it (Gluon).

y [1, N] = x [1, K] @ w [N, K].T (+ bias), float32 accumulation. One decode step of the 8B
model at batch 1 is 129 such products in a chain, each one waiting for the last. With the
tensor-core GEMV (mma_gemv.tc_gemv) every launch pays the ramp and the tail of its own memory
stream: its first weight loads wait until the kernel before it is done. Weights never depend on
the kernel before, only x does, so here:

- P programs (two an SM) cut the layer's units (a BLOCK_N x BLOCK_K weight tile: N tiles x K
  steps, in order) into P equal runs (stream-K), so every program streams the same bytes;
- each program first issues cp.async copies of its first STAGES - 1 units into a ring of
  shared-memory slots, and only then, under programmatic dependent launch, waits for the kernel
  before (griddepcontrol.wait). The copies overlap that kernel's tail and the launch gap;
- x (bf16/fp16, up to X_CHUNKS x 4096 values) is then copied into shared memory once, and the
  loop computes unit i while the copy of unit i + STAGES - 1 is in flight;
- every thread reads back from a slot exactly the 16-byte runs it copied there (one register
  layout for both), so the ring itself would need no CTA-wide barrier; the compiler still puts
  one after each wait for the copies (Triton's shared-memory barrier pass does so after every
  async-copy wait), one a unit in the sm_90 SASS; acc [BLOCK_N, BLOCK_K] += w * x in float32,
  summed over K when the run leaves a tile;
- a tile whose units one program holds is stored; a tile that runs share is finished by the
  last of them to arrive: each writes its float32 partial to its slot, counts itself in with a
  release/acquire atomic, and the last one adds the partials in program order (so the result
  does not depend on arrival order), adds the bias, stores, and re-arms the counter.

benchmarks/h200-ring (prototype: benchmarks/kernels/proto_ring_chain.py) measured the 8B
step's 129 bf16 GEMVs on an H100: 5.091 ms (99.5% of the copy rate) against 5.347 ms for
tc_gemv under PDL. The torch reference is ring_gemv_ref; CUDA sm_90 only. Used where
ring_gemv_enabled() says so: KILN_RING_GEMV, or, unset, the batch-1 decode graph of an engine
whose decode-step tuning chose the ring path (it won or lost by card and trigger; see
benchmarks/h200-ring). ring_int4 is the int4 weight-only form.
"""

from __future__ import annotations

import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from kiln.kernels import batch1_ring, pdl_args
from kiln.kernels.pdl import pdl_start_gluon

# (BLOCK_N, BLOCK_K, warps, stages, programs an SM): a unit is 16 KB of 16-bit weights
CONFIG_K256 = (32, 256, 4, 5, 2)
CONFIG_K128 = (64, 128, 4, 5, 2)
X_CHUNK = 4096      # x values a chunk of its shared-memory copy
MAX_K = 8 * X_CHUNK  # 32768: larger K takes the tensor-core GEMV


def ring_gemv_enabled(head: bool = False) -> bool:
    """KILN_RING_GEMV=1: batch-1 decode rows of float16/bfloat16 layers and of the unquantized
    LM head take ring_gemv where it applies (ring_gemv_ok); =layers: the layers only; =head:
    the LM head only; =fused: as 1, and the decoder layers' norms and SiLU-mul are computed by
    the GEMVs that read them (ring_fused_enabled); 0: the tensor-core GEMV and cuBLAS as
    before. Unset (the default): as 1 inside kiln.kernels.batch1_ring_scope(True) (the batch-1
    decode graph of an engine whose decode-step tuning chose the ring), else as 0."""
    flag = os.environ.get("KILN_RING_GEMV")
    if flag is None:
        return batch1_ring()
    return flag in ("1", "fused") or flag == ("head" if head else "layers")


def ring_fused_enabled() -> bool:
    """KILN_RING_GEMV=fused: a decoder layer at batch 1 computes qkv as ring_gemv_norm (its
    input norm, with the residual add, in the GEMV), gate_up likewise and down as ring_gemv_silu
    (kiln.models.llama.DecoderLayer)."""
    return os.environ.get("KILN_RING_GEMV", "0") == "fused"


def ring_config(n: int, k: int) -> tuple[int, int, int, int, int] | None:
    """The launch configuration for w [n, k], or None where the kernel does not apply (K not a
    multiple of 128, N not a multiple of the tile, K above MAX_K). KILN_RING_STAGES and
    KILN_RING_PER_SM override the ring's depth and the programs an SM (measurement)."""
    for cfg in (CONFIG_K256, CONFIG_K128):
        if k % cfg[1] == 0 and n % cfg[0] == 0 and 0 < k <= MAX_K:
            stages = int(os.environ.get("KILN_RING_STAGES", cfg[3]))
            per_sm = int(os.environ.get("KILN_RING_PER_SM", cfg[4]))
            return cfg[:3] + (stages, per_sm)
    return None


def ring_early(stages: int) -> int:
    """How many of the ring's first STAGES - 1 copies are issued before the kernel waits for the
    one before it (KILN_RING_EARLY; default all). Copies issued early overlap the kernels
    before, but they also queue ahead of those kernels' own loads (the small kernels between
    the GEMVs of a decode step sit on its critical path)."""
    early = int(os.environ.get("KILN_RING_EARLY", stages - 1))
    return max(0, min(early, stages - 1))


def ring_gemv_ok(x2: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ring_gemv takes x2 [M, K] @ w [N, K].T: one row on a CUDA device of compute
    capability 9.0 or later, float16/bfloat16 of one dtype, w contiguous, a configuration."""
    return x2.dim() == 2 and x2.shape[1] == w.shape[1] and ring_weight_ok(x2, w)


def ring_weight_ok(x_like: torch.Tensor, w: torch.Tensor) -> bool:
    """ring_gemv_ok for a row like x_like (device, dtype, one row) whatever its length: w's own
    K is what the product will read (a decoder layer asks this of down_proj before its input
    exists)."""
    if not (x_like.is_cuda and x_like.shape[0] == 1 and x_like.dtype in (torch.float16, torch.bfloat16)
            and w.dtype == x_like.dtype and w.is_contiguous() and x_like.stride(-1) == 1):
        return False
    if torch.cuda.get_device_capability(x_like.device)[0] < 9:
        return False
    return ring_config(*w.shape) is not None


def ring_gemv_ref(x2: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The reference: float32 products of the stored values, rounded once to x2's dtype."""
    out = x2.float() @ w.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x2.dtype)


def ring_gemv_norm_ref(x2, norm_weight, eps, w, bias=None, residual=None):
    """ring_gemv_norm's reference: kiln's RMSNorm references, then ring_gemv_ref."""
    from kiln.kernels.rmsnorm import fused_add_rms_norm_ref, rms_norm_ref
    if residual is None:
        return ring_gemv_ref(rms_norm_ref(x2, norm_weight.to(x2.dtype), eps), w, bias), None
    normed, summed = fused_add_rms_norm_ref(x2, residual, norm_weight.to(x2.dtype), eps)
    return ring_gemv_ref(normed, w, bias), summed


def ring_gemv_silu_ref(gate_up, w, bias=None):
    """ring_gemv_silu's reference: kiln's SiLU-mul reference, then ring_gemv_ref."""
    from kiln.kernels.activation import silu_and_mul_ref
    return ring_gemv_ref(silu_and_mul_ref(gate_up), w, bias)


@gluon.constexpr_function
def _tile_layout(block_n, block_k, warps):
    """Each thread holds 16-byte runs (8 values) of a row; a warp spans BLOCK_K along K (up to
    256 values)."""
    along_k = min(block_k // 8, 32)
    return gl.BlockedLayout([1, 8], [32 // along_k, along_k], [warps, 1], [1, 0])


@gluon.jit
def _owner(u, units, P):
    """The program whose run [p * units // P, (p + 1) * units // P) holds unit u."""
    return ((u + 1) * P - 1) // units


@gluon.jit
def _issue(ring, slot, w_ptr, u, valid, steps, K, rows, cols, BLOCK_N: gl.constexpr,
           BLOCK_K: gl.constexpr):
    """Copy unit u's weight tile into ring slot `slot` (nothing unless valid: zero-filled)."""
    tile = u // steps
    ptrs = (w_ptr + (tile * BLOCK_N + rows).to(gl.int64)[:, None] * K
            + ((u - tile * steps) * BLOCK_K + cols)[None, :])
    async_copy.async_copy_global_to_shared(ring.index(slot), ptrs, mask=valid)
    async_copy.commit_group()


@gluon.jit
def _finish(part, tile, p, P, units, steps, bias_ptr, y_ptr, part_ptr, count_ptr, rows,
            HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr, MAX_SEGS: gl.constexpr):
    """Tile `tile`'s float32 sum over this run's units (part [BLOCK_N]) into y: stored if the
    run holds the whole tile, else through the partial slots (module docstring)."""
    first = _owner(tile * steps, units, P)
    last = _owner(tile * steps + steps - 1, units, P)
    offs = tile * BLOCK_N + rows
    if first == last:
        if HAS_BIAS:
            part += gl.load(bias_ptr + offs).to(gl.float32)
        gl.store(y_ptr + offs, part.to(y_ptr.dtype.element_ty))
    else:
        slots = part_ptr + (tile * MAX_SEGS).to(gl.int64) * BLOCK_N + rows
        gl.store(slots + (p - first) * BLOCK_N, part)
        gl.thread_barrier()  # every thread's partial stored before the one arrival
        seen = gl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if seen == last - first:  # the last to arrive: add the partials in program order
            total = gl.zeros_like(part)
            for s in range(0, last - first + 1):
                total += gl.load(slots + s * BLOCK_N, cache_modifier=".cg")
            if HAS_BIAS:
                total += gl.load(bias_ptr + offs).to(gl.float32)
            gl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty))
            gl.atomic_xchg(count_ptr + tile, 0)  # armed for the next launch


@gluon.jit
def _fill_x(x_flat, x_ptr, res_ptr, res_out_ptr, norm_w_ptr, eps, K, first, XL: gl.constexpr,
            X_CHUNKS: gl.constexpr, PROLOGUE: gl.constexpr):
    """This program's copy of the product's x in shared memory (PROLOGUE, _ring_gemv_kernel),
    chunk by chunk of 4096 values; every thread reads back only what it wrote until the last
    barrier."""
    dt = x_ptr.dtype.element_ty
    x_offs = gl.arange(0, 4096, layout=XL)
    sum_sq = eps * 0.0  # a float32 scalar the loop carries
    for c in gl.static_range(X_CHUNKS):
        if c * 4096 < K:
            xo = c * 4096 + x_offs
            m = xo < K
            x = gl.load(x_ptr + xo, mask=m, other=0.0)
            if PROLOGUE == 2:
                x = (x.to(gl.float32) + gl.load(res_ptr + xo, mask=m, other=0.0).to(gl.float32)
                     ).to(dt)
                if first:
                    gl.store(res_out_ptr + xo, x, mask=m)
            if PROLOGUE == 3:
                g = x.to(gl.float32)
                act = (g / (1.0 + gl.exp(-g))).to(dt)
                up = gl.load(x_ptr + K + xo, mask=m, other=0.0)
                x = (act.to(gl.float32) * up.to(gl.float32)).to(dt)
            if PROLOGUE == 1 or PROLOGUE == 2:
                h = x.to(gl.float32)
                sum_sq += gl.sum(h * h, axis=0)
            x_flat.slice(c * 4096, 4096).store(x)
    if PROLOGUE == 1 or PROLOGUE == 2:
        rstd = gl.rsqrt(sum_sq / K + eps)
        for c in gl.static_range(X_CHUNKS):
            if c * 4096 < K:
                xo = c * 4096 + x_offs
                chunk = x_flat.slice(c * 4096, 4096)
                normed = (chunk.load(XL).to(gl.float32) * rstd).to(dt)
                w = gl.load(norm_w_ptr + xo, mask=xo < K, other=0.0)
                chunk.store((normed.to(gl.float32) * w.to(gl.float32)).to(dt))
    gl.thread_barrier()


@gluon.jit
def _ring_gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, N, K,
                      res_ptr, res_out_ptr, norm_w_ptr, eps,
                      HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                      STAGES: gl.constexpr, X_CHUNKS: gl.constexpr, MAX_SEGS: gl.constexpr,
                      PDL: gl.constexpr, EARLY: gl.constexpr, PROLOGUE: gl.constexpr = 0):
    # PROLOGUE (what the product's x is, computed by every program as it fills its copy of x):
    # 0 x itself; 1 rms_norm(x) * norm_w; 2 h = x + res (program 0 stores h at res_out_ptr),
    # then rms_norm(h) * norm_w; 3 silu(gate) * up with x_ptr = [gate | up] of 2 K values. The
    # roundings are those of kiln.kernels.rmsnorm and kiln.kernels.activation.
    L: gl.constexpr = _tile_layout(BLOCK_N, BLOCK_K, gl.num_warps())
    SMEM: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    XL: gl.constexpr = gl.BlockedLayout([8], [32], [gl.num_warps()], [0])
    SMEM1: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    p = gl.program_id(0)
    P = gl.num_programs(0)
    steps = K // BLOCK_K
    units = (N // BLOCK_N) * steps
    u_begin = (p * units) // P
    u_end = ((p + 1) * units) // P
    rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L))
    cols = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, L))
    ring = gl.allocate_shared_memory(w_ptr.dtype.element_ty, [STAGES, BLOCK_N, BLOCK_K], SMEM)
    x_flat = gl.allocate_shared_memory(x_ptr.dtype.element_ty, [X_CHUNKS * 4096], SMEM1)
    x_steps = x_flat._reinterpret(x_ptr.dtype.element_ty, [X_CHUNKS * 4096 // BLOCK_K, BLOCK_K],
                                  SMEM1)  # a row a K step

    n_units = u_end - u_begin
    for s in gl.static_range(EARLY):  # weights only: before the wait
        _issue(ring, s, w_ptr, u_begin + s, s < n_units, steps, K, rows, cols, BLOCK_N, BLOCK_K)
    if PDL:  # wait, then trigger, whichever PDL value: the early copies are out already
        pdl_start_gluon(1)
    for s in gl.static_range(EARLY, STAGES - 1):  # the rest of the ring's first fill
        _issue(ring, s, w_ptr, u_begin + s, s < n_units, steps, K, rows, cols, BLOCK_N, BLOCK_K)
    _fill_x(x_flat, x_ptr, res_ptr, res_out_ptr, norm_w_ptr, eps, K, p == 0, XL, X_CHUNKS,
            PROLOGUE)

    acc = gl.zeros([BLOCK_N, BLOCK_K], gl.float32, L)
    for i in range(0, n_units):
        _issue(ring, (i + STAGES - 1) % STAGES, w_ptr, u_begin + (i + STAGES - 1),
               i + STAGES - 1 < n_units, steps, K, rows, cols, BLOCK_N, BLOCK_K)
        u = u_begin + i
        tile = u // steps
        ks = u - tile * steps
        xv = x_steps.index(ks).load(gl.SliceLayout(0, L)).to(gl.float32)
        async_copy.wait_group(STAGES - 1)
        w = ring.index(i % STAGES).load(L)
        acc += w.to(gl.float32) * xv[None, :]
        if (ks == steps - 1) | (i == n_units - 1):  # the tile's last K step, or the run's end
            _finish(gl.sum(acc, axis=1), tile, p, P, units, steps, bias_ptr, y_ptr, part_ptr,
                    count_ptr, rows, HAS_BIAS, BLOCK_N, MAX_SEGS)
            acc = gl.zeros([BLOCK_N, BLOCK_K], gl.float32, L)
    async_copy.wait_group(0)


def owner(u: int, units: int, programs: int) -> int:
    """_owner on the host: the program whose run holds unit u."""
    return ((u + 1) * programs - 1) // units


def max_segments(n_tiles: int, steps: int, programs: int) -> int:
    """The most runs that share one tile (the partial slots a tile needs)."""
    units = n_tiles * steps
    return max(owner(t * steps + steps - 1, units, programs) - owner(t * steps, units, programs) + 1
               for t in range(n_tiles))


# Per (device, N, K, configuration): (programs, most runs a tile, zeroed arrival counters,
# partial slots). The counters re-arm themselves, so one set serves every launch of the shape
# (the launches of a stream run one after another).
_workspaces: dict[tuple, tuple[int, int, torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, n: int, k: int, cfg: tuple) -> tuple:
    key = (device, n, k, cfg)
    ws = _workspaces.get(key)
    if ws is None:
        block_n, block_k, _, _, per_sm = cfg
        n_tiles, steps = n // block_n, k // block_k
        # every run must hold a unit: the last of a tile's runs to arrive counts on each of
        # the programs between the tile's first and last owner
        programs = min(torch.cuda.get_device_properties(device).multi_processor_count * per_sm,
                       n_tiles * steps)
        segs = max_segments(n_tiles, steps, programs)
        counts = torch.zeros(n_tiles, dtype=torch.int32, device=device)
        parts = torch.empty(n_tiles * segs * block_n, dtype=torch.float32, device=device)
        ws = _workspaces[key] = (programs, segs, counts, parts)
    return ws


def ring_gemv(x2: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """x2 [1, K] @ w [N, K].T (+ bias) -> [1, N] of x2's dtype (module docstring), into `out`
    (contiguous [1, N] of that dtype) when given. Raises ValueError where it does not apply
    (ring_gemv_ok)."""
    return _launch(x2, w, bias, out, 0)


def ring_gemv_norm(x2: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor,
                   bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rms_norm(x2) (or, with residual, rms_norm(x2 + residual)) @ w.T (+ bias), the norm
    computed by the GEMV as it reads x: returns (y [1, N], the sum x2 + residual as a new
    [1, K] tensor, or None without residual), as rmsnorm.fused_add_rms_norm then ring_gemv
    would (the sum is not written into residual: other programs still read it)."""
    k = w.shape[1]
    if tuple(x2.shape) != (1, k) or norm_weight.shape != (k,) or (
            residual is not None and (tuple(residual.shape) != (1, k) or residual.dtype != x2.dtype
                                      or not residual.is_contiguous())):
        raise ValueError(f"ring_gemv_norm takes x [1, {k}], its norm weight [{k}] and a residual "
                         f"like x; got x {tuple(x2.shape)}, norm weight {tuple(norm_weight.shape)}"
                         f"{'' if residual is None else f', residual {tuple(residual.shape)}'}")
    res_out = torch.empty_like(x2) if residual is not None else None
    y = _launch(x2, w, bias, None, 1 if residual is None else 2, residual, res_out,
                norm_weight.to(x2.dtype).contiguous(), eps)
    return y, res_out


def ring_gemv_silu(gate_up: torch.Tensor, w: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up @ w.T (+ bias) with gate_up [1, 2 K] = [gate | up], the activation
    computed by the GEMV as it reads x (activation.silu_and_mul then ring_gemv)."""
    k = w.shape[1]
    if tuple(gate_up.shape) != (1, 2 * k) or not gate_up.is_contiguous():
        raise ValueError(f"ring_gemv_silu takes gate_up [1, {2 * k}] contiguous for w "
                         f"{tuple(w.shape)}; got {tuple(gate_up.shape)}")
    return _launch(gate_up[:, :k], w, bias, None, 3)


def output_row(x2: torch.Tensor, n: int, out: torch.Tensor | None, what: str) -> torch.Tensor:
    """The [1, n] product of a ring kernel in x2's dtype: `out` when given (checked: contiguous,
    that shape and dtype), else a new tensor."""
    if out is None:
        return torch.empty(1, n, dtype=x2.dtype, device=x2.device)
    if out.shape != (1, n) or out.dtype != x2.dtype or not out.is_contiguous():
        raise ValueError(f"{what}'s out must be a contiguous [1, {n}] {x2.dtype} tensor, got "
                         f"{tuple(out.shape)} {out.dtype}")
    return out


def _launch(x2: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
            out: torch.Tensor | None, prologue: int, residual: torch.Tensor | None = None,
            res_out: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
            eps: float = 0.0) -> torch.Tensor:
    if not ring_gemv_ok(x2, w):
        raise ValueError(f"ring_gemv takes one float16/bfloat16 row on an sm_90 GPU with w of its "
                         f"dtype, K a multiple of 128 up to {MAX_K} and N of the tile; got x "
                         f"{tuple(x2.shape)} {x2.dtype} on {x2.device}, w {tuple(w.shape)} {w.dtype}")
    n, k = w.shape
    cfg = ring_config(n, k)
    block_n, block_k, warps, stages, _ = cfg
    programs, segs, counts, parts = _workspace(x2.device, n, k, cfg)
    y = output_row(x2, n, out, "ring_gemv")
    pdl = pdl_args(x2)
    _ring_gemv_kernel[(programs,)](
        x2, w, bias if bias is not None else y, y, parts, counts, n, k,
        residual if residual is not None else x2, res_out if res_out is not None else x2,
        norm_weight if norm_weight is not None else x2, float(eps), HAS_BIAS=bias is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages, X_CHUNKS=triton.cdiv(k, X_CHUNK),
        MAX_SEGS=segs, EARLY=ring_early(stages), PROLOGUE=prologue,
        num_warps=warps, **pdl)
    return y
