"""The split argmax on CUDA against torch's argmax: exact indices (bf16/fp16/fp32), ties, NaN,
-inf, strided rows, many launches back to back, and replays of a captured CUDA graph (the
arrival counters must be re-armed by every launch).

Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels import argmax as argmax_mod  # noqa: E402
from kiln.kernels.argmax import argmax, argmax_ref, block_for, split_for  # noqa: E402
from gpu_helpers import randn  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
NAN, INF = float("nan"), float("inf")
VOCAB = 128256  # Llama 3


def check(x: torch.Tensor) -> None:
    out = argmax(x)
    ref = argmax_ref(x)
    assert out.dtype == torch.int64 and out.shape == ref.shape and out.is_cuda
    assert torch.equal(out, ref), (out, ref)


def splits_of(x: torch.Tensor) -> int:
    programs = argmax_mod.PROGRAMS_PER_SM * argmax_mod._num_sms(x.device)
    return split_for(x.shape[0], x.shape[1], programs, block_for(x.dtype))[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,v", [(1, VOCAB), (8, VOCAB), (64, VOCAB), (256, VOCAB), (1000, VOCAB),
                                 (1, 1), (3, 1000), (2, 32000), (5, 151936), (1, 2048 * 7 + 5)])
def test_argmax_matches_torch(dtype, m, v, gen, poison_allocations):
    check(randn(m, v, gen=gen, dtype=dtype, scale=3.0))


def test_llama3_rows_are_split_at_small_batches():
    assert splits_of(torch.empty(1, VOCAB, device="cuda", dtype=torch.bfloat16)) > 32
    assert splits_of(torch.empty(10_000, 1, device="cuda").expand(10_000, VOCAB)) == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_nan_and_minus_inf(dtype, gen):
    x = torch.randint(-3, 3, (12, VOCAB), generator=gen, device="cuda").to(dtype)
    x[1] = 0.0
    x[1, :5] = -0.0
    x[2] = -2.0
    x[2, [2047, 2048, 65535, 65536, VOCAB - 1]] = 1.0  # across chunk boundaries
    x[3, [90000, 30000, VOCAB - 1]] = NAN
    x[4, 0] = NAN
    x[5, [100, 200]] = INF
    x[5, 100000] = NAN
    x[6, 5000] = -torch.tensor(NAN)  # the sign bit set: still NaN
    x[6, 70000] = NAN
    x[7] = NAN
    x[8] = -INF
    x[9] = -INF
    x[9, VOCAB - 1] = -1e4
    x[10] = -INF
    x[10, 64000:] = 1.0
    x[11] = -INF
    x[11, VOCAB - 1] = NAN
    assert splits_of(x) > 1
    check(x)
    for i in range(x.shape[0]):  # each alone, split into the most chunks
        check(x[i:i + 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows(dtype, gen):
    wide = randn(6, VOCAB + 37, gen=gen, dtype=dtype)
    check(wide[:, :VOCAB])
    check(wide[::2, 5:])
    check(wide[1:2, 37:])


def test_many_launches_back_to_back(gen):
    """Hundreds of split launches queued without a sync: each reads the counters its
    predecessor re-armed."""
    xs = [randn(m, VOCAB, gen=gen, dtype=torch.bfloat16) for m in (1, 2, 3, 1, 7) * 40]
    outs = [argmax(x) for x in xs]
    refs = [argmax_ref(x) for x in xs]
    assert all(torch.equal(o, r) for o, r in zip(outs, refs))
    assert not argmax_mod._workspaces[xs[0].device][1].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_argmax_replays_in_cuda_graph(dtype, gen):
    """Captured once (two graphs, one row and four), replayed with new logits, eager launches
    in between: every replay gives torch's indices."""
    one = torch.empty(1, VOCAB, device="cuda", dtype=dtype)
    four = torch.empty(4, VOCAB, device="cuda", dtype=dtype)
    for x in (one, four):
        x.copy_(randn(*x.shape, gen=gen, dtype=dtype))
        argmax(x)  # compile and allocate the workspace outside the capture
    torch.cuda.synchronize()
    graphs, outs = [], []
    for x in (one, four):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs.append(argmax(x))
        graphs.append(g)
    for step in range(6):
        for x, g, out in zip((one, four), graphs, outs):
            x.copy_(randn(*x.shape, gen=gen, dtype=dtype))
            if step % 2:
                x[:, [7, 90000]] = 1e3  # a tie across chunks
            if step == 3:
                x[0, [50000, 60000]] = NAN
            out.fill_(-1)
            g.replay()
            assert torch.equal(out, argmax_ref(x)), step
        check(randn(2, VOCAB, gen=gen, dtype=dtype))


def test_capture_before_the_workspace_exists_falls_back(monkeypatch, gen):
    """A first call inside a capture cannot allocate the workspace: torch's argmax is captured."""
    monkeypatch.setattr(argmax_mod, "_workspaces", {})
    x = randn(1, VOCAB, gen=gen, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = argmax(x)
    assert not argmax_mod._workspaces
    x.copy_(randn(1, VOCAB, gen=gen, dtype=torch.bfloat16))
    g.replay()
    assert torch.equal(out, argmax_ref(x))


def test_switch_keeps_torch(monkeypatch, gen):
    monkeypatch.setenv("KILN_TRITON_ARGMAX", "0")
    monkeypatch.setattr(argmax_mod, "launch", lambda *a, **k: pytest.fail("kernel launched"))
    x = randn(2, VOCAB, gen=gen, dtype=torch.bfloat16)
    assert torch.equal(argmax(x), argmax_ref(x))
