"""CUDA graphs for steps with prompt tokens, captured in pieces around the attention.

Such a step runs eagerly otherwise: about 330 kernels for an 8B Llama, each launched from Python.
For a short prompt the host's launches take 20-60 ms against about 5 ms of GPU work
(benchmarks/profile/README.md, "Short-prompt TTFT"). In a layer only the attention depends on how
the step's tokens form sequences (their lengths, cached contexts, block tables); everything else
works row by row. So for each token-count bucket, the stretch between two attentions (layer
i-1's o_proj, norm and MLP, then layer i's norm, qkv_proj, RoPE and cache write) is captured as
one graph. A step copies its tokens into static buffers, then replays the graphs with the
attentions run eagerly in between, on the step's own metadata. Rows past the step's tokens are
padding: they write no cache slot (-1), and as everything outside the attention is row by row,
their values reach no real row. Past the last attention, the last layer runs eagerly, on the
sampled rows only (as the eager forward does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kiln.errors import KilnError
from kiln.layers.forward_context import AttentionMetadata, build_attention_metadata
from kiln.runner.cuda_graphs import smallest_bucket

logger = logging.getLogger("kiln")

# Token counts captured by default (those within max_num_batched_tokens): steps of 1.5x apart,
# so padding adds at most half the rows, and up to 512, past which the step's GPU work is long
# enough to hide the eager launches (vLLM's default largest capture is 512 too).
DEFAULT_PREFILL_SIZES = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def prefill_buckets(max_num_batched_tokens: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Captured token counts: those of ``sizes`` within max_num_batched_tokens when given (a
    step has no more tokens), else DEFAULT_PREFILL_SIZES up to that limit, plus the limit
    rounded up to 16 when it is below the largest of them."""
    if sizes is not None:
        picked = sorted({int(n) for n in sizes if 1 <= int(n) <= max_num_batched_tokens})
        if not picked:
            raise KilnError(f"no prefill graph size in {list(sizes)} is within "
                            f"max_num_batched_tokens {max_num_batched_tokens}")
        return picked
    cap = max_num_batched_tokens
    out = [n for n in DEFAULT_PREFILL_SIZES if n <= cap]
    if cap < DEFAULT_PREFILL_SIZES[-1]:
        out.append(-(-cap // 16) * 16)
    return sorted(set(out))


def prefill_graphs_enabled() -> bool:
    """KILN_PREFILL_GRAPHS (default 1): 0 runs steps with prompt tokens eagerly, as before."""
    return os.environ.get("KILN_PREFILL_GRAPHS", "1") != "0"


@dataclass
class _Pieces:
    """A bucket's graphs (graph i ends at layer i's cache write) and what runs between them."""

    graphs: list[torch.cuda.CUDAGraph]
    fresh: list[bool]  # whether layer i's graph left the fresh keys and values in k and v
    residual: torch.Tensor  # the residual stream before the last layer's o_proj


class PrefillGraphs:
    """Piecewise graphs of the model's forward for steps of up to ``buckets[-1]`` tokens.

    ``forward`` takes what LlamaFamilyModel.forward takes and returns the same hidden rows, or
    None when the step has more tokens than the largest bucket (the caller runs it eagerly).
    Every bucket and every layer share one set of static buffers at the attention: the rotated
    queries ``q``, the fresh keys and values ``k`` and ``v`` (where a layer may read them) and
    the output ``out``; each is written and read before the next layer's graph writes it again,
    in stream order. ``capture=False`` runs the same pieces without capturing them (the CPU
    tests' way of checking the split).
    """

    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor],
                 max_num_batched_tokens: int, block_size: int, device: torch.device,
                 sizes: Sequence[int] | None = None, capture: bool = True):
        from kiln.kernels.attention import fresh_kv_possible
        from kiln.kernels.attention_ref import is_fp8_kv_cache

        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.buckets = prefill_buckets(max_num_batched_tokens, sizes)
        self.use_graphs = capture
        n = self.buckets[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        args = model.args
        dtype = model.embed_tokens.weight.dtype
        self.q = torch.zeros(n, args.num_attention_heads, args.head_dim, dtype=dtype, device=device)
        # Zeros: rows past a step's tokens hold finite values from the start.
        self.out = torch.zeros_like(self.q)
        self.k = self.v = None
        if any(fresh_kv_possible(self.q, cache, layer.self_attn.sliding_window)
               for layer, cache in zip(model.layers, kv_caches)):
            kv_dtype = torch.float16 if is_fp8_kv_cache(kv_caches[0]) else dtype
            self.k = torch.zeros(n, args.num_key_value_heads, args.head_dim, dtype=kv_dtype,
                                 device=device)
            self.v = torch.zeros_like(self.k)
        self._pieces: dict[int, _Pieces] = {}
        self.pool_bytes = 0

    def bucket_for(self, num_tokens: int) -> int | None:
        """Smallest captured token count that holds num_tokens, or None."""
        return smallest_bucket(self.buckets, num_tokens)

    def _parts(self, t: int):
        """The forward of a t-token bucket in its captured parts: a generator that runs one part
        per step and yields after each layer's cache write (whether the layer's fresh keys and
        values are in k and v, the residual)."""
        model = self.model
        positions, slots = self.positions[:t], self.slot_mapping[:t]
        k = None if self.k is None else self.k[:t]
        v = None if self.v is None else self.v[:t]
        hidden = model.embed_tokens(self.input_ids[:t])
        residual = None
        for i, (layer, cache) in enumerate(zip(model.layers, self.kv_caches, strict=True)):
            if i > 0:
                hidden, residual = model.layers[i - 1].after_attention(self.out[:t], residual)
            fresh, residual = layer.before_attention(positions, hidden, residual, cache, slots,
                                                     self.q[:t], k, v)
            yield fresh, residual

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, into one memory pool (a step replays one bucket
        at a time, so their intermediates may share memory)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        pool = torch.cuda.graph_pool_handle()
        before = torch.cuda.memory_reserved(self.device)
        with torch.cuda.stream(stream):
            for t in reversed(self.buckets):
                meta = self._dummy_meta(t)
                for _ in range(2):  # compile and autotune outside the capture
                    self._run_parts(t, meta, t)
                torch.cuda.synchronize(self.device)
                self._pieces[t] = self._capture_bucket(t, pool)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self.pool_bytes = torch.cuda.memory_reserved(self.device) - before
        logger.info("captured prefill CUDA graphs (in pieces around the attention) for %s tokens",
                    self.buckets)

    def _capture_bucket(self, t: int, pool) -> _Pieces:
        graphs, fresh, residual = [], [], None
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=pool)
        layers = len(self.model.layers)
        for layer_fresh, residual in self._parts(t):
            graph.capture_end()
            graphs.append(graph)
            fresh.append(layer_fresh)
            if len(graphs) < layers:
                graph = torch.cuda.CUDAGraph()
                graph.capture_begin(pool=pool)
        return _Pieces(graphs, fresh, residual)

    def _dummy_meta(self, t: int) -> AttentionMetadata:
        """One fresh prompt of t tokens over block 0 (capture only: nothing is written)."""
        blocks = -(-t // self.block_size)
        return build_attention_metadata([(0, t, [0] * blocks)], self.block_size, self.device)

    def _run_parts(self, t: int, meta: AttentionMetadata, n: int) -> torch.Tensor:
        """A t-token bucket's parts run eagerly, each layer's attention on meta's n tokens
        between them; returns the last residual."""
        residual = None
        for i, (fresh, residual) in enumerate(self._parts(t)):
            self._attend(i, fresh, meta, n)
        return residual

    def _attend(self, i: int, fresh: bool, meta: AttentionMetadata, n: int) -> None:
        """Layer i's attention of the step's n tokens, from q (and k and v) into out."""
        self.model.layers[i].self_attn.attend(
            self.q[:n], self.kv_caches[i], meta, (self.k[:n], self.v[:n]) if fresh else None,
            self.out[:n])

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """The model's forward of this step through the bucket that holds it (the hidden rows
        LlamaFamilyModel.forward returns for the same arguments), or None when none does."""
        n = input_ids.shape[0]
        bucket = self.bucket_for(n)
        if bucket is None or n == 0:
            return None
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        if n < bucket:
            self.slot_mapping[n:bucket].fill_(-1)
        if self.use_graphs:
            pieces = self._pieces[bucket]
            for i, (graph, fresh) in enumerate(zip(pieces.graphs, pieces.fresh)):
                graph.replay()
                self._attend(i, fresh, meta, n)
            residual = pieces.residual
        else:
            residual = self._run_parts(bucket, meta, n)
        hidden, residual = self.model.layers[-1].after_attention(self.out[:n], residual[:n], rows)
        return self.model.final_norm(hidden, residual)
