"""POST /v1/chat/completions: messages through the chat template, replies whole or streamed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from kiln.engine.async_engine import AsyncEngine, RequestStream
from kiln.errors import InvalidRequestError
from kiln.request import CompletionOutput, RequestOutput
from kiln.server.protocol import (ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                                  ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs,
                                  ChatMessage, ChatResponseMessage, DeltaMessage, TokenLogprob,
                                  TopLogprob)
from kiln.server.serving_common import (DeltaTracker, SSEResponse, check_model, check_prompt_ids,
                                        collect_final, logprob_token_text, merge_streams, new_id,
                                        ranked, sampling_params, sse_body, sse_event, submit_all,
                                        unless_disconnected)
from kiln.server.serving_completions import usage_of

# Used when the checkpoint's tokenizer carries no chat template (random test models, base models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the plain dicts chat templates expect (text parts joined)."""
    out = []
    for m in messages:
        if isinstance(m.content, list):
            content = "".join(part.text for part in m.content)
        else:
            content = m.content or ""
        d = {"role": m.role, "content": content}
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def chat_prompt_ids(tokenizer: Any, messages: list[ChatMessage], add_generation_prompt: bool) -> list[int]:
    """Render the chat template and tokenize it (the template writes any BOS itself)."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    try:
        text = tokenizer.apply_chat_template(message_dicts(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt,
                                             chat_template=template)
    except Exception as e:  # noqa: BLE001 - templates raise for role orders they refuse
        raise InvalidRequestError(f"the chat template refused these messages: {e}",
                                  param="messages") from e
    ids = tokenizer.encode(text, add_special_tokens=False)
    check_prompt_ids(ids, param="messages")
    return ids


def chat_logprobs(tokenizer: Any, comp: CompletionOutput, start: int, num_top: int) -> ChatLogprobs:
    """Chat-format logprobs for tokens ``start ..`` of one choice."""
    content = []
    for tid, entry in zip(comp.token_ids[start:], (comp.logprobs or [])[start:]):
        sampled = entry.get(tid)
        text = logprob_token_text(tokenizer, tid, sampled) if sampled else tokenizer.decode([tid])
        top = [TopLogprob(token=(t := logprob_token_text(tokenizer, i, lp)), logprob=lp.logprob,
                          bytes=list(t.encode("utf-8")))
               for i, lp in ranked(entry)[:num_top]]
        content.append(TokenLogprob(token=text, logprob=sampled.logprob if sampled else -9999.0,
                                    bytes=list(text.encode("utf-8")), top_logprobs=top))
    return ChatLogprobs(content=content)


async def create_chat_completion(engine: AsyncEngine, req: ChatCompletionRequest,
                                 request: Request) -> Any:
    """Handle one /v1/chat/completions call."""
    check_model(req.model, engine.model_name)
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs=true", param="top_logprobs")
    ids = chat_prompt_ids(engine.tokenizer, req.messages, req.add_generation_prompt)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    num_top = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling_params(req, max_tokens, num_top)
    request_id = new_id("chatcmpl")
    streams = await submit_all(engine, [ids], params, request_id)
    if req.stream:
        return SSEResponse(_stream(engine, req, streams, request_id, num_top))
    return await unless_disconnected(request, _full(engine, req, streams, request_id, num_top))


async def _full(engine: AsyncEngine, req: ChatCompletionRequest, streams: list[RequestStream],
                request_id: str, num_top: int | None) -> ChatCompletionResponse:
    finals = await collect_final(streams)
    out = finals[0]
    choices = [ChatChoice(index=c.index, message=ChatResponseMessage(content=c.text),
                          logprobs=(chat_logprobs(engine.tokenizer, c, 0, num_top)
                                    if num_top is not None else None),
                          finish_reason=c.finish_reason)
               for c in out.outputs]
    return ChatCompletionResponse(id=request_id, model=engine.model_name, choices=choices,
                                  usage=usage_of(finals))


def _stream(engine: AsyncEngine, req: ChatCompletionRequest, streams: list[RequestStream],
            request_id: str, num_top: int | None) -> AsyncIterator[str]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    exclude = None if include_usage else {"usage"}
    created = int(time.time())
    sent = DeltaTracker()

    def chunk(choices: list[ChatChunkChoice]) -> str:
        return sse_event(ChatCompletionChunk(id=request_id, created=created, model=engine.model_name,
                                             choices=choices), exclude)

    async def events() -> AsyncIterator[str]:
        final: RequestOutput | None = None
        # OpenAI opens every choice with the role and empty content.
        yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
                     for i in range(req.n)])
        async for _, out in merge_streams(streams):
            final = out
            choices = []
            for comp in out.outputs:
                part = sent.new_part(comp.index, comp)
                if part is None:
                    continue
                delta, tok_start = part
                logprobs = (chat_logprobs(engine.tokenizer, comp, tok_start, num_top)
                            if num_top is not None else None)
                choices.append(ChatChunkChoice(index=comp.index, delta=DeltaMessage(content=delta),
                                               logprobs=logprobs, finish_reason=comp.finish_reason))
            if choices:
                yield chunk(choices)
        if include_usage and final is not None:
            yield sse_event(ChatCompletionChunk(id=request_id, created=created,
                                                model=engine.model_name, choices=[],
                                                usage=usage_of([final])))

    return sse_body(events(), streams)
