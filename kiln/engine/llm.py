"""The offline API: ``LLM(model).generate(prompts, sampling_params)``, in vLLM's shape."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from kiln.engine.llm_engine import LLMEngine
from kiln.request import RequestOutput
from kiln.sampling_params import RequestOutputKind, SamplingParams

PromptType = str | list[int] | dict


class LLM:
    """Generate text for batches of prompts with in-flight batching.

    ``model`` is a Hugging Face checkpoint directory (or a kiln engine directory); None means the
    demo model shipped with kiln. Keyword arguments are the engine's: dtype, max_num_seqs,
    max_num_batched_tokens, block_size, num_kv_blocks, enable_prefix_caching, seed, max_model_len,
    gpu_memory_utilization, scheduling_policy, device, enforce_eager, cuda_graph_sizes,
    prefill_graph_sizes.
    """

    def __init__(self, model: str | None = None, **engine_kwargs):
        self.engine = LLMEngine.from_args(model, **engine_kwargs)
        self._ids = itertools.count()

    def get_tokenizer(self):
        """The tokenizer the engine uses."""
        return self.engine.tokenizer

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Run all prompts to completion together; outputs come back in the prompts' order."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                  and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(params_list)} sampling_params for {len(prompts)} prompts")
        # Only final outputs are returned, so the engine need not build any before.
        params_list = [dataclasses.replace(p, output_kind=RequestOutputKind.FINAL_ONLY)
                       for p in params_list]
        order = []
        try:
            for prompt, params in zip(prompts, params_list):
                rid = str(next(self._ids))
                self.engine.add_request(rid, prompt, params)
                order.append(rid)
        except Exception:
            self.engine.abort_request(order)
            raise
        return self._run(order, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             add_generation_prompt: bool = True, use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tok = self.engine.tokenizer
        prompts = [{"prompt_token_ids": list(tok.apply_chat_template(
                        conv, add_generation_prompt=add_generation_prompt, tokenize=True,
                        return_dict=False))}
                   for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, order: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(order), desc="requests", unit="req")
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    results[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [results[rid] for rid in order]

    def stats(self) -> dict:
        """KV cache and prefix-cache counters: num_total_kv_blocks, num_free_kv_blocks,
        num_preemptions, prefix_cache_queries, prefix_cache_hits (tokens), ..."""
        return self.engine.stats()
