"""POST /v1/completions: prompts (text or token ids) in, text completions out (whole or streamed)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from kiln.engine.async_engine import AsyncEngine, RequestStream
from kiln.errors import InvalidRequestError
from kiln.request import CompletionOutput, RequestOutput
from kiln.server.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest,
                                  CompletionResponse, UsageInfo)
from kiln.server.serving_common import (DeltaTracker, SSEResponse, check_model, check_prompt_ids,
                                        collect_final, logprob_token_text, merge_streams, new_id,
                                        ranked, sampling_params, sse_body, sse_event, submit_all,
                                        unless_disconnected)


def prompt_token_lists(tokenizer: Any, prompt: str | list) -> tuple[list[list[int]], list[str | None]]:
    """Normalise the four prompt shapes to token-id lists (and the texts where given)."""
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    ids_list, texts = [], []
    for item in items:
        if isinstance(item, str):
            ids = tokenizer.encode(item, add_special_tokens=True)
            texts.append(item)
        else:
            ids = list(item)
            texts.append(None)
        check_prompt_ids(ids)
        ids_list.append(ids)
    return ids_list, texts


class LogprobsBuilder:
    """Turns a sequence's cumulative engine logprobs into OpenAI's legacy completions format."""

    def __init__(self, tokenizer: Any, num_top: int, text_offset: int = 0):
        self.tokenizer = tokenizer
        self.num_top = num_top
        self.offset = text_offset

    def build(self, comp: CompletionOutput, start: int) -> CompletionLogprobs:
        """Entries for tokens ``start ..`` of ``comp`` (all of them when start is 0)."""
        out = CompletionLogprobs()
        for tid, entry in zip(comp.token_ids[start:], (comp.logprobs or [])[start:]):
            sampled = entry.get(tid)
            text = logprob_token_text(self.tokenizer, tid, sampled) if sampled else \
                self.tokenizer.decode([tid])
            out.tokens.append(text)
            out.token_logprobs.append(sampled.logprob if sampled else None)
            top = {logprob_token_text(self.tokenizer, t, lp): lp.logprob
                   for t, lp in ranked(entry)[:self.num_top]}
            if sampled is not None:
                top.setdefault(text, sampled.logprob)
            out.top_logprobs.append(top)
            out.text_offset.append(self.offset)
            self.offset += len(text)
        return out


async def create_completion(engine: AsyncEngine, req: CompletionRequest, request: Request) -> Any:
    """Handle one /v1/completions call."""
    check_model(req.model, engine.model_name)
    if req.echo and req.max_tokens is None:
        raise InvalidRequestError("echo needs max_tokens", param="echo")
    ids_list, texts = prompt_token_lists(engine.tokenizer, req.prompt)
    params = sampling_params(req, req.max_tokens, req.logprobs)
    request_id = new_id("cmpl")
    streams = await submit_all(engine, ids_list, params, request_id)
    echo_texts = [(t if t is not None else engine.tokenizer.decode(ids)) if req.echo else ""
                  for ids, t in zip(ids_list, texts)]
    if req.stream:
        gen = _stream(engine, req, streams, request_id, echo_texts)
        return SSEResponse(gen)
    return await unless_disconnected(request, _full(engine, req, streams, request_id, echo_texts))


async def _full(engine: AsyncEngine, req: CompletionRequest, streams: list[RequestStream],
                request_id: str, echo_texts: list[str]) -> CompletionResponse:
    finals = await collect_final(streams)
    choices = []
    for p, out in enumerate(finals):
        for comp in out.outputs:
            logprobs = None
            if req.logprobs is not None:
                logprobs = LogprobsBuilder(engine.tokenizer, req.logprobs,
                                           len(echo_texts[p])).build(comp, 0)
            choices.append(CompletionChoice(index=p * req.n + comp.index,
                                            text=echo_texts[p] + comp.text, logprobs=logprobs,
                                            finish_reason=comp.finish_reason))
    return CompletionResponse(id=request_id, model=engine.model_name, choices=choices,
                              usage=usage_of(finals))


def usage_of(finals: list[RequestOutput]) -> UsageInfo:
    """Token counts over all prompts and their choices."""
    prompt = sum(len(o.prompt_token_ids) for o in finals)
    completion = sum(len(c.token_ids) for o in finals for c in o.outputs)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)


def _stream(engine: AsyncEngine, req: CompletionRequest, streams: list[RequestStream],
            request_id: str, echo_texts: list[str]) -> AsyncIterator[str]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    exclude = None if include_usage else {"usage"}
    created = int(time.time())
    sent = DeltaTracker()
    builders: dict[int, LogprobsBuilder] = {}
    finals: list[RequestOutput | None] = [None] * len(streams)

    def chunk(choices: list[CompletionChoice]) -> str:
        resp = CompletionResponse(id=request_id, created=created, model=engine.model_name,
                                  choices=choices)
        return sse_event(resp, exclude)

    async def events() -> AsyncIterator[str]:
        for p, echo in enumerate(echo_texts):
            if echo:
                for i in range(req.n):
                    yield chunk([CompletionChoice(index=p * req.n + i, text=echo)])
        async for p, out in merge_streams(streams):
            finals[p] = out
            choices = []
            for comp in out.outputs:
                idx = p * req.n + comp.index
                part = sent.new_part(idx, comp)
                if part is None:
                    continue
                delta, tok_start = part
                logprobs = None
                if req.logprobs is not None:
                    builder = builders.setdefault(idx, LogprobsBuilder(
                        engine.tokenizer, req.logprobs, len(echo_texts[p])))
                    logprobs = builder.build(comp, tok_start)
                choices.append(CompletionChoice(index=idx, text=delta, logprobs=logprobs,
                                                finish_reason=comp.finish_reason))
            if choices:
                yield chunk(choices)
        if include_usage:
            resp = CompletionResponse(id=request_id, created=created, model=engine.model_name,
                                      choices=[], usage=usage_of([f for f in finals if f]))
            yield sse_event(resp)

    return sse_body(events(), streams)
