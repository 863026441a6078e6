"""Calibration: token windows from a corpus, forward passes of the float model, per-Linear statistics.

Text comes from the demo corpus (the Python standard library of the running interpreter, split by
file: ``train`` for calibration, ``test`` for the accuracy report, so the two never overlap) or
from a user file (JSONL with a "text" field per line, or plain text). Statistics are recorded
with forward hooks while kiln's own model runs flat batches over a paged KV cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.layers.forward_context import build_attention_metadata
from kiln.layers.linear import Linear
from kiln.runner.memory import allocate_kv_caches

DEMO_CORPUS = "demo-corpus"
# Characters of each file tokenized when only its first window is needed (plenty for 2k tokens).
_CHARS_PER_TOKEN_BOUND = 16


@dataclass(frozen=True)
class TokenWindows:
    """``windows`` [num_samples, seq_len] int64 token ids and where they came from."""

    windows: torch.Tensor
    source: str

    @property
    def num_samples(self) -> int:
        """Number of windows."""
        return int(self.windows.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per window."""
        return int(self.windows.shape[1])

    @property
    def num_tokens(self) -> int:
        """Tokens over all windows."""
        return self.num_samples * self.seq_len

    def describe(self) -> dict:
        """JSON-ready summary for engine.json."""
        return {"source": self.source, "num_samples": self.num_samples, "seq_len": self.seq_len,
                "num_tokens": self.num_tokens}


def _load_demo_corpus():
    """The demo corpus module (the running interpreter's stdlib, split by file)."""
    from kiln.demo import corpus

    return corpus


def demo_corpus_texts(split: str, max_chars: int | None = None) -> Iterator[str]:
    """Texts of one split of the demo corpus, in a fixed pseudo-random file order.

    Ordering by a hash of the path (not alphabetically) spreads consecutive windows over many
    packages. Only the files actually consumed are read.
    """
    corpus = _load_demo_corpus()
    root = corpus.stdlib_root()
    chosen = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune excluded directories (site-packages can dwarf the stdlib) instead of filtering later.
        dirnames[:] = [d for d in dirnames if d not in corpus.EXCLUDED_DIR_NAMES]
        for filename in filenames:
            if not filename.endswith(".py"):
                continue
            path = Path(dirpath) / filename
            rel = path.relative_to(root)
            if corpus.is_excluded(rel.parts) or corpus.split_of(rel.as_posix()) != split:
                continue
            chosen.append((hashlib.sha256(rel.as_posix().encode()).hexdigest(), path))
    for _, path in sorted(chosen):
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text if max_chars is None else text[:max_chars]


