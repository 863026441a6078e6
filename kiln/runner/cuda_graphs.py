"""CUDA graphs for decode steps: the model forward plus logits, captured per batch-size bucket.

A decode step at small batch is a few hundred short kernels; launched one by one from Python, the
launch gaps cost more than the kernels. Replaying a captured graph removes them. Inputs live in
static buffers that the captured kernels read; each step copies the real values in and pads the
rest of the bucket with rows that write nowhere (slot -1) and read one cached token.

Between two replays the stream runs whatever the host queued for the next step's inputs, one
operation after another, while the GPU's SMs idle. By default (KILN_GRAPH_STAGED_INPUTS=1) a
step's per-sequence values go in one host-to-device copy of a pinned staging buffer, and the
graph's first kernel spreads them into the model's buffers (kiln.kernels.step_inputs), taking
in-flight input ids from the previous step's samples (`last_tokens`, where the runner keeps
them); the block tables are copied only when they change. With 0, the values go in as before:
a copy and a kernel per buffer, and the in-flight ids gathered by two more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from kiln.kernels import PDL_MAX_BATCH, batch1_ring_scope, pdl_scope
from kiln.kernels.step_inputs import PAD_ROW, STAGED_FIELDS, scatter_step_inputs
from kiln.layers.forward_context import AttentionMetadata

logger = logging.getLogger("kiln")


def batch_buckets(max_num_seqs: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Captured batch sizes.

    Default: 1, 2, 4, 8, then every 16 up to max_num_seqs (always included). Coarser buckets at
    large batches were measured and not kept: the step's GEMMs took 4.6% longer on average
    padded to multiples of 128 rows than to multiples of 16 (bf16; 3.6% shorter for fp8), and
    the 1000-request run was no faster (benchmarks/kernels/gemm_rows_h200.json).
    With ``sizes``, those of them up to max_num_seqs (like vLLM's cuda_graph_sizes; larger
    batches run without a graph).
    """
    if sizes is not None:
        picked = sorted({int(b) for b in sizes if 1 <= int(b) <= max_num_seqs})
        if not picked:
            raise ValueError(f"no CUDA graph size in {list(sizes)} is within max_num_seqs "
                             f"{max_num_seqs}")
        return picked
    out = [b for b in (1, 2, 4, 8) if b < max_num_seqs]
    out += list(range(16, max_num_seqs, 16))
    out.append(max_num_seqs)
    return sorted(set(out))


def smallest_bucket(buckets: Sequence[int], n: int) -> int | None:
    """The first of the sorted ``buckets`` that is at least n, or None."""
    return next((b for b in buckets if b >= n), None)


