"""The host side of the batch-1 ring GEMV (kiln.kernels.ring_gemv): which products it takes,
and the stream-K bookkeeping its kernel shares (who owns a unit, how many runs share a tile).
The kernel itself is Gluon, which has no interpreter: tests/gpu/test_ring_gemv_gpu.py."""

import pytest
import torch

from kiln.kernels import ring_gemv as rg


@pytest.mark.parametrize("n_tiles,steps,programs", [(192, 16, 264), (64, 16, 264), (4008, 16, 264),
                                                    (3, 5, 7), (1, 1, 264), (10, 1, 3),
                                                    (128, 56, 264), (7, 3, 2)])
def test_owner_and_segments_follow_the_runs(n_tiles, steps, programs):
    units = n_tiles * steps
    runs = [(p * units // programs, (p + 1) * units // programs) for p in range(programs)]
    holder = {}
    for p, (begin, end) in enumerate(runs):
        for u in range(begin, end):
            holder[u] = p
    assert len(holder) == units
    for u in range(units):
        assert rg.owner(u, units, programs) == holder[u]
    most = max(len({holder[t * steps + s] for s in range(steps)}) for t in range(n_tiles))
    assert rg.max_segments(n_tiles, steps, programs) == most


def test_config_takes_the_8b_layers_and_refuses_odd_shapes(monkeypatch):
    monkeypatch.delenv("KILN_RING_STAGES", raising=False)
    monkeypatch.delenv("KILN_RING_PER_SM", raising=False)
    assert rg.ring_config(6144, 4096) == rg.CONFIG_K256
    assert rg.ring_config(128256, 4096) == rg.CONFIG_K256
    assert rg.ring_config(4096, 14336) == rg.CONFIG_K256
    assert rg.ring_config(192, 384) == rg.CONFIG_K128
    assert rg.ring_config(100, 4096) is None      # N not a multiple of either tile
    assert rg.ring_config(64, 96) is None         # K not a multiple of 128
    assert rg.ring_config(64, rg.MAX_K + 256) is None
    monkeypatch.setenv("KILN_RING_STAGES", "7")
    monkeypatch.setenv("KILN_RING_PER_SM", "1")
    assert rg.ring_config(6144, 4096) == rg.CONFIG_K256[:3] + (7, 1)


def test_not_on_the_cpu(monkeypatch):
    x = torch.zeros(1, 256, dtype=torch.bfloat16)
    w = torch.zeros(64, 256, dtype=torch.bfloat16)
    assert not rg.ring_gemv_ok(x, w)
    with pytest.raises(ValueError, match="ring_gemv takes one"):
        rg.ring_gemv(x, w)
    monkeypatch.delenv("KILN_RING_GEMV", raising=False)
    assert not rg.ring_gemv_enabled() and not rg.ring_gemv_enabled(head=True)
    monkeypatch.setenv("KILN_RING_GEMV", "1")
    assert rg.ring_gemv_enabled() and rg.ring_gemv_enabled(head=True)
    monkeypatch.setenv("KILN_RING_GEMV", "layers")
    assert rg.ring_gemv_enabled() and not rg.ring_gemv_enabled(head=True)
    monkeypatch.setenv("KILN_RING_GEMV", "head")
    assert not rg.ring_gemv_enabled() and rg.ring_gemv_enabled(head=True)


def test_reference_rounds_once():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, generator=gen).to(torch.bfloat16)
    w = torch.randn(64, 256, generator=gen).to(torch.bfloat16)
    b = torch.randn(64, generator=gen).to(torch.bfloat16)
    want = (x.float() @ w.float().t() + b.float()).to(torch.bfloat16)
    assert torch.equal(rg.ring_gemv_ref(x, w, b), want)


def test_early_copies_are_clamped_to_the_first_fill(monkeypatch):
    monkeypatch.delenv("KILN_RING_EARLY", raising=False)
    assert rg.ring_early(5) == 4
    monkeypatch.setenv("KILN_RING_EARLY", "1")
    assert rg.ring_early(5) == 1
    monkeypatch.setenv("KILN_RING_EARLY", "9")
    assert rg.ring_early(5) == 4
    monkeypatch.setenv("KILN_RING_EARLY", "-2")
    assert rg.ring_early(5) == 0


def test_fused_entry_points_check_their_shapes():
    bf = torch.bfloat16
    w = torch.zeros(64, 256, dtype=bf)
    with pytest.raises(ValueError, match="ring_gemv_norm takes x"):
        rg.ring_gemv_norm(torch.zeros(1, 128, dtype=bf), torch.ones(256, dtype=bf), 1e-5, w)
    with pytest.raises(ValueError, match="ring_gemv_norm takes x"):
        rg.ring_gemv_norm(torch.zeros(1, 256, dtype=bf), torch.ones(256, dtype=bf), 1e-5, w,
                          residual=torch.zeros(1, 256, dtype=torch.float16))
    with pytest.raises(ValueError, match="ring_gemv_silu takes gate_up"):
        rg.ring_gemv_silu(torch.zeros(1, 256, dtype=bf), w)
    # well-formed, but on the CPU: the kernel's own refusal
    with pytest.raises(ValueError, match="ring_gemv takes one"):
        rg.ring_gemv_silu(torch.zeros(1, 512, dtype=bf), w)


def test_fused_references_compose_the_engine_references():
    from kiln.kernels.activation import silu_and_mul_ref
    from kiln.kernels.rmsnorm import rms_norm_ref

    gen = torch.Generator().manual_seed(1)
    bf = torch.bfloat16
    x = torch.randn(1, 256, generator=gen).to(bf)
    r = torch.randn(1, 256, generator=gen).to(bf)
    nw = torch.randn(256, generator=gen).to(bf)
    w = torch.randn(64, 256, generator=gen).to(bf)
    y, s = rg.ring_gemv_norm_ref(x, nw, 1e-5, w, residual=r)
    assert torch.equal(s, x + r)
    assert torch.equal(y, rg.ring_gemv_ref(rms_norm_ref(x + r, nw, 1e-5), w, None))
    gu = torch.randn(1, 512, generator=gen).to(bf)
    assert torch.equal(rg.ring_gemv_silu_ref(gu, w), rg.ring_gemv_ref(silu_and_mul_ref(gu), w, None))


def test_the_batch1_ring_scope_turns_the_ring_on_unless_the_environment_says(monkeypatch):
    from kiln.kernels import batch1_ring, batch1_ring_scope
    monkeypatch.delenv("KILN_RING_GEMV", raising=False)
    with batch1_ring_scope(True):
        assert batch1_ring() and rg.ring_gemv_enabled() and rg.ring_gemv_enabled(head=True)
        assert not rg.ring_fused_enabled()
        with batch1_ring_scope(False):
            assert not rg.ring_gemv_enabled()
        assert rg.ring_gemv_enabled()
        monkeypatch.setenv("KILN_RING_GEMV", "0")
        assert not rg.ring_gemv_enabled() and not rg.ring_gemv_enabled(head=True)
        monkeypatch.setenv("KILN_RING_GEMV", "head")
        assert not rg.ring_gemv_enabled() and rg.ring_gemv_enabled(head=True)
        monkeypatch.delenv("KILN_RING_GEMV")
    assert not batch1_ring() and not rg.ring_gemv_enabled() and not rg.ring_gemv_enabled(head=True)


def test_the_batch1_ring_scope_triggers_the_small_kernels_early(monkeypatch):
    import kiln.kernels as kk
    monkeypatch.setattr(kk, "pdl_enabled", lambda t: True)
    monkeypatch.delenv("KILN_PDL_TRIGGER", raising=False)
    monkeypatch.delenv("KILN_PDL_EARLY", raising=False)
    x = torch.zeros(1, 8)
    assert kk.pdl_args(x, small=True)["PDL"] == 1
    with kk.batch1_ring_scope(True):
        assert kk.pdl_args(x, small=True) == {"PDL": 2, "launch_pdl": True}
        assert kk.pdl_args(x)["PDL"] == 1  # the GEMVs as before
        monkeypatch.setenv("KILN_PDL_TRIGGER", "start")  # the environment forces the default
        assert kk.pdl_args(x, small=True)["PDL"] == 1
    monkeypatch.setenv("KILN_PDL_TRIGGER", "early")
    assert kk.pdl_args(x, small=True)["PDL"] == 2
