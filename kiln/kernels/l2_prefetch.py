"""L2 prefetch of the next linear's weights on a side stream, while small kernels run (batch-1 decode).

At batch 1 a decode step is a chain of weight-bound GEMVs with small kernels between them (RoPE and
the cache write, attention, the norms, SiLU-mul). While those run, the memory bus is nearly idle.
``L2Prefetcher.fork`` launches, on a side stream forked from the current one at that point, a
kernel that asks L2 for the first bytes of every row of the next GEMV's weight, so that part of
what the GEMV reads comes from L2. The prefetch writes nothing and nobody waits for it; the side
stream is joined back once per forward (``join``), which CUDA graph capture requires.

Off by default; ``KILN_L2_PREFETCH`` turns it on (see ``budgets_from_env``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LINE = 128          # bytes of one L2 request in modes 1 and 2
LINES_PER_PROGRAM = 1024
SITES = ("o_proj", "gate_up_proj", "down_proj", "qkv_proj")


def budgets_from_env() -> dict[str, int] | None:
    """KILN_L2_PREFETCH="o,gate_up,down,qkv": MiB asked into L2 before each of those linears (forked
    after the linear before it: qkv_proj, o_proj, gate_up_proj and the previous layer's
    down_proj); 0 skips a site. Unset, empty or "0": None (off)."""
    flag = os.environ.get("KILN_L2_PREFETCH", "")
    if flag in ("", "0"):
        return None
    try:
        values = [float(v) for v in flag.split(",")]
    except ValueError:
        values = []
    if len(values) != len(SITES) or any(v < 0 for v in values):
        raise ValueError(f"KILN_L2_PREFETCH={flag!r}: expected four MiB values "
                         f"({','.join(SITES)}), e.g. 34,8,6,8")
    return {site: int(v * 1048576) for site, v in zip(SITES, values)}


def mode_from_env() -> int:
    """KILN_L2_PREFETCH_MODE: 1 (default) one prefetch.global.L2 per 128-byte line, 2 the same with
    the evict_last hint, 3 one cp.async.bulk.prefetch.L2 per row."""
    flag = os.environ.get("KILN_L2_PREFETCH_MODE", "1")
    if flag not in ("1", "2", "3"):
        raise ValueError(f"KILN_L2_PREFETCH_MODE={flag!r}: expected 1, 2 or 3")
    return int(flag)


def in_chain_from_env() -> bool:
    """KILN_L2_PREFETCH_STREAM: "side" (default) forks each prefetch onto a side stream; "main"
    launches it on the model's stream between the kernels (under PDL it lets the next kernel start
    at once and ends after the kernel before it)."""
    flag = os.environ.get("KILN_L2_PREFETCH_STREAM", "side")
    if flag not in ("side", "main"):
        raise ValueError(f"KILN_L2_PREFETCH_STREAM={flag!r}: expected side or main")
    return flag == "main"


def max_rows_from_env() -> int:
    """KILN_L2_PREFETCH_ROWS: forwards of at most this many tokens prefetch (default 16)."""
    return int(os.environ.get("KILN_L2_PREFETCH_ROWS", "16"))


@triton.jit
def _in_chain_start(PDL: tl.constexpr):
    """On the model's stream under PDL: let the next kernel be scheduled at once (the prefetch
    depends on nothing)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _in_chain_end(PDL: tl.constexpr):
    """On the model's stream under PDL: end only after the kernel before has ended, so that the
    next kernel's wait still covers that one's writes."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit(do_not_specialize=["row_stride", "lines_per_row", "total"])
def _l2_prefetch_lines_kernel(w_ptr, row_stride, lines_per_row, total,
                              EVICT_LAST: tl.constexpr, BLOCK: tl.constexpr,
                              PDL: tl.constexpr = False):
    # Program p asks for lines [p * BLOCK, (p + 1) * BLOCK) of the (row, line) grid, row-major:
    # line c of row r is the 128 bytes at w_ptr + r * row_stride + c * 128 (w_ptr: bytes).
    _in_chain_start(PDL)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = idx // lines_per_row
    col = idx - row * lines_per_row
    addr = (w_ptr + row.to(tl.int64) * row_stride + col * 128).to(tl.int64, bitcast=True)
    if EVICT_LAST:
        asm: tl.constexpr = ("{ .reg .pred p; setp.ne.b32 p, $2, 0; "
                             "@p prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }")
    else:
        asm: tl.constexpr = ("{ .reg .pred p; setp.ne.b32 p, $2, 0; "
                             "@p prefetch.global.L2 [$1]; mov.u32 $0, 0; }")
    tl.inline_asm_elementwise(asm, "=r,l,r", [addr, (idx < total).to(tl.int32)], dtype=tl.int32,
                              is_pure=False, pack=1)
    _in_chain_end(PDL)


@triton.jit(do_not_specialize=["row_stride", "nbytes", "rows"])
def _l2_prefetch_rows_kernel(w_ptr, row_stride, nbytes, rows, BLOCK: tl.constexpr,
                             PDL: tl.constexpr = False):
    # One bulk prefetch of nbytes (a multiple of 16) from the start of each row.
    _in_chain_start(PDL)
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    addr = (w_ptr + r.to(tl.int64) * row_stride).to(tl.int64, bitcast=True)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $3, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r,r", [addr, tl.zeros_like(r) + nbytes, (r < rows).to(tl.int32)], dtype=tl.int32,
        is_pure=False, pack=1)
    _in_chain_end(PDL)


def weight_of(linear: torch.nn.Module) -> torch.Tensor | None:
    """The tensor a linear's GEMV streams: ``weight`` (float, fp8, int8) or ``qweight`` (int4,
    int8 weight-only), [N, bytes of a row] row-major; None if it has neither."""
    for name in ("weight", "qweight"):
        w = getattr(linear, name, None)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            return w
    return None


def prefetch_l2(w: torch.Tensor, budget: int, mode: int = 1, pdl: dict | None = None) -> int:
    """Launch on the current stream a kernel that asks L2 for the first bytes of every row of w
    (about `budget` bytes in all; all of w when it is smaller). Returns the bytes asked for.
    pdl: kiln.kernels.pdl_args, for a launch between the model's PDL kernels (in_chain)."""
    pdl = pdl or {}
    rows = w.shape[0]
    row_bytes = w.shape[1] * w.element_size()
    stride = w.stride(0) * w.element_size()
    if rows == 0 or row_bytes == 0 or budget <= 0 or w.stride(1) != 1:
        return 0
    per_row = min(row_bytes, max(budget // rows, 16))
    base = w.view(torch.uint8) if w.dtype != torch.uint8 else w
    if mode == 3:
        per_row -= per_row % 16
        if per_row == 0 or w.data_ptr() % 16 or stride % 16:
            return 0
        _l2_prefetch_rows_kernel[(triton.cdiv(rows, 128),)](base, stride, per_row, rows, BLOCK=128,
                                                             num_warps=4, **pdl)
        return per_row * rows
    lines = triton.cdiv(per_row, LINE)
    total = lines * rows
    _l2_prefetch_lines_kernel[(triton.cdiv(total, LINES_PER_PROGRAM),)](
        base, stride, lines, total, EVICT_LAST=mode == 2, BLOCK=LINES_PER_PROGRAM, num_warps=4, **pdl)
    return lines * LINE * rows


class L2Prefetcher:
    """Forks weight prefetches onto one side stream of the model's device (see the module doc)."""

    def __init__(self, device: torch.device | str, budgets: dict[str, int], mode: int = 1,
                 max_rows: int = 16, in_chain: bool = False):
        self.budgets = budgets
        self.mode = mode
        self.max_rows = max_rows
        self.in_chain = in_chain
        # made here, not during CUDA graph capture
        self._stream = torch.cuda.Stream(torch.device(device))
        self._pending = False

    @classmethod
    def from_env(cls, device: torch.device | str) -> "L2Prefetcher | None":
        """The prefetcher KILN_L2_PREFETCH asks for on a CUDA device, else None."""
        budgets = budgets_from_env()
        if budgets is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
            return None
        return cls(device, budgets, mode_from_env(), max_rows_from_env(), in_chain_from_env())

    def wanted(self, x: torch.Tensor) -> bool:
        """Whether a forward over x's rows (tokens) prefetches: CUDA, at most max_rows tokens."""
        return x.is_cuda and 0 < x.numel() // x.shape[-1] <= self.max_rows

    def fork(self, site: str, linear: torch.nn.Module, x: torch.Tensor) -> None:
        """After the current stream's work so far, prefetch `site`'s budget of linear's weight on
        the side stream (when x's rows are few enough)."""
        budget = self.budgets.get(site, 0)
        w = weight_of(linear)
        if budget <= 0 or w is None or not w.is_cuda or not self.wanted(x):
            return
        if self.in_chain:
            from kiln.kernels import pdl_args

            prefetch_l2(w, budget, self.mode, pdl_args(w))
            return
        side = self._stream
        side.wait_stream(torch.cuda.current_stream(w.device))
        with torch.cuda.stream(side):
            prefetch_l2(w, budget, self.mode)
        self._pending = True

    def join(self) -> None:
        """Make the current stream wait for the side stream's prefetches (once per forward)."""
        if self._pending:
            torch.cuda.current_stream(self._stream.device).wait_stream(self._stream)
            self._pending = False