def file_texts(path: str | Path) -> Iterator[str]:
    """Texts of a user file: one per JSONL line (its "text" field), else the whole file as one text."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise KilnError(f"calibration data file {str(p)!r} does not exist")
    raw = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix in (".jsonl", ".json"):
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise KilnError(f"{p}:{number} is not a JSON line; calibration JSONL needs one "
                                "object with a \"text\" field per line") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise KilnError(f"{p}:{number} has no string \"text\" field")
            yield record["text"]
    else:
        yield raw


def make_windows(tokenizer, texts: Iterable[str], num_samples: int, seq_len: int, source: str,
                 max_tokens_per_text: int | None = None) -> TokenWindows:
    """Cut ``num_samples`` windows of ``seq_len`` tokens from the texts.

    Each text is encoded as [bos] + its tokens (at most ``max_tokens_per_text`` of them, so that
    many texts are sampled rather than one long one) and appended to one stream, which is cut
    into consecutive windows; at most ``num_samples`` are taken (fewer when the text runs out,
    a clear error when there is not enough for even one).
    """
    if num_samples < 1 or seq_len < 2:
        raise KilnError(f"need at least 1 sample of at least 2 tokens, got {num_samples} x {seq_len}")
    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    needed = num_samples * seq_len
    stream: list[int] = []
    for text in texts:
        if sep is not None:
            stream.append(int(sep))
        tokens = tokenizer.encode(text, add_special_tokens=False)
        stream.extend(tokens if max_tokens_per_text is None else tokens[:max_tokens_per_text])
        if len(stream) >= needed:
            break
    count = min(num_samples, len(stream) // seq_len)
    if count == 0:
        raise KilnError(f"{source} has only {len(stream)} tokens, fewer than one window of "
                        f"{seq_len}; pass more text or a smaller --calib-seq-len")
    windows = torch.tensor(stream[:count * seq_len], dtype=torch.int64).view(count, seq_len)
    return TokenWindows(windows, source)


def load_windows(tokenizer, data: str | None, num_samples: int, seq_len: int,
                 split: str = "train") -> TokenWindows:
    """Windows from ``data`` (a file path), or from the demo corpus ``split`` when ``data`` is None."""
    if data is None:
        # One window's worth of each file: the windows then spread over as many files as samples.
        texts = demo_corpus_texts(split, max_chars=seq_len * _CHARS_PER_TOKEN_BOUND)
        return make_windows(tokenizer, texts, num_samples, seq_len, f"{DEMO_CORPUS}:{split}",
                            max_tokens_per_text=seq_len - 1)
    return make_windows(tokenizer, file_texts(data), num_samples, seq_len, f"file:{data}")


@torch.no_grad()
def forward_windows(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
                    block_size: int = 16, logits: bool = True,
                    kv_cache_dtype: torch.dtype | None = None) -> Iterator[torch.Tensor | None]:
    """Run windows [S, L] through ``model`` as independent sequences, ``batch_size`` per forward.

    Yields per batch the float32 logits [b, L, V] (or None with ``logits=False``, when only the
    hooks matter). Each batch gets a fresh paged KV cache sized to it, in ``kv_cache_dtype``
    (default the model's dtype).
    """
    args = model.args
    device = next(model.parameters()).device
    dtype = model.embed_tokens.weight.dtype
    seq_len = windows.shape[1]
    blocks_per_seq = math.ceil(seq_len / block_size)
    for first in range(0, windows.shape[0], batch_size):
        batch = windows[first:first + batch_size]
        b = batch.shape[0]
        caches = allocate_kv_caches(args, b * blocks_per_seq, block_size, kv_cache_dtype or dtype,
                                    device)
        seqs = [(0, seq_len, list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)))
                for i in range(b)]
        meta = build_attention_metadata(seqs, block_size, device)
        ids = batch.reshape(-1).to(device)
        positions = torch.arange(seq_len, device=device).repeat(b)
        hidden = model(ids, positions, caches, meta)
        yield model.compute_logits(hidden).view(b, seq_len, -1) if logits else None


@dataclass
class LinearStats:
    """Input statistics of one Linear over the calibration tokens (all float32, on the model device)."""

    absmax: torch.Tensor
    abssum: torch.Tensor
    count: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)

    @property
    def absmean(self) -> torch.Tensor:
        """Mean |x_j| per input channel."""
        return self.abssum / max(self.count, 1)

    def sample(self) -> torch.Tensor:
        """The kept input rows [R, K] (a fixed stride over all calibration tokens)."""
        return torch.cat(self.rows) if self.rows else self.absmax.new_zeros(0, self.absmax.numel())


@dataclass
class CalibrationStats:
    """Per-Linear input statistics (keyed by parameter prefix) and per-layer K/V maxima."""

    linears: dict[str, LinearStats]
    kv_absmax: dict[str, tuple[float, float]]
    windows: TokenWindows


def collect_stats(model: nn.Module, windows: TokenWindows, max_rows: int = 512,
                  batch_size: int = 4, progress: Callable[[int], None] | None = None
                  ) -> CalibrationStats:
    """Run the float model over ``windows`` and record what the quantizers need.

    For every Linear in the decoder layers: max and mean |x| per input channel and up to
    ``max_rows`` input rows. For every attention layer: the largest |k| a rotated key can reach
    (max over RoPE pairs of the pair's norm, since a rotation mixes the pair) and the largest |v|.
    ``progress(n)`` is called with the number of windows done after each batch.
    """
    stride = max(1, math.ceil(windows.num_tokens / max_rows))
    linears: dict[str, LinearStats] = {}
    kv: dict[str, list[float]] = {}
    seen = {"tokens": 0}
    handles = []

    def linear_hook(name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            st = linears.get(name)
            if st is None:
                st = linears[name] = LinearStats(x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1]))
            st.absmax = torch.maximum(st.absmax, x.abs().amax(dim=0))
            st.abssum += x.abs().sum(dim=0)
            offset = seen["tokens"]
            keep = torch.arange(x.shape[0], device=x.device)
            keep = keep[(keep + offset) % stride == 0]
            st.rows.append(x[keep].clone())
            st.count += x.shape[0]
        return hook

    def kv_hook(name: str, attn):
        def hook(_module, _inputs, output):
            q_size, kv_size, hd = attn.q_size, attn.kv_size, attn.head_dim
            v = output[..., q_size + kv_size:].float()
            k = output[..., q_size:q_size + kv_size].float()
            if attn.k_norm is not None:
                k = attn.k_norm(k.reshape(-1, attn.num_kv_heads, hd).to(output.dtype)).float()
            k = k.reshape(-1, hd)
            pair_norm = (k[:, :hd // 2] ** 2 + k[:, hd // 2:] ** 2).sqrt()
            entry = kv.setdefault(name, [0.0, 0.0])
            entry[0] = max(entry[0], float(pair_norm.max()))
            entry[1] = max(entry[1], float(v.abs().max()))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, Linear) and name.startswith("layers."):
            handles.append(module.register_forward_pre_hook(linear_hook(name)))
        if name.endswith("self_attn") and hasattr(module, "qkv_proj"):
            handles.append(module.qkv_proj.register_forward_hook(kv_hook(name, module)))
    try:
        done = 0
        for _ in forward_windows(model, windows.windows, batch_size, logits=False):
            done = min(done + batch_size, windows.num_samples)
            seen["tokens"] = done * windows.seq_len
            if progress is not None:
                progress(done)
    finally:
        for h in handles:
            h.remove()
    return CalibrationStats(linears, {k: (v[0], v[1]) for k, v in kv.items()}, windows)
