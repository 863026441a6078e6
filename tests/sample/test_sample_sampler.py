"""Sampler behaviour: greedy, seeds, mixed batches, logprobs, flags and no host synchronisation."""

from __future__ import annotations

import pytest
import torch

from kiln.sample import Sampler, SamplingBatch
from kiln.sample.filters import apply_top_k, apply_top_k_top_p
from kiln.sampling_params import SamplingParams

from sample_helpers import make_rows

V = 64


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 2


def _sample(params, logits, **rows_kwargs):
    batch = SamplingBatch.build(make_rows(params, **rows_kwargs), V, "cpu")
    return Sampler()(logits, batch)


# A spread of random-sampling settings used as rows and neighbours.
VARIED = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.6, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=0.9, min_p=0.1),
    SamplingParams(temperature=1.1, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.2,
                   frequency_penalty=0.5, presence_penalty=0.3, logprobs=2),
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.0, repetition_penalty=1.5),
]


def test_greedy_is_argmax():
    logits = _logits(33)
    out = _sample([SamplingParams(temperature=0.0)] * 33, logits)
    assert out.token_ids.dtype == torch.int64
    assert torch.equal(out.token_ids, logits.argmax(dim=1))
    assert out.logprobs is None and out.sampled_ranks is None


def test_tiny_temperature_is_greedy():
    batch = SamplingBatch.build(make_rows([SamplingParams(temperature=1e-7)]), V, "cpu")
    assert batch.all_greedy and batch.temperature.item() == 0.0


def test_same_seed_same_token_whatever_the_batch():
    logits = _logits(1, seed=5)[0]
    params = SamplingParams(temperature=1.0, top_k=30, top_p=0.95)
    alone = _sample([params], logits[None], seeds=[123], output_index=[4]).token_ids.item()
    for size, position in ((2, 1), (9, 0), (9, 5), (17, 16)):
        neighbours = [VARIED[i % len(VARIED)] for i in range(size)]
        neighbours[position] = params
        batch_logits = _logits(size, seed=size)
        batch_logits[position] = logits
        seeds = [1000 + i for i in range(size)]
        seeds[position] = 123
        steps = [i % 3 for i in range(size)]
        steps[position] = 4
        outputs = [[i, i + 1] for i in range(size)]
        out = _sample(neighbours, batch_logits, seeds=seeds, output_index=steps, outputs=outputs)
        assert out.token_ids[position].item() == alone, (size, position)


def test_different_seeds_and_steps_differ():
    logits = torch.zeros(256, V)  # flat: every token equally likely
    params = [SamplingParams(temperature=1.0)] * 256
    by_seed = _sample(params, logits, seeds=list(range(256))).token_ids
    by_step = _sample(params, logits, seeds=[7] * 256, output_index=list(range(256))).token_ids
    same = _sample(params, logits, seeds=[7] * 256, output_index=[3] * 256).token_ids
    assert by_seed.unique().numel() > V // 2
    assert by_step.unique().numel() > V // 2
    assert same.unique().numel() == 1


def test_mixed_batch_equals_each_row_alone():
    params = [VARIED[i % len(VARIED)] for i in range(21)]
    logits = _logits(21, seed=3)
    seeds = [50 + 7 * i for i in range(21)]
    steps = [i % 4 for i in range(21)]
    prompts = [[(3 * i + j) % V for j in range(i % 5)] for i in range(21)]
    outputs = [[(5 * i + j) % V for j in range(i % 7)] for i in range(21)]
    together = _sample(params, logits, seeds=seeds, output_index=steps, prompts=prompts, outputs=outputs)
    for i in range(21):
        alone = _sample([params[i]], logits[i:i + 1], seeds=[seeds[i]], output_index=[steps[i]],
                        prompts=[prompts[i]], outputs=[outputs[i]])
        assert alone.token_ids.item() == together.token_ids[i].item(), i
        if params[i].logprobs is not None:
            n = 1 + params[i].logprobs
            torch.testing.assert_close(alone.logprobs[0, :n], together.logprobs[i, :n])
            assert torch.equal(alone.logprob_token_ids[0, :n], together.logprob_token_ids[i, :n])


def test_logprobs_and_ranks_match_log_softmax_of_raw_logits():
    params = [SamplingParams(temperature=1.4, logprobs=5, repetition_penalty=1.3, top_k=10),
              SamplingParams(temperature=0.0, logprobs=0, frequency_penalty=1.0),
              SamplingParams(temperature=0.7, logprobs=3, top_p=0.5)] * 10
    logits = _logits(30, seed=9)
    out = _sample(params, logits, seeds=list(range(30)), outputs=[[1, 2, 2, 3]] * 30)
    want = torch.log_softmax(logits, dim=1)
    assert out.logprobs.shape == (30, 6) and out.logprob_token_ids.shape == (30, 6)
    assert torch.equal(out.logprob_token_ids[:, 0], out.token_ids)
    torch.testing.assert_close(out.logprobs[:, 0], want.gather(1, out.token_ids[:, None])[:, 0])
    top = want.topk(5, dim=1)
    torch.testing.assert_close(out.logprobs[:, 1:], top.values)
    assert torch.equal(out.logprob_token_ids[:, 1:], top.indices)
    for i in range(30):
        sampled = want[i, out.token_ids[i]]
        assert out.sampled_ranks[i].item() == 1 + int((want[i] > sampled).sum())
    # Ranks vary (not everything is the argmax), so the rank check is not vacuous.
    assert out.sampled_ranks.max() > 1


