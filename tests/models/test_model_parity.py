"""kiln vs transformers on tiny random checkpoints of every family: logits, greedy tokens, paging."""

from __future__ import annotations

import pytest
import torch

from kiln.models.loader import load_model
from model_helpers import PagedRunner, hf_config, hf_greedy, hf_logits, rel_err, save_hf_checkpoint

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
LINEAR_ROPE = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}

# name -> (family, config overrides). Prompts of 80 tokens run past llama3's original 32
# positions and far past the 8-token sliding windows.
CASES = {
    "llama": ("llama", {}),
    "llama-linear-bias": ("llama", dict(rope_parameters=LINEAR_ROPE, attention_bias=True,
                                        mlp_bias=True)),
    "llama3-scaled": ("llama", dict(rope_parameters=LLAMA3_ROPE)),
    "mistral-window": ("mistral", dict(sliding_window=8)),
    "qwen2-tied-bias": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-window-layers": ("qwen2", dict(use_sliding_window=True, sliding_window=8,
                                          max_window_layers=1)),
    "qwen3-qknorm": ("qwen3", dict(head_dim=32)),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(HF model, kiln model) with the same tiny random weights, via a checkpoint on disk."""
    family, overrides = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param)
    hf = save_hf_checkpoint(hf_config(family, **overrides), out, seed=len(request.param))
    return request.param, hf, load_model(out, dtype="float32")


def _prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_config_flags_reach_the_model(pair):
    name, hf, model = pair
    args = model.args
    if name == "qwen3-qknorm":
        assert args.head_dim == 32 != args.hidden_size // args.num_attention_heads and args.qk_norm
    if name == "qwen2-tied-bias":
        assert args.tie_word_embeddings and args.qkv_bias and model.lm_head.is_tied
    if name == "mistral-window":
        assert args.layer_sliding_windows == (8, 8)
    if name == "qwen2-window-layers":
        assert args.layer_sliding_windows == (None, 8)
    if name == "llama3-scaled":
        assert args.rope.rope_type == "llama3" and args.rope.original_max_position_embeddings == 32
    if name == "llama-linear-bias":
        assert args.qkv_bias and args.o_bias and args.mlp_bias and args.rope.rope_type == "linear"


def test_logits_match_transformers(pair):
    _, hf, model = pair
    prompt = _prompt(80)
    ours = PagedRunner(model).step([("a", prompt)])[0]
    ref = hf_logits(hf, prompt)
    assert ours.shape == ref.shape == (80, 256)
    assert rel_err(ours, ref) < 1e-4


def test_greedy_32_tokens_identical(pair):
    _, hf, model = pair
    prompt = _prompt(12, seed=1)
    assert PagedRunner(model).greedy("a", prompt, 32) == hf_greedy(hf, prompt, 32)


def test_chunked_prefill_equals_one_forward(pair):
    _, _, model = pair
    prompt = _prompt(45, seed=2)
    whole = PagedRunner(model).step([("a", prompt)])[0]
    runner = PagedRunner(model)
    pieces, start = [], 0
    for size in (7, 20, 13, 1, 4):
        pieces.append(runner.step([("a", prompt[start:start + size])])[0])
        start += size
    assert start == len(prompt)
    assert rel_err(torch.cat(pieces), whole) < 1e-5


def test_continuing_from_cached_blocks_equals_one_forward(pair):
    _, _, model = pair
    prefix, tail = _prompt(16, seed=3), _prompt(21, seed=4)
    whole = PagedRunner(model).step([("b", prefix + tail)])[0]
    runner = PagedRunner(model, block_size=4)
    runner.step([("a", prefix + _prompt(5, seed=5))])
    runner.share_prefix("b", "a", num_blocks=4)
    continued = runner.step([("b", tail)])[0]
    assert rel_err(continued, whole[16:]) < 1e-5


def test_flat_batch_equals_each_alone(pair):
    _, _, model = pair
    prompts = {"a": _prompt(5, 6), "b": _prompt(17, 7), "c": _prompt(30, 8)}
    extra = {"a": [11], "b": _prompt(6, 9), "c": [12]}
    late = _prompt(9, 10)

    alone = {}
    for seq in prompts:
        runner = PagedRunner(model)
        alone[seq] = torch.cat([runner.step([(seq, prompts[seq])])[0],
                                runner.step([(seq, extra[seq])])[0]])
    alone["d"] = PagedRunner(model).step([("d", late)])[0]

    runner = PagedRunner(model)
    first = runner.step([(s, p) for s, p in prompts.items()])
    # A mixed step: decodes, a prefill chunk that continues, and a brand-new prompt.
    second = runner.step([("a", extra["a"]), ("b", extra["b"]), ("d", late), ("c", extra["c"])])
    together = {s: torch.cat([first[i], second[j]])
                for s, i, j in (("a", 0, 0), ("b", 1, 1), ("c", 2, 3))}
    together["d"] = second[2]
    for seq, logits in alone.items():
        assert rel_err(together[seq], logits) < 1e-5, seq


def test_sampled_rows_alone_past_the_last_attention(pair):
    """The engine computes only the sampled rows after the last layer's attention: their logits
    are the full forward's, and every token's K/V is still cached (also with no row at all)."""
    _, _, model = pair
    prompts = [("a", _prompt(5, 11)), ("b", _prompt(17, 12)), ("c", _prompt(30, 13))]
    full, pruned, empty = PagedRunner(model), PagedRunner(model), PagedRunner(model)
    want = torch.cat(full.step(prompts))
    rows = [4, 21, 51, 8]  # the prompts' last tokens and one inside b, out of order
    assert rel_err(pruned.step(prompts, rows=rows), want[rows]) < 1e-5
    assert empty.step(prompts, rows=[]).shape == (0, model.args.hidden_size)
    follow = [("a", [7]), ("b", _prompt(3, 14)), ("c", [9])]
    want = torch.cat(full.step(follow))
    assert rel_err(torch.cat(pruned.step(follow)), want) < 1e-5
    assert rel_err(empty.step(follow, rows=[0, 3]), want[[0, 3]]) < 1e-5


def test_decode_weight_bytes_count_the_embedding_only_when_tied(pair):
    """`kiln bench latency` counts the bytes a decode step reads: the input-embedding table is read
    one row per token, so it counts only when the LM head reads it as its weight."""
    from kiln.bench.latency import weight_bytes

    name, _, model = pair
    embed = model.model.embed_tokens.weight if hasattr(model, "model") else None
    embed = embed if embed is not None else next(m.weight for m in model.modules()
                                                 if type(m).__name__ == "VocabEmbedding")
    unique = {t.data_ptr(): t.numel() * t.element_size()
              for t in list(model.parameters()) + list(model.buffers())}
    table = embed.numel() * embed.element_size()
    want = sum(unique.values()) - (0 if model.lm_head.is_tied else table)
    assert weight_bytes(model) == want
