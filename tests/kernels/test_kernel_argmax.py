"""Triton split argmax against torch's argmax (interpreter, CPU): exact indices, ties, NaN, -inf.

Under the interpreter the chip has 4 SMs (kiln.kernels.argmax._num_sms), so rows are split into
at most 16 chunks and rows from the 16th on are not split: both paths run here.
"""

import pytest
import torch

from kiln.kernels import argmax as argmax_mod
from kiln.kernels.argmax import argmax, argmax_ref, block_for, split_for

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAN, INF = float("nan"), float("inf")


def check(x: torch.Tensor) -> None:
    out = argmax(x)
    ref = argmax_ref(x)
    assert out.dtype == torch.int64 and out.shape == ref.shape and out.device == x.device
    assert torch.equal(out, ref), (out, ref)


def splits_of(x: torch.Tensor) -> int:
    programs = argmax_mod.PROGRAMS_PER_SM * argmax_mod._num_sms(x.device)
    return split_for(x.shape[0], x.shape[1], programs, block_for(x.dtype))[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,v", [(1, 1), (1, 1000), (3, 5000), (2, 4097), (5, 2048 * 5 + 1),
                                 (17, 3000), (1, 128256)])
def test_argmax_matches_torch(dtype, m, v, gen, poison_allocations):
    x = (torch.randn(m, v, generator=gen) * 3).to(dtype)
    check(x)


def test_cases_reach_split_and_whole_rows():
    """The shapes above run rows split into chunks (with a partial last block) and whole rows."""
    assert split_for(1, 128256, 16, block_for(torch.bfloat16)) == (16, 8192)
    assert split_for(3, 5000, 16, block_for(torch.float32)) == (5, 1024)
    assert split_for(17, 3000, 16, block_for(torch.float32))[0] == 1
    assert split_for(1, 1000, 16, 1024) == (1, 1024)
    for m in (1, 2, 3, 7, 15, 16, 40):
        for v in (1, 1023, 1024, 1025, 128256):
            splits, chunk = split_for(m, v, 16, 1024)
            assert chunk % 1024 == 0 and (splits - 1) * chunk < v <= splits * chunk
            assert splits == 1 or m * splits < 16 + m


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_take_the_first_index(dtype, gen):
    """Few distinct values: the maximum repeats within and across chunks; -0.0 equals +0.0."""
    x = torch.randint(-3, 3, (6, 9000), generator=gen).to(dtype)
    x[1] = 0.0
    x[1, :5] = -0.0
    x[2] = -2.0
    x[2, [4095, 4096, 8191, 8999]] = 1.0  # across the boundaries of 2048- and 1024-long chunks
    x[3, -1] = 7.0  # the last element alone
    assert splits_of(x) > 1
    check(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_is_the_maximum_and_the_first_nan_wins(dtype, gen):
    x = (torch.randn(7, 9000, generator=gen)).to(dtype)
    x[0, [6000, 3000, 8999]] = NAN
    x[1, 0] = NAN
    x[2, -1] = NAN
    x[3, [100, 200]] = INF
    x[3, 8000] = NAN  # NaN above +inf
    x[4, 5000] = -torch.tensor(NAN)  # a NaN with the sign bit set counts the same
    x[4, 7000] = NAN
    x[5] = NAN
    x[6, 1] = INF
    check(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_rows(dtype, gen):
    x = torch.full((5, 9000), -INF).to(dtype)
    x[1, 8500] = -1e4  # one finite value, in the last chunk
    x[2, 4000:] = torch.randn(5000, generator=gen).to(dtype)  # leading chunks all -inf
    x[3, 7] = INF
    x[4, 9000 - 1] = NAN
    check(x)
    assert argmax(x)[0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows(dtype, gen):
    """Rows with a stride other than V (a slice of wider rows, every other row)."""
    wide = torch.randn(6, 9000 + 37, generator=gen).to(dtype)
    check(wide[:, :9000])
    check(wide[::2, 5:])
    check(wide[1:2, 37:])


def test_many_partials_combine_in_steps(monkeypatch, gen):
    """More chunks than the combining program reads at once (PART_BLOCK)."""
    monkeypatch.setattr(argmax_mod, "_workspaces", {})
    monkeypatch.setattr(argmax_mod, "_num_sms", lambda device: 64)
    x = torch.randn(1, 300 * 1024, generator=gen)
    x[0, [1024 * 200 + 3, 1024 * 250]] = 50.0
    assert splits_of(x) > argmax_mod.PART_BLOCK
    check(x)


def test_counters_are_rearmed(gen):
    """Every launch leaves the arrival counters at zero, so repeated calls stay exact."""
    for _ in range(3):
        x = torch.randn(2, 6000, generator=gen)
        assert splits_of(x) > 1
        check(x)
        locks = argmax_mod._workspaces[x.device][1]
        assert not locks.any()


def test_other_shapes_and_the_switch_take_torch(monkeypatch, gen):
    """3-D logits, a strided vocabulary dim, other dtypes and KILN_TRITON_ARGMAX=0 run torch."""
    launched = []
    real = argmax_mod.launch
    monkeypatch.setattr(argmax_mod, "launch", lambda *a, **k: launched.append(1) or real(*a, **k))
    x = torch.randn(3, 4, 500, generator=gen)
    assert torch.equal(argmax(x), argmax_ref(x))
    t = torch.randn(500, 3, generator=gen).t()
    assert torch.equal(argmax(t), argmax_ref(t))
    d = torch.randn(2, 500, generator=gen, dtype=torch.float64)
    assert torch.equal(argmax(d), argmax_ref(d))
    assert argmax(torch.empty(0, 500)).shape == (0,)
    assert not launched
    y = torch.randn(2, 500, generator=gen)
    monkeypatch.setenv("KILN_TRITON_ARGMAX", "0")
    assert torch.equal(argmax(y), argmax_ref(y)) and not launched
    monkeypatch.delenv("KILN_TRITON_ARGMAX")
    assert torch.equal(argmax(y), argmax_ref(y)) and launched


@pytest.mark.parametrize("triton_path", [True, False])
def test_argmax_writes_into_out(triton_path, gen, monkeypatch):
    """out=: the indices land in the given rows of a larger buffer, the rest untouched."""
    if not triton_path:
        monkeypatch.setenv("KILN_TRITON_ARGMAX", "0")
    x = (torch.randn(3, 5000, generator=gen) * 3).to(torch.bfloat16)
    buf = torch.full((8,), -7, dtype=torch.int64)
    got = argmax(x, out=buf[:3])
    assert got.data_ptr() == buf.data_ptr()
    assert torch.equal(buf[:3], argmax_ref(x)) and buf[3:].tolist() == [-7] * 5
    with pytest.raises(ValueError, match="contiguous int64"):
        argmax(x, out=torch.empty(3, dtype=torch.int32))
