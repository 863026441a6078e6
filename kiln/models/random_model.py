"""Write a Hugging Face checkpoint with random weights for a preset architecture.

Used for speed work and tests (no model hub here): real shapes, random values (std 0.02, norms
near 1), a small byte-level BPE tokenizer trained on local Python source, sharded safetensors.
Weights are generated tensor by tensor on ``device`` (fast on a GPU) and written shard by shard,
so at most one shard is ever in host memory.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

import torch

from kiln.errors import KilnError
from kiln.models.args import ModelArgs
from kiln.models.loader import DTYPES
from kiln.models.presets import list_presets, preset_config

__all__ = ["write_random_model", "list_presets", "checkpoint_shapes"]

MAX_SHARD_BYTES = 5 * 10**9
BOS_TOKEN, EOS_TOKEN = "<|begin_of_text|>", "<|end_of_text|>"
_TOKENIZER_VOCAB = 2048
# Stdlib modules whose source trains the tokenizer: plain text that every Python install has.
_CORPUS_FILES = ("textwrap.py", "string.py", "argparse.py", "json/decoder.py", "json/encoder.py")
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def checkpoint_shapes(args: ModelArgs) -> list[tuple[str, tuple[int, ...]]]:
    """HF tensor names and shapes of a checkpoint with these args, in file order."""
    h, d, i = args.hidden_size, args.head_dim, args.intermediate_size
    q, kv = args.num_attention_heads * d, args.num_key_value_heads * d
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (args.vocab_size, h))]
    for n in range(args.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes.append((p + "input_layernorm.weight", (h,)))
        for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes.append((p + f"self_attn.{proj}.weight", (rows, h)))
            if args.qkv_bias:
                shapes.append((p + f"self_attn.{proj}.bias", (rows,)))
        shapes.append((p + "self_attn.o_proj.weight", (h, q)))
        if args.o_bias:
            shapes.append((p + "self_attn.o_proj.bias", (h,)))
        if args.qk_norm:
            shapes += [(p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,))]
        shapes.append((p + "post_attention_layernorm.weight", (h,)))
        for proj, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
            shapes.append((p + f"mlp.{proj}.weight", shape))
            if args.mlp_bias:
                shapes.append((p + f"mlp.{proj}.bias", (shape[0],)))
    shapes.append(("model.norm.weight", (h,)))
    if not args.tie_word_embeddings:
        shapes.append(("lm_head.weight", (args.vocab_size, h)))
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """std-0.02 normal weights; norm scales 1 plus a little noise (so that each norm matters)."""
    values = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if name.endswith("norm.weight"):
        return 1.0 + 0.05 * values
    return 0.02 * values


def _plan_shards(shapes: list[tuple[str, tuple[int, ...]]], itemsize: int,
                 max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy split into shards of at most ``max_shard_bytes`` (a larger single tensor gets its own)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = itemsize * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _train_tokenizer(out_dir: Path, vocab_size: int) -> tuple[int, int]:
    """Train and save a byte-level BPE tokenizer; returns (bos_id, eos_id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / f).read_text(encoding="utf-8") for f in _CORPUS_FILES if (stdlib / f).is_file()]
    if not texts:
        raise KilnError(f"no Python source found under {stdlib} to train the tokenizer on")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN)
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)


def write_random_model(preset: str, out_dir: str | Path, seed: int = 0, dtype: str = "bfloat16",
                       device: str | torch.device = "cpu",
                       max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write a random-weight HF checkpoint of ``preset`` into ``out_dir``; returns the directory.

    Files: config.json (hub key style), generation_config.json, tokenizer files,
    model-0000k-of-0000n.safetensors shards of at most ``max_shard_bytes`` and their index.
    The same preset, seed and dtype give the same weights on the same device type.
    """
    if dtype not in DTYPES:
        raise KilnError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from safetensors.torch import save_file

    config: dict[str, Any] = preset_config(preset)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    bos_id, eos_id = _train_tokenizer(out, min(_TOKENIZER_VOCAB, config["vocab_size"]))
    config.update(bos_token_id=bos_id, eos_token_id=eos_id, torch_dtype=dtype)
    args = ModelArgs.from_hf_config(config)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos_id, "eos_token_id": [eos_id], "do_sample": True, "temperature": 1.0,
         "top_p": 1.0}, indent=2) + "\n")

    torch_dtype = DTYPES[dtype]
    dev = torch.device(device)
    shapes = checkpoint_shapes(args)
    shards = _plan_shards(shapes, torch_dtype.itemsize, max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    index = 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            # One generator per tensor: values do not depend on how tensors fall into shards.
            gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + index)
            index += 1
            tensors[name] = _random_tensor(name, shape, gen, dev).to(torch_dtype).cpu()
            weight_map[name] = file
            total += tensors[name].numel() * torch_dtype.itemsize
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return out
