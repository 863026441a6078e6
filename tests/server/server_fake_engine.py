"""A small CPU-only stand-in for LLMEngine (same public API) and a byte-level test tokenizer.

Used for failure paths the real engine cannot produce on demand (a step that raises, a stalled
step) and, until the real engine can load a checkpoint, for the live-server tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln.errors import InvalidRequestError
from kiln.request import CompletionOutput, Logprob, RequestOutput
from kiln.sampling_params import SamplingParams

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# The fake model "writes" this text, starting at an offset that depends on the prompt.
_CORPUS = "the quick brown fox jumps over the lazy dog and then sleeps in the warm sun "


def make_test_tokenizer():
    """A byte-level tokenizer (256 byte tokens plus <s>, </s>, <unk>) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<s>", "</s>", "<unk>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass
class _Seq:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None


@dataclass
class _Req:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    seqs: list[_Seq]
    rngs: list[random.Random]
    arrival: float


class FakeEngine:
    """Deterministic token generator with the LLMEngine API.

    Greedy output is a slice of a fixed English text chosen by the prompt; sampled output is
    random letters from a per-request seed. ``step_delay`` makes each step take that long;
    ``fail_at_step`` makes step number k raise; ``stall_at_step`` makes step k sleep ``stall_s``.
    """

    def __init__(self, max_model_len: int = 256, max_num_seqs: int = 8, step_delay: float = 0.0,
                 fail_at_step: int | None = None, stall_at_step: int | None = None,
                 stall_s: float = 0.0, model_name: str = "fake-model", block_size: int = 16):
        self.tokenizer = make_test_tokenizer()
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.step_delay = step_delay
        self.fail_at_step = fail_at_step
        self.stall_at_step = stall_at_step
        self.stall_s = stall_s
        self.block_size = block_size
        self.vocab_size = len(self.tokenizer)
        self.eos_id = self.tokenizer.eos_token_id
        self.num_steps = 0
        self._reqs: dict[str, _Req] = {}
        self._order: list[str] = []
        self._seed_rng = random.Random(0)
        self.num_total_kv_blocks = 4096

    def add_request(self, request_id: str, prompt: str | list[int] | dict, params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        """Queue a request; same validation as LLMEngine."""
        if request_id in self._reqs:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", param="request_id")
        if isinstance(prompt, dict):
            prompt = prompt.get("prompt_token_ids") or prompt.get("prompt")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if any(not isinstance(t, int) or not 0 <= t < self.vocab_size for t in ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {self.vocab_size})",
                                      param="prompt")
        room = self.max_model_len - len(ids)
        if room < 1:
            raise InvalidRequestError("prompt too long", param="prompt", code="context_length_exceeded")
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens > room:
            raise InvalidRequestError("prompt plus max_tokens exceeds the context",
                                      param="max_tokens", code="context_length_exceeded")
        rngs = [random.Random(params.seed + i if params.seed is not None
                              else self._seed_rng.getrandbits(62)) for i in range(params.n)]
        seqs = [_Seq(logprobs=[] if params.logprobs is not None else None) for _ in range(params.n)]
        self._reqs[request_id] = _Req(request_id, ids, params, max_tokens, seqs, rngs,
                                      arrival_time or time.monotonic())
        self._order.append(request_id)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        """Forget requests; unknown ids are ignored."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            if self._reqs.pop(rid, None) is not None:
                self._order.remove(rid)

    def has_unfinished_requests(self) -> bool:
        """True while any request is queued or running."""
        return bool(self._reqs)

    def _running(self) -> list[_Req]:
        out, seqs = [], 0
        for rid in self._order:
            r = self._reqs[rid]
            if seqs + r.params.n > self.max_num_seqs and out:
                break
            out.append(r)
            seqs += r.params.n
        return out

    def _next_token(self, r: _Req, i: int, seq: _Seq) -> int:
        pos = len(seq.token_ids)
        if r.params.temperature == 0.0:
            start = sum(r.prompt_ids) % len(_CORPUS)
            ch = _CORPUS[(start + pos) % len(_CORPUS)]
        else:
            ch = r.rngs[i].choice("abcdefghijklmnopqrstuvwxyz ")
        return self.tokenizer.encode(ch, add_special_tokens=False)[0]

    def step(self) -> list[RequestOutput]:
        """Advance every running request by one token."""
        self.num_steps += 1
        if self.fail_at_step is not None and self.num_steps >= self.fail_at_step:
            raise RuntimeError("simulated CUDA error in step")
        if self.stall_at_step is not None and self.num_steps == self.stall_at_step:
            time.sleep(self.stall_s)
        if self.step_delay:
            time.sleep(self.step_delay)
        outputs = []
        for r in self._running():
            for i, seq in enumerate(r.seqs):
                if seq.finish_reason is not None:
                    continue
                tok = self._next_token(r, i, seq)
                seq.token_ids.append(tok)
                if seq.logprobs is not None:
                    entry = {tok: Logprob(-0.25, 1, self.tokenizer.decode([tok]))}
                    for rank in range(2, r.params.logprobs + 1):
                        other = (tok + rank) % 256
                        entry[other] = Logprob(-0.25 * rank, rank, self.tokenizer.decode([other]))
                    seq.logprobs.append(entry)
                text = self.tokenizer.decode(seq.token_ids)
                for s in r.params.stop:
                    if s in text:
                        seq.finish_reason = "stop"
                if seq.finish_reason is None and len(seq.token_ids) >= r.max_tokens:
                    seq.finish_reason = "length"
            outputs.append(self._output(r))
        for out in outputs:
            if out.finished:
                self.abort_request(out.request_id)
        return outputs

    def _output(self, r: _Req) -> RequestOutput:
        outs = []
        for i, seq in enumerate(r.seqs):
            text = self.tokenizer.decode(seq.token_ids)
            if seq.finish_reason == "stop":
                cut = min((text.find(s) for s in r.params.stop if s in text), default=len(text))
                text = text[:cut]
            outs.append(CompletionOutput(index=i, text=text, token_ids=list(seq.token_ids),
                                         logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                                         finish_reason=seq.finish_reason))
        return RequestOutput(request_id=r.request_id, prompt=None, prompt_token_ids=r.prompt_ids,
                             outputs=outs, finished=all(s.finish_reason for s in r.seqs),
                             metrics={"arrival_time": r.arrival})

    def stats(self) -> dict:
        """Gauges and counters in LLMEngine.stats() shape."""
        running = self._running()
        used = sum(-(-(len(r.prompt_ids) + len(s.token_ids)) // self.block_size)
                   for r in running for s in r.seqs)
        return {"num_running": len(running), "num_waiting": len(self._reqs) - len(running),
                "kv_cache_usage": used / self.num_total_kv_blocks, "num_preemptions": 0,
                "prefix_cache_queries": 0, "prefix_cache_hits": 0,
                "num_total_kv_blocks": self.num_total_kv_blocks,
                "num_free_kv_blocks": self.num_total_kv_blocks - used}
