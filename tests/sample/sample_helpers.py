"""Helpers shared by the sampler tests (a uniquely named module, so other test folders cannot shadow it)."""

from __future__ import annotations

from kiln.sample import SamplingRow
from kiln.sampling_params import SamplingParams


def make_rows(params: list[SamplingParams], seeds=None, output_index=None, prompts=None, outputs=None):
    """SamplingRows with defaults (seed = row index, output_index 0, empty histories)."""
    n = len(params)
    seeds = list(range(n)) if seeds is None else seeds
    output_index = [0] * n if output_index is None else output_index
    prompts = [[] for _ in range(n)] if prompts is None else prompts
    outputs = [[] for _ in range(n)] if outputs is None else outputs
    return [SamplingRow(p, s, o, list(pr), list(out))
            for p, s, o, pr, out in zip(params, seeds, output_index, prompts, outputs)]
