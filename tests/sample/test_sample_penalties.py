"""Penalties against a per-row Python reference written with plain loops."""

from __future__ import annotations

import random

import torch

from kiln.sample import Sampler, SamplingBatch
from kiln.sample.penalties import apply_penalties, token_counts
from kiln.sampling_params import SamplingParams

from sample_helpers import make_rows

V = 40


def _reference_penalised(logits: list[float], params: SamplingParams, prompt: list[int],
                         output: list[int]) -> list[float]:
    """One row, loop by loop: repetition over prompt+output, then frequency and presence on output."""
    out = list(logits)
    seen = set(prompt) | set(output)
    for t in range(len(out)):
        if t in seen:
            if out[t] > 0:
                out[t] /= params.repetition_penalty
            else:
                out[t] *= params.repetition_penalty
        count = output.count(t)
        out[t] -= params.frequency_penalty * count
        if count > 0:
            out[t] -= params.presence_penalty
    return out


def _random_case(seed: int, num_rows: int = 24):
    """Rows mixing every penalty (and none), random histories with repeats, some empty."""
    r = random.Random(seed)
    params, prompts, outputs = [], [], []
    for i in range(num_rows):
        kind = i % 6
        params.append(SamplingParams(
            temperature=0.0,
            repetition_penalty=r.choice([0.7, 1.3, 2.0]) if kind in (0, 3, 5) else 1.0,
            frequency_penalty=r.uniform(-2, 2) if kind in (1, 3, 5) else 0.0,
            presence_penalty=r.uniform(-2, 2) if kind in (2, 5) else 0.0,
        ))
        prompts.append([r.randrange(V) for _ in range(r.randrange(0, 30))])
        # Small id range so tokens repeat and counts exceed one.
        outputs.append([r.randrange(V // 2) for _ in range(r.randrange(0, 20))])
    logits = torch.randn(num_rows, V, generator=torch.Generator().manual_seed(seed)) * 3
    return params, prompts, outputs, logits


def _batch(params, prompts, outputs):
    return SamplingBatch.build(make_rows(params, prompts=prompts, outputs=outputs), V, "cpu")


def test_token_counts_ignore_padding():
    ids = torch.tensor([[3, 3, 1, -1, -1], [-1, -1, -1, -1, -1], [0, 4, 4, 4, 2]])
    want = torch.tensor([[0, 1, 0, 2, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 3]], dtype=torch.float32)
    assert torch.equal(token_counts(ids, 5), want)


def test_penalties_match_reference_on_random_rows():
    for seed in range(5):
        params, prompts, outputs, logits = _random_case(seed)
        batch = _batch(params, prompts, outputs)
        got = apply_penalties(logits, batch.prompt_token_ids, batch.output_token_ids,
                              batch.repetition_penalty, batch.frequency_penalty, batch.presence_penalty)
        want = torch.tensor([_reference_penalised(logits[i].tolist(), params[i], prompts[i], outputs[i])
                             for i in range(len(params))])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
        # The case really changes logits on most rows (guards a vacuous comparison).
        changed = (got != logits).any(dim=1)
        assert changed.sum() >= len(params) // 2


def test_greedy_with_penalties_is_argmax_of_reference():
    params, prompts, outputs, logits = _random_case(11, num_rows=48)
    batch = _batch(params, prompts, outputs)
    assert batch.all_greedy and batch.any_penalties
    original = logits.clone()
    got = Sampler()(logits, batch).token_ids
    want = [max(range(V), key=lambda t, row=_reference_penalised(logits[i].tolist(), params[i],
                                                                   prompts[i], outputs[i]): row[t])
            for i in range(len(params))]
    assert got.tolist() == want
    assert torch.equal(logits, original), "the sampler must not modify the caller's logits"
    # Penalties change the greedy choice on some rows, so this is not argmax of the raw logits.
    assert (got != logits.argmax(dim=1)).any()


def test_rows_without_penalties_ship_no_history_and_stay_unchanged():
    params = [SamplingParams(temperature=0.0, presence_penalty=1.5), SamplingParams(temperature=0.0)]
    batch = _batch(params, [[1, 2, 3], [4, 5, 6]], [[7, 7], [8, 9]])
    # Presence only looks at outputs, so no prompt is shipped; row 1 has no penalties at all.
    assert (batch.prompt_token_ids == -1).all()
    assert batch.output_token_ids[1].eq(-1).all()
    logits = torch.randn(2, V)
    got = apply_penalties(logits, batch.prompt_token_ids, batch.output_token_ids,
                          batch.repetition_penalty, batch.frequency_penalty, batch.presence_penalty)
    assert torch.equal(got[1], logits[1])
    assert torch.allclose(got[0, 7], logits[0, 7] - 1.5)


def test_no_penalties_means_no_histories():
    batch = _batch([SamplingParams(temperature=0.5)] * 3, [[1, 2]] * 3, [[3]] * 3)
    assert not batch.any_penalties
    assert batch.prompt_token_ids is None and batch.output_token_ids is None


def test_out_of_vocab_history_ids_are_ignored():
    params = [SamplingParams(temperature=0.0, frequency_penalty=1.0)]
    batch = _batch(params, [[]], [[2, V + 5, 2]])
    assert batch.output_token_ids.tolist() == [[2, -1, 2]]
