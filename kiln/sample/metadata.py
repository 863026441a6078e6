"""Per-row sampling parameters of a batch, gathered once on the host and shipped to the device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kiln.sampling_params import SamplingParams

# Temperatures below this are treated as greedy: dividing logits by them overflows float32 (vLLM
# draws the same line).
GREEDY_TEMPERATURE_EPS = 1e-5


@dataclass
class SamplingRow:
    """Host-side description of one row to sample: its request's parameters and history."""

    params: SamplingParams
    seed: int
    output_index: int
    prompt_token_ids: list[int]
    output_token_ids: list[int]


def _wrap_int64(value: int) -> int:
    """Fold any Python int into int64 range (two's complement), so huge or negative seeds work."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= (1 << 63) else value


def _pad_token_ids(rows: list[list[int]], vocab_size: int) -> np.ndarray:
    """``[B, L]`` int64 padded with -1; ids outside [0, vocab_size) become -1 (no logit to penalise)."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, ids in enumerate(rows):
        if ids:
            out[i, : len(ids)] = ids
    out[(out < 0) | (out >= vocab_size)] = -1
    return out


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """Copy a host array to ``device``; to CUDA from pinned memory so the copy does not block the host."""
    host = torch.from_numpy(array)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


@dataclass
class SamplingBatch:
    """Per-row sampling parameters of a batch of B rows, as device tensors, plus host flags.

    The flags (``all_greedy``, ``any_top_k``, ...) are plain Python values known when the batch is
    built; the sampler uses them to skip work no row needs, never to read device values back.
    ``max_top_k`` (largest top_k in use, 0 when none) lets top-k run as ``topk`` instead of a full
    sort when no row uses top-p; ``any_greedy`` says whether a greedy argmax must be mixed in.
    """

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    min_p: Tensor
    repetition_penalty: Tensor
    presence_penalty: Tensor
    frequency_penalty: Tensor
    seeds: Tensor
    output_index: Tensor
    prompt_token_ids: Tensor | None
    output_token_ids: Tensor | None
    max_num_logprobs: int | None
    all_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_min_p: bool
    any_penalties: bool
    any_greedy: bool = False
    max_top_k: int = 0

    @property
    def num_rows(self) -> int:
        """Number of rows B."""
        return self.temperature.shape[0]

    @classmethod
    def build(cls, rows: list[SamplingRow], vocab_size: int, device) -> "SamplingBatch":
        """Gather ``rows`` into device tensors with two host-to-device copies of parameters.

        Temperatures below ``GREEDY_TEMPERATURE_EPS`` become 0 (greedy); a top_k of ``vocab_size``
        or more is off (0). Token histories are only shipped for rows that need them: prompts for
        rows with a repetition penalty, outputs for rows with any penalty; others are all padding.
        """
        device = torch.device(device)
        floats = np.zeros((6, len(rows)), dtype=np.float32)
        ints = np.zeros((3, len(rows)), dtype=np.int64)
        prompts: list[list[int]] = []
        outputs: list[list[int]] = []
        max_num_logprobs: int | None = None
        for i, row in enumerate(rows):
            p = row.params
            temperature = 0.0 if p.temperature < GREEDY_TEMPERATURE_EPS else p.temperature
            top_k = 0 if p.top_k >= vocab_size else p.top_k
            floats[:, i] = (temperature, p.top_p, p.min_p, p.repetition_penalty,
                            p.presence_penalty, p.frequency_penalty)
            ints[:, i] = (top_k, _wrap_int64(row.seed), row.output_index)
            prompts.append(row.prompt_token_ids if p.repetition_penalty != 1.0 else [])
            outputs.append(row.output_token_ids if p.has_penalties else [])
            if p.logprobs is not None:
                max_num_logprobs = max(max_num_logprobs or 0, p.logprobs)
        float_dev = _to_device(floats, device)
        int_dev = _to_device(ints, device)

        any_penalties = any(r.params.has_penalties for r in rows)
        prompt_ids = output_ids = None
        if any_penalties:
            prompt_ids = _to_device(_pad_token_ids(prompts, vocab_size), device)
            output_ids = _to_device(_pad_token_ids(outputs, vocab_size), device)
        greedy = floats[0] == 0.0
        random_rows = ~greedy
        # Filters only matter on rows that actually sample.
        top_k_on = (ints[0] > 0) & random_rows
        return cls(
            temperature=float_dev[0], top_p=float_dev[1], min_p=float_dev[2],
            repetition_penalty=float_dev[3], presence_penalty=float_dev[4],
            frequency_penalty=float_dev[5],
            top_k=int_dev[0], seeds=int_dev[1], output_index=int_dev[2],
            prompt_token_ids=prompt_ids, output_token_ids=output_ids,
            max_num_logprobs=max_num_logprobs,
            all_greedy=bool(greedy.all()),
            any_greedy=bool(greedy.any()),
            any_top_k=bool(top_k_on.any()),
            any_top_p=bool(((floats[1] < 1.0) & random_rows).any()),
            any_min_p=bool(((floats[2] > 0.0) & random_rows).any()),
            any_penalties=any_penalties,
            max_top_k=int(ints[0][top_k_on].max()) if top_k_on.any() else 0,
        )