def logits_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the decode graphs' logits: the lm_head's matmul dtype."""
    return model.lm_head.dtype


class DecodeGraphs:
    """Captured decode forwards, one per bucket, sharing one memory pool and one set of inputs.

    The attention kernels' launch grids depend on max_seq_len; graphs fix it to max_model_len and
    the kernels skip the parts of the context that a sequence does not have. batch1_ring: the
    batch-1 graph is captured inside kiln.kernels.batch1_ring_scope (the engine's tuned choice).
    """

    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], max_num_seqs: int,
                 max_model_len: int, block_size: int, device: torch.device,
                 sizes: Sequence[int] | None = None, batch1_ring: bool = False):
        self.model = model
        self.batch1_ring = batch1_ring
        self.kv_caches = kv_caches
        self.max_model_len = max_model_len
        self.buckets = batch_buckets(max_num_seqs, sizes)
        self.max_batch = self.buckets[-1]
        n = self.max_batch
        self.max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, self.max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        # The previous step's sampled ids, whatever its kind (the runner writes them here), so
        # that a replay can read its in-flight input ids; as many rows as a step may sample.
        self.last_tokens = torch.zeros(max(max_num_seqs, n), dtype=torch.int64, device=device)
        self.staged_inputs = staged_inputs_enabled()
        # The staged rows (step_inputs), padding until a step writes them; two pinned host
        # buffers, used in turn: the host may fill the next step's while the copy of this one is
        # still queued behind the running step.
        self.staged = torch.tensor(PAD_ROW, dtype=torch.int64, device=device).repeat(n, 1)
        pin = device.type == "cuda"
        self._host_staged = [torch.empty(n, STAGED_FIELDS, dtype=torch.int64, pin_memory=pin)
                             for _ in range(2)]
        self._host_copied = [None, None]  # CUDA events: each buffer's last copy has been done
        self._turn = 0
        # What the device's block_tables hold (as last copied), to copy only changes.
        self._tables_sent = np.zeros((n, self.max_blocks), dtype=np.int32)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # One logits buffer for every bucket (a graph's outputs stay allocated for its replays:
        # one output per bucket would hold sum(buckets) rows of vocabulary-wide logits, 12 GB for
        # 8B Llama 3 at 1024 sequences). Only one step's logits are live at a time: the sampler
        # reads them on the stream before the next replay writes. They stay in the model dtype:
        # greedy steps take the argmax as they are, the sampler converts (logits_dtype below).
        self.logits = torch.empty(n, model.args.vocab_size, dtype=logits_dtype(model),
                                  device=device)

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:b], query_start_loc=self.query_start_loc[:b + 1],
            seq_lens=self.seq_lens[:b], block_tables=self.block_tables[:b],
            query_lens_cpu=[1] * b, seq_lens_cpu=[self.max_model_len] * b,
            max_query_len=1, max_seq_len=self.max_model_len)

    def _forward(self, b: int) -> torch.Tensor:
        if self.staged_inputs:
            scatter_step_inputs(self.staged[:b], self.last_tokens, self.input_ids[:b],
                                self.positions[:b], self.slot_mapping[:b], self.seq_lens[:b])
        hidden = self.model(self.input_ids[:b], self.positions[:b], self.kv_caches, self._meta(b))
        return self.model.compute_logits(hidden, out=self.logits[:b])

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller ones reuse its memory pool."""
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for b in reversed(self.buckets):
                # Small batches, where launch latency weighs most, run with programmatic
                # dependent launch (KILN_PDL=auto; kiln.kernels.pdl_enabled).
                with pdl_scope(b <= PDL_MAX_BATCH), batch1_ring_scope(self.batch1_ring and b == 1):
                    for _ in range(2):  # compile and autotune outside the capture
                        self._forward(b)
                    torch.cuda.synchronize()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=stream):
                        self._forward(b)
                pool = graph.pool()
                self.graphs[b] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.buckets)

    def bucket_for(self, num_seqs: int) -> int | None:
        """Smallest captured batch size that holds num_seqs, or None."""
        return smallest_bucket(self.buckets, num_seqs)

    def run(self, bucket: int, ints: np.ndarray, block_tables: np.ndarray,
            fill_rows: np.ndarray | None = None) -> torch.Tensor:
        """Copy one step's inputs in, replay, return logits [n, V].

        ``ints`` is a host int64 [4, n] of input ids, positions, slots and sequence lengths (n <=
        bucket); ``block_tables`` a host int32 [n, width]. ``fill_rows`` (host int64 [n], or None)
        names for each sequence the row of ``last_tokens`` holding its input id (sampled by the
        previous step, not seen by the host), -1 where ``ints`` has it.
        """
        if self.staged_inputs:
            self._stage_inputs(ints, block_tables, fill_rows, bucket)
        else:
            self._copy_inputs(ints, block_tables, fill_rows, bucket)
        self._replay(bucket)
        return self.logits[:ints.shape[1]]

    def _replay(self, bucket: int) -> None:
        self.graphs[bucket].replay()

    @torch.inference_mode()
    def _stage_inputs(self, ints: np.ndarray, block_tables: np.ndarray,
                      fill_rows: np.ndarray | None, bucket: int) -> None:
        """The staged rows of the bucket in one copy; the block tables only where changed."""
        n = ints.shape[1]
        turn = self._turn
        self._turn ^= 1
        if self._host_copied[turn] is not None:
            self._host_copied[turn].synchronize()  # done long ago in practice: two steps back
        host = self._host_staged[turn]
        rows = host.numpy()
        rows[:n, :4] = ints.T
        rows[:n, 4] = -1 if fill_rows is None else fill_rows
        rows[n:bucket] = PAD_ROW
        self.staged[:bucket].copy_(host[:bucket], non_blocking=True)
        if self.staged.is_cuda:
            event = self._host_copied[turn] or torch.cuda.Event()
            event.record()
            self._host_copied[turn] = event
        self._send_tables(block_tables)

    def _send_tables(self, block_tables: np.ndarray) -> None:
        """Copy rows [:n, :width] of the block tables unless the device holds them already
        (entries past a row's blocks are never read)."""
        n, width = block_tables.shape
        if np.array_equal(self._tables_sent[:n, :width], block_tables):
            return
        self._tables_sent[:n, :width] = block_tables
        src = torch.from_numpy(block_tables)
        if self.block_tables.is_cuda:
            src = src.pin_memory()
        self.block_tables[:n, :width].copy_(src, non_blocking=True)

    @torch.inference_mode()
    def _copy_inputs(self, ints: np.ndarray, block_tables: np.ndarray,
                     fill_rows: np.ndarray | None, bucket: int) -> None:
        """KILN_GRAPH_STAGED_INPUTS=0: a copy per buffer, in-flight ids gathered, padding."""
        n = ints.shape[1]
        dev = self.input_ids.device
        ints, tables = torch.from_numpy(ints), torch.from_numpy(block_tables)
        if dev.type == "cuda":
            ints, tables = ints.pin_memory(), tables.pin_memory()
        ints_dev = ints.to(dev, non_blocking=True)
        self.input_ids[:n].copy_(ints_dev[0])
        self.positions[:n].copy_(ints_dev[1])
        self.slot_mapping[:n].copy_(ints_dev[2])
        self.seq_lens[:n].copy_(ints_dev[3])
        self.block_tables[:n, :tables.shape[1]].copy_(tables, non_blocking=True)
        self._tables_sent[:n, :tables.shape[1]] = block_tables
        if fill_rows is not None and (fill_rows >= 0).any():
            where = np.flatnonzero(fill_rows >= 0)
            pos_t = torch.from_numpy(where).to(dev, non_blocking=True)
            row_t = torch.from_numpy(fill_rows[where]).to(dev, non_blocking=True)
            self.input_ids.index_copy_(0, pos_t, self.last_tokens.index_select(0, row_t))
        if n < bucket:
            self.slot_mapping[n:bucket].fill_(-1)
            self.seq_lens[n:bucket].fill_(1)


def staged_inputs_enabled() -> bool:
    """KILN_GRAPH_STAGED_INPUTS (default 1): a decode replay's per-sequence inputs in one staged
    copy and the graph's first kernel (see the module docstring); 0: a copy per buffer."""
    return os.environ.get("KILN_GRAPH_STAGED_INPUTS", "1") != "0"