def test_logprobs_zero_gives_only_the_sampled_column():
    out = _sample([SamplingParams(temperature=0.0, logprobs=0)] * 4, _logits(4))
    assert out.logprobs.shape == (4, 1)
    assert torch.equal(out.sampled_ranks, torch.ones(4, dtype=torch.int64))


def test_top_k_alone_agrees_with_the_sorting_path():
    logits = _logits(40, seed=2)
    top_k = torch.tensor([0, 1, 3, 7, 63, 64] * 6 + [5, 0, 2, 9])
    via_topk = apply_top_k(logits, top_k, max_top_k=64)
    via_sort = apply_top_k_top_p(logits, top_k, torch.ones(40))
    assert torch.equal(via_topk, via_sort)
    kept = torch.isfinite(via_topk).sum(dim=1)
    want = torch.where(top_k == 0, V, top_k)
    assert torch.equal(kept, want)


def test_top_p_keeps_smallest_prefix_reaching_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05],
                                     [0.05, 0.15, 0.3, 0.5]]))
    out = apply_top_k_top_p(logits, torch.zeros(3, dtype=torch.int64), torch.tensor([0.79, 0.81, 0.3]))
    assert torch.isfinite(out).tolist() == [[True, True, False, False], [True, True, True, False],
                                            [False, False, False, True]]


def test_build_flags_and_clamps():
    params = [SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.3),  # greedy: filters moot
              SamplingParams(temperature=1.0, top_k=V + 10),  # top_k beyond vocab: off
              SamplingParams(temperature=0.8, logprobs=4)]
    batch = SamplingBatch.build(make_rows(params, seeds=[-3, 2**70, 5]), V, "cpu")
    assert batch.any_greedy and not batch.all_greedy
    assert not batch.any_top_k and not batch.any_top_p and not batch.any_min_p
    assert batch.top_k.tolist() == [5, 0, 0] and batch.max_top_k == 0
    assert batch.max_num_logprobs == 4
    assert batch.seeds.tolist() == [-3, 0, 5]  # 2**70 wraps to 0 in int64
    both = SamplingBatch.build(make_rows([SamplingParams(top_k=3), SamplingParams(top_k=9, top_p=0.9)]),
                               V, "cpu")
    assert both.any_top_k and both.any_top_p and both.max_top_k == 9


def test_no_host_sync_on_meta_device():
    # Meta tensors carry no data: any .item(), bool(tensor), nonzero or data-dependent shape fails.
    with pytest.raises(Exception):
        torch.zeros(2, device="meta").sum().item()
    params = [VARIED[i % len(VARIED)] for i in range(8)]
    rows = make_rows(params, prompts=[[1, 2]] * 8, outputs=[[3, 3]] * 8)
    batch = SamplingBatch.build(rows, V, "meta")
    assert batch.any_top_k and batch.any_top_p and batch.any_min_p and batch.any_penalties
    out = Sampler()(torch.empty(8, V, device="meta"), batch)
    assert out.token_ids.shape == (8,) and out.token_ids.device.type == "meta"
    assert out.logprobs.shape == (8, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_sync():
    params = [VARIED[i % len(VARIED)] for i in range(16)]
    rows = make_rows(params, prompts=[[1, 2]] * 16, outputs=[[3, 3]] * 16)
    logits = _logits(16, seed=4)
    cpu = Sampler()(logits, SamplingBatch.build(rows, V, "cpu"))
    batch = SamplingBatch.build(rows, V, "cuda")
    logits_gpu = logits.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = Sampler()(logits_gpu, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(gpu.token_ids.cpu(), cpu.token_ids)


def test_top_p_exact_boundary_keeps_the_prefix_that_reaches_it():
    # Probabilities 1/2, 1/4, 1/8, 1/8 are exact in float32: top_p 0.75 is reached by two tokens.
    logits = torch.log(torch.tensor([[4.0, 2.0, 1.0, 1.0]]))
    out = apply_top_k_top_p(logits, torch.zeros(1, dtype=torch.int64), torch.tensor([0.75]))
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


def test_rank_counts_only_strictly_larger_logprobs():
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0] + [-5.0] * (V - 4)])
    out = _sample([SamplingParams(temperature=0.0, logprobs=1)], logits)
    assert out.token_ids.item() == 0  # first of the tied maxima
    assert out.sampled_ranks.item() == 1
