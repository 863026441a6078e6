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
        ids, positions, meta, rows = self._prepare(out)
        hidden = self.model(ids, positions, self.kv_caches, meta)
        sampling = [s for s in out.scheduled if s.sample]
        if not sampling:
            return ModelOutput()
        logits = self.model.compute_logits(hidden.index_select(0, rows))
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
