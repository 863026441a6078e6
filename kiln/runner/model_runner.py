"""The model runner: SchedulerOutput in, flat tensors built, model run, sampled, ModelOutput out.

It decides nothing about which requests run; it only computes what it is given.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np
import torch

from kiln.batch import ModelOutput, SchedulerOutput, TokenLogprobs
from kiln.kernels.argmax import argmax
from kiln.layers.forward_context import AttentionMetadata, build_step_inputs
from kiln.runner import memory
from kiln.sample.metadata import GREEDY_TEMPERATURE_EPS, SamplingBatch, SamplingRow
from kiln.sample.sampler import Sampler, SamplerOutput


class ModelRunner:
    """Owns the model, the KV cache tensors and the sampler for one device."""

    def __init__(self, model: torch.nn.Module, num_kv_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, kv_cache_dtype: torch.dtype | None = None):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.num_kv_blocks = num_kv_blocks
        args = model.args
        self.vocab_size = args.vocab_size
        self.kv_caches = memory.allocate_kv_caches(args, num_kv_blocks, block_size,
                                                   kv_cache_dtype or dtype, device)
        self.sampler = Sampler()
        self.graphs = None
        self.prefill_graphs = None
        # The last launched step's sampled ids (on the device) and each request's row in them.
        self._last_tokens: torch.Tensor | None = None
        self._last_rows: dict[str, int] = {}
        # Past the last layer's attention, compute only the sampled rows (KILN_LAST_LAYER_ROWS=0:
        # every row, as before): skips o_proj and the MLP of the last layer for prompt tokens.
        self.sampled_rows_only = os.environ.get("KILN_LAST_LAYER_ROWS", "1") != "0"

    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int,
                              sizes: Sequence[int] | None = None, batch1_ring: bool = False) -> None:
        """Capture CUDA graphs for decode steps of up to max_num_seqs sequences (at the batch
        sizes ``sizes`` when given, else cuda_graphs.batch_buckets'); batch1_ring: the batch-1
        graph on the ring path (the engine's tuned choice, DecodeGraphs)."""
        from kiln.runner.cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(self.model, self.kv_caches, max_num_seqs, max_model_len,
                              self.block_size, self.device, sizes=sizes, batch1_ring=batch1_ring)
        graphs.capture()
        self.graphs = graphs

    def capture_prefill_graphs(self, max_num_batched_tokens: int,
                               sizes: Sequence[int] | None = None) -> None:
        """Capture piecewise CUDA graphs for steps with prompt tokens, per token-count bucket
        (kiln.runner.prefill_graphs)."""
        from kiln.runner.prefill_graphs import PrefillGraphs

        graphs = PrefillGraphs(self.model, self.kv_caches, max_num_batched_tokens,
                               self.block_size, self.device, sizes=sizes)
        graphs.capture()
        self.prefill_graphs = graphs

    def _placeholder_fill(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(flat input positions, previous-step sample rows) of the tokens still in flight.

        Those input tokens were sampled by the previous step and never came to the host; they are
        gathered on the device from that step's sampled ids.
        """
        rows = self._fill_rows(out)
        if rows is None:
            return None
        ends = np.cumsum([s.num_tokens for s in out.scheduled]) - 1
        taken = rows >= 0
        dev = self.device
        pos_t = torch.from_numpy(ends[taken].astype(np.int64)).to(dev, non_blocking=True)
        row_t = torch.from_numpy(rows[taken]).to(dev, non_blocking=True)
        return pos_t, self._last_tokens.index_select(0, row_t)

    def _fill_rows(self, out: SchedulerOutput) -> np.ndarray | None:
        """For each scheduled sequence, its row in the previous step's samples when its input
        token is still in flight, else -1; None when no token is."""
        if not any(s.last_token_in_flight for s in out.scheduled):
            return None
        rows = np.full(len(out.scheduled), -1, dtype=np.int64)
        for i, s in enumerate(out.scheduled):
            if s.last_token_in_flight:
                row = self._last_rows.get(s.request_id)
                if row is None:
                    raise RuntimeError(f"request {s.request_id} needs its previous sample, but "
                                       "the previous step did not sample it")
                rows[i] = row
        return rows

    def _decode_logits_from_graph(self, out: SchedulerOutput) -> torch.Tensor | None:
        """Logits of a decode-only step through a captured graph, or None when none fits."""
        if self.graphs is None or not out.is_decode_only:
            return None
        n = len(out.scheduled)
        bucket = self.graphs.bucket_for(n)
        if bucket is None:
            return None
        sched = out.scheduled
        if max(s.seq_len for s in sched) > self.graphs.max_model_len:
            return None
        fill_rows = self._fill_rows(out)
        if fill_rows is not None and not self._samples_in(self.graphs.last_tokens):
            # Sampled before these graphs existed (they were captured again): move them in.
            self._keep_samples(self._last_tokens)
            if not self._samples_in(self.graphs.last_tokens):
                return None
        bs = self.block_size
        pos = [s.start_pos for s in sched]
        width = max(len(s.block_table) for s in sched)
        tables = np.zeros((n, width), dtype=np.int32)
        for i, s in enumerate(sched):
            tables[i, :len(s.block_table)] = s.block_table
        ints = np.empty((4, n), dtype=np.int64)
        ints[0] = [s.token_ids[0] for s in sched]
        ints[1] = pos
        ints[2] = [s.block_table[p // bs] * bs + p % bs for s, p in zip(sched, pos)]
        ints[3] = ints[1] + 1
        logits = self.graphs.run(bucket, ints, tables, fill_rows)
        if not all(s.sample for s in sched):
            keep = [i for i, s in enumerate(sched) if s.sample]
            logits = logits[torch.tensor(keep, device=logits.device)]
        return logits

    def _prepare(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata,
                                                        torch.Tensor]:
        """Flat input ids, positions, attention metadata and the rows whose logits are sampled."""
        sched = out.scheduled
        lens = np.fromiter((s.num_tokens for s in sched), dtype=np.int64, count=len(sched))
        ids = np.fromiter(itertools.chain.from_iterable(s.token_ids for s in sched),
                          dtype=np.int64, count=int(lens.sum()))
        rows = (np.cumsum(lens) - 1)[[i for i, s in enumerate(sched) if s.sample]]
        meta, positions, (ids_t, rows_t) = build_step_inputs(
            [(s.start_pos, s.num_tokens, s.block_table) for s in sched], self.block_size,
            self.device, extra=(ids, rows))
        return ids_t, positions, meta, rows_t

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput) -> "StepResult":
        """Queue one step on the device and return at once; ``result()`` waits for its samples.

        Sampled ids stay on the device for the next step's inputs and are copied to the host
        without blocking, so the host can schedule the next step while this one runs.
        """
        sampling = [s for s in out.scheduled if s.sample]
        if out.is_empty:
            return StepResult.empty()
        logits = self._decode_logits_from_graph(out)
        if logits is None:
            fill = self._placeholder_fill(out)
            ids, positions, meta, rows = self._prepare(out)
            if fill is not None:
                ids.index_copy_(0, fill[0], fill[1])
            # Past the last layer's attention only the sampled rows are computed.
            selected = rows if self.sampled_rows_only and rows.shape[0] < ids.shape[0] else None
            hidden = None
            if self.prefill_graphs is not None:
                hidden = self.prefill_graphs.forward(ids, positions, meta, selected)
            if hidden is None:
                hidden = self.model(ids, positions, self.kv_caches, meta, selected)
            if not sampling:
                return StepResult.empty()
            logits = self.model.compute_logits(hidden if hidden.shape[0] == rows.shape[0]
                                               else hidden.index_select(0, rows))
        if not sampling:
            return StepResult.empty()
        if all(_is_plain_greedy(s.sampling_params) for s in sampling):
            result = SamplerOutput(token_ids=argmax(logits, out=self._sample_rows(len(sampling))))
        else:
            batch = SamplingBatch.build(
                [SamplingRow(params=s.sampling_params, seed=s.seed, output_index=s.output_index,
                             prompt_token_ids=s.prompt_token_ids,
                             output_token_ids=s.output_token_ids)
                 for s in sampling],
                self.vocab_size, self.device)
            result = self.sampler(logits, batch)
        self._keep_samples(result.token_ids)
        self._last_rows = {s.request_id: i for i, s in enumerate(sampling)}
        return StepResult.start(sampling, result, self.device)

    def _sample_rows(self, k: int) -> torch.Tensor | None:
        """Where the graphs read the previous step's samples (their first k rows), for the
        argmax to write into; None without graphs or where k rows do not fit."""
        if self.graphs is None or k > self.graphs.last_tokens.shape[0]:
            return None
        return self.graphs.last_tokens[:k]

    def _samples_in(self, buf: torch.Tensor) -> bool:
        """Whether the last samples are the first rows of buf (same storage)."""
        t = self._last_tokens
        return t is not None and t.device == buf.device and t.data_ptr() == buf.data_ptr()

    def _keep_samples(self, token_ids: torch.Tensor) -> None:
        """Remember a step's sampled ids, in the graphs' last_tokens when they fit (the next
        step's replay reads its in-flight input ids there)."""
        self._last_tokens = token_ids
        rows = self._sample_rows(token_ids.shape[0])
        if rows is not None and not self._samples_in(rows):
            rows.copy_(token_ids)
            self._last_tokens = rows

    def execute(self, out: SchedulerOutput) -> ModelOutput:
        """Run one step and wait for it: ``launch(out).result()``."""
        return self.launch(out).result()


def _is_plain_greedy(params) -> bool:
    """Greedy with nothing that changes the logits or asks for more than the argmax."""
    return (params.temperature < GREEDY_TEMPERATURE_EPS and params.logprobs is None
            and not params.has_penalties)


class StepResult:
    """A launched step's samples on their way to the host (device-to-host copies in flight)."""

    def __init__(self, sampling: list, tensors: dict[str, torch.Tensor], event):
        self._sampling = sampling
        self._tensors = tensors
        self._event = event

    @classmethod
    def empty(cls) -> "StepResult":
        """A step that sampled nothing."""
        return cls([], {}, None)

    @classmethod
    def start(cls, sampling: list, result: SamplerOutput, device: torch.device) -> "StepResult":
        """Begin copying a sampler's outputs to (pinned) host memory."""
        wanted = {"token_ids": result.token_ids}
        if result.logprobs is not None:
            wanted.update(logprobs=result.logprobs, logprob_token_ids=result.logprob_token_ids,
                          sampled_ranks=result.sampled_ranks)
        if device.type != "cuda":
            return cls(sampling, wanted, None)
        host = {}
        for name, t in wanted.items():
            host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host[name].copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(sampling, host, event)

    def result(self) -> ModelOutput:
        """Wait for the copies and build the ModelOutput."""
        if not self._sampling:
            return ModelOutput()
        if self._event is not None:
            self._event.synchronize()
        t = self._tensors
        token_ids = t["token_ids"].tolist()
        logprobs = None
        if "logprobs" in t:
            lp = t["logprobs"].tolist()
            lp_ids = t["logprob_token_ids"].tolist()
            ranks = t["sampled_ranks"].tolist()
            logprobs = []
            for i, s in enumerate(self._sampling):
                k = s.sampling_params.logprobs
                if k is None:
                    logprobs.append(None)
                    continue
                logprobs.append(TokenLogprobs(sampled_logprob=lp[i][0], sampled_rank=ranks[i],
                                              top_token_ids=lp_ids[i][1:1 + k],
                                              top_logprobs=lp[i][1:1 + k]))
        return ModelOutput(request_ids=[s.request_id for s in self._sampling],
                           sampled_token_ids=token_ids, logprobs=logprobs)
