"""The sampler draws exactly the filtered distribution: chi-square over many seeds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from kiln.sample import Sampler, SamplingBatch
from kiln.sampling_params import SamplingParams

from sample_helpers import make_rows

# Distinct, well separated logits over 12 tokens, deliberately out of order.
LOGITS = np.array([1.2, -0.3, 2.0, 0.4, -1.5, 0.9, 1.6, -0.8, 0.0, 2.4, -2.2, 0.6], dtype=np.float64)
V = LOGITS.size
NUM_SAMPLES = 40_000


def _expected(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """Target distribution computed directly in float64, step by step as documented."""
    p = np.exp(LOGITS / temperature)
    p /= p.sum()
    keep = p >= min_p * p.max()
    if top_k:
        keep &= p >= np.sort(p[keep])[::-1][min(top_k, keep.sum()) - 1]
    q = np.where(keep, p, 0.0)
    q /= q.sum()
    if top_p < 1.0:
        order = np.argsort(-q)
        cumulative = np.cumsum(q[order])
        num_keep = int(np.searchsorted(cumulative, top_p) + 1)  # first prefix reaching top_p
        keep_p = np.zeros(V, dtype=bool)
        keep_p[order[:num_keep]] = True
        q = np.where(keep_p, q, 0.0)
        q /= q.sum()
    return q


def _draw(params: SamplingParams, seeds=None, output_index=None) -> np.ndarray:
    n = NUM_SAMPLES
    seeds = list(range(1000, 1000 + n)) if seeds is None else seeds
    batch = SamplingBatch.build(make_rows([params] * n, seeds, output_index), V, "cpu")
    logits = torch.tensor(LOGITS, dtype=torch.float32).repeat(n, 1)
    tokens = Sampler()(logits, batch).token_ids
    return np.bincount(tokens.numpy(), minlength=V)


def _assert_matches(counts: np.ndarray, expected: np.ndarray) -> None:
    dropped = expected == 0
    assert counts[dropped].sum() == 0, f"filtered tokens were drawn: {counts[dropped]}"
    kept = ~dropped
    assert kept.sum() >= 2, "test setup must keep at least two tokens"
    result = scipy.stats.chisquare(counts[kept], expected[kept] * counts.sum())
    assert result.pvalue > 0.001, (counts, expected * counts.sum(), result)


CASES = {
    "temperature_0.7": dict(temperature=0.7),
    "temperature_1.5": dict(temperature=1.5),
    "temperature_1": dict(temperature=1.0),
    "top_k_4": dict(temperature=1.0, top_k=4),
    "top_p_0.6": dict(temperature=1.0, top_p=0.6),
    "min_p_0.2": dict(temperature=1.0, min_p=0.2),
    "combined": dict(temperature=0.8, top_k=6, top_p=0.85, min_p=0.05),
    "combined_hot": dict(temperature=1.7, top_k=9, top_p=0.7, min_p=0.1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_distribution_over_seeds(name):
    kwargs = CASES[name]
    expected = _expected(**kwargs)
    _assert_matches(_draw(SamplingParams(**kwargs)), expected)


def test_expected_distributions_really_filter():
    # Guard against a vacuous test: each filter case must drop some tokens and the cases differ.
    for name in ("top_k_4", "top_p_0.6", "min_p_0.2", "combined", "combined_hot"):
        assert (_expected(**CASES[name]) == 0).sum() >= 3, name
    assert (_expected(**CASES["top_k_4"]) > 0).sum() == 4


def test_distribution_over_steps_of_one_seed():
    # One request drawing token after token (output_index 0, 1, 2, ...) also follows the distribution.
    counts = _draw(SamplingParams(temperature=1.0, top_k=7), seeds=[77] * NUM_SAMPLES,
                   output_index=list(range(NUM_SAMPLES)))
    _assert_matches(counts, _expected(top_k=7))


def test_wrong_distribution_is_rejected():
    # The chi-square check has power: samples at T=0.7 do not pass as T=1.0.
    counts = _draw(SamplingParams(temperature=0.7))
    assert scipy.stats.chisquare(counts, _expected(temperature=1.0) * counts.sum()).pvalue < 1e-6
