"""The counter-based hash RNG: exact against a big-int reference, uniform, never 0 or 1."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from kiln.sample import rng

M32 = (1 << 32) - 1


def _mix32_reference(x: int) -> int:
    """The documented finaliser on unbounded Python ints (independent of torch int64 behaviour)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x3AEB535D) & M32
    return x ^ (x >> 16)


def _hash_reference(seed: int, output_index: int, token: int) -> int:
    seed &= (1 << 64) - 1
    output_index &= (1 << 64) - 1
    lanes = [seed & M32, seed >> 32, output_index & M32, output_index >> 32]
    keys = []
    for init in (0x243F6A88, 0x13198A2E):
        state = init
        for lane in lanes:
            state = _mix32_reference(state ^ lane)
        keys.append(state)
    return _mix32_reference((((token * 0x9E3779B9) + keys[0]) & M32) ^ keys[1])


def test_mix32_matches_big_int_reference_over_full_range():
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, M32 - 1, M32] + list(range(12345, 12345 + 200))
    got = rng.mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_mix32_reference(v) for v in values]


def test_mix32_is_a_bijection_on_a_block_of_inputs():
    x = torch.arange(1 << 18, dtype=torch.int64) * 977 + 3
    out = rng.mix32(x)
    assert out.min() >= 0 and out.max() <= M32
    assert torch.unique(out).numel() == x.numel()


@pytest.mark.parametrize("value", [0, 1, -1, -(1 << 63), (1 << 63) - 1, -123456789012345, 0xDEADBEEF12])
def test_split_lanes_of_signed_int64(value):
    low, high = rng.split_u32_lanes(torch.tensor([value], dtype=torch.int64))
    unsigned = value & ((1 << 64) - 1)
    assert (low.item(), high.item()) == (unsigned & M32, unsigned >> 32)


def test_hash_bits_match_reference_including_negative_and_huge_seeds():
    seeds = [0, 7, -1, -(1 << 63), (1 << 63) - 1, 2**40 + 5]
    output_index = [0, 3, 1, 1000, 2**33, 5]
    tokens = torch.tensor([0, 1, 2, 31999, 151935, (1 << 31) - 1], dtype=torch.int64)
    got = rng.hash_bits(torch.tensor(seeds), torch.tensor(output_index), tokens).tolist()
    want = [[_hash_reference(s, o, t) for t in tokens.tolist()] for s, o in zip(seeds, output_index)]
    assert got == want


def test_unit_interval_extremes_are_strictly_inside():
    u = rng.bits_to_unit_interval(torch.tensor([0, 1, 255, 256, M32 - 1, M32], dtype=torch.int64))
    assert u.dtype == torch.float32
    assert (u > 0).all() and (u < 1).all()
    assert u[0].item() == 2.0 ** -24 and u[-1].item() == 1 - 2.0 ** -24
    e = -torch.log(u)
    assert torch.isfinite(e).all() and (e > 0).all()


def test_uniforms_over_token_ids_look_uniform():
    u = rng.uniform(torch.tensor([42]), torch.tensor([0]), torch.arange(200_000))[0].double().numpy()
    assert u.min() > 0 and u.max() < 1
    assert scipy.stats.kstest(u, "uniform").pvalue > 0.001


def test_uniforms_over_seeds_and_steps_look_uniform():
    n = 100_000
    seeds = torch.arange(n, dtype=torch.int64)
    by_seed = rng.uniform(seeds, torch.zeros(n, dtype=torch.int64), torch.tensor([5]))[:, 0]
    by_step = rng.uniform(torch.full((n,), 9), torch.arange(n), torch.tensor([5]))[:, 0]
    for u in (by_seed, by_step):
        u = u.double().numpy()
        assert u.min() > 0 and u.max() < 1
        assert scipy.stats.kstest(u, "uniform").pvalue > 0.001


def test_neighbouring_counters_and_seeds_are_independent():
    # Pairs (u[t], u[t+1]) and (u[seed], u[seed+1]) must fill a 16x16 grid evenly.
    u = rng.uniform(torch.arange(400), torch.zeros(400, dtype=torch.int64), torch.arange(1000)).numpy()
    for a, b in ((u[:, :-1], u[:, 1:]), (u[:-1, :], u[1:, :])):
        cells = (np.floor(a * 16) * 16 + np.floor(b * 16)).astype(np.int64).ravel()
        counts = np.bincount(cells, minlength=256)
        assert scipy.stats.chisquare(counts).pvalue > 0.001
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_exponential_noise_mean_and_determinism():
    seeds, steps = torch.arange(64), torch.arange(64) * 3
    e = rng.exponential(seeds, steps, 4096)
    assert e.shape == (64, 4096) and (e > 0).all() and torch.isfinite(e).all()
    assert abs(e.double().mean().item() - 1.0) < 0.01
    assert torch.equal(e, rng.exponential(seeds, steps, 4096))
    assert not torch.equal(e[0], rng.exponential(seeds[:1], steps[:1] + 1, 4096)[0])
