"""The model runner: SchedulerOutput in, flat tensors built, model run, sampled, ModelOutput out.

It decides nothing about which requests run; it only computes what it is given.
"""

from __future__ import annotations

import torch

from kiln.batch import ModelOutput, SchedulerOutput, TokenLogprobs
from kiln.layers.forward_context import AttentionMetadata, build_attention_metadata
from kiln.sample.metadata import SamplingBatch, SamplingRow
from kiln.sample.sampler import Sampler


class ModelRunner:
    """Owns the model, the KV cache tensors and the sampler for one device."""

    def __init__(self, model: torch.nn.Module, num_kv_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.num_kv_blocks = num_kv_blocks
        args = model.args
        self.vocab_size = args.vocab_size
        self.kv_caches = [
            torch.zeros(2, num_kv_blocks, block_size, args.num_key_value_heads, args.head_dim,
                        dtype=dtype, device=device)
            for _ in range(args.num_hidden_layers)
        ]
        self.sampler = Sampler()
        self.graphs = None

    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        """Capture CUDA graphs for decode steps of up to max_num_seqs sequences."""
        from kiln.runner.cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(self.model, self.kv_caches, max_num_seqs, max_model_len,
                              self.block_size, self.device)
        graphs.capture()
        self.graphs = graphs

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
        bs = self.block_size
        ids = torch.tensor([s.token_ids[0] for s in sched], dtype=torch.int64)
        pos = [s.start_pos for s in sched]
        slots = torch.tensor([s.block_table[p // bs] * bs + p % bs for s, p in zip(sched, pos)],
                             dtype=torch.int64)
        width = max(len(s.block_table) for s in sched)
        tables = torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in sched],
                              dtype=torch.int32)
        seq_lens = torch.tensor([p + 1 for p in pos], dtype=torch.int32)
        logits = self.graphs.run(bucket, ids, torch.tensor(pos, dtype=torch.int64), slots, seq_lens,
                                 tables)
        if not all(s.sample for s in sched):
            keep = [i for i, s in enumerate(sched) if s.sample]
            logits = logits[torch.tensor(keep, device=logits.device)]
        return logits

    def _prepare(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata,
                                                        torch.Tensor]:
        """Flat input ids, positions, attention metadata and the rows whose logits are sampled."""
        input_ids: list[int] = []
        positions: list[int] = []
        logits_rows: list[int] = []
        for s in out.scheduled:
            input_ids.extend(s.token_ids)
            positions.extend(range(s.start_pos, s.start_pos + s.num_tokens))
            if s.sample:
                logits_rows.append(len(input_ids) - 1)
        meta = build_attention_metadata(
            [(s.start_pos, s.num_tokens, s.block_table) for s in out.scheduled], self.block_size,
            self.device)
        dev = self.device
        ids = torch.tensor(input_ids, dtype=torch.int64).to(dev, non_blocking=True)
        pos_t = torch.tensor(positions, dtype=torch.int64).to(dev, non_blocking=True)
        rows = torch.tensor(logits_rows, dtype=torch.int64).to(dev, non_blocking=True)
        return ids, pos_t, meta, rows

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> ModelOutput:
        """Run one step and sample one token for each request whose ``sample`` flag is set."""
        if out.is_empty:
            return ModelOutput()
        sampling = [s for s in out.scheduled if s.sample]
        logits = self._decode_logits_from_graph(out)
        if logits is None:
            ids, positions, meta, rows = self._prepare(out)
            hidden = self.model(ids, positions, self.kv_caches, meta)
            if not sampling:
                return ModelOutput()
            logits = self.model.compute_logits(hidden.index_select(0, rows))
        if not sampling:
            return ModelOutput()
        batch = SamplingBatch.build(
            [SamplingRow(params=s.sampling_params, seed=s.seed, output_index=len(s.output_token_ids),
                         prompt_token_ids=s.prompt_token_ids, output_token_ids=s.output_token_ids)
             for s in sampling],
            self.vocab_size, self.device)
        result = self.sampler(logits, batch)
        token_ids = result.token_ids.tolist()
        logprobs = None
        if result.logprobs is not None:
            lp = result.logprobs.tolist()
            lp_ids = result.logprob_token_ids.tolist()
            ranks = result.sampled_ranks.tolist()
            logprobs = []
            for i, s in enumerate(sampling):
                k = s.sampling_params.logprobs
                if k is None:
                    logprobs.append(None)
                    continue
                logprobs.append(TokenLogprobs(sampled_logprob=lp[i][0], sampled_rank=ranks[i],
                                              top_token_ids=lp_ids[i][1:1 + k],
                                              top_logprobs=lp[i][1:1 + k]))
        return ModelOutput(request_ids=[s.request_id for s in sampling], sampled_token_ids=token_ids,
                           logprobs=logprobs)
