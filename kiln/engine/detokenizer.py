"""Incremental detokenization and stop-string detection for one output sequence."""

from __future__ import annotations

# Tokens of the prompt decoded together with the first output tokens, so that tokenizers whose
# decoding depends on the left neighbour (leading-space handling) produce the right first piece.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text, one token at a time.

    Text is emitted only once it is complete: byte-level BPE can split one UTF-8 character over
    several tokens, and a partial character decodes to U+FFFD. Each step decodes just a short
    window (from ``prefix_offset``), so the cost per token does not grow with the output length.
    Stop strings are searched in the new text (and the few characters before it, since a stop
    string can straddle tokens); text that could still become a stop string is held back from
    ``visible_text`` until it is known not to be one.

    Without stop strings nothing needs the text until someone reads it, so ``add_token`` only
    records the id and ``visible_text`` decodes everything pending in one window: a request whose
    text is read once at the end costs one decode instead of two per token.
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str] | None = None,
                 skip_special_tokens: bool = True, include_stop_str_in_output: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self.text = ""
        self.stop = list(stop or [])
        self.include_stop_str_in_output = include_stop_str_in_output
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.stop_reason: str | None = None
        self._decode = _decoder(tokenizer, skip_special_tokens)

    def add_token(self, token_id: int) -> None:
        """Append one token; with stop strings, decode now and check them."""
        if self.stop_reason is not None:
            return
        self._ids.append(token_id)
        if self.stop:
            self._advance()

    def _advance(self) -> str:
        """Decode the tokens not yet turned into text; returns the newly completed text."""
        if self._read_offset == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix_offset:self._read_offset])
        # Several pending tokens may end inside a character (U+FFFD): then take fewer of them; a
        # UTF-8 character has at most 4 bytes, so the complete text ends within the last 4.
        end = len(self._ids)
        while True:
            after = self._decode(self._ids[self._prefix_offset:end])
            if len(after) > len(before) and not after.endswith("\ufffd"):
                break
            end -= 1
            if end <= self._read_offset or end < len(self._ids) - 4:
                return ""
        delta = after[len(before):]
        self._prefix_offset = self._read_offset
        self._read_offset = end
        old_len = len(self.text)
        self.text += delta
        self._check_stop(old_len)
        return self.text[old_len:]

    def _check_stop(self, old_len: int) -> None:
        if not self.stop:
            return
        search_from = max(0, old_len - self._hold)
        best = -1
        for s in self.stop:
            i = self.text.find(s, search_from)
            if i != -1 and (best == -1 or i < best):
                best, self.stop_reason = i, s
        if best != -1:
            end = best + len(self.stop_reason) if self.include_stop_str_in_output else best
            self.text = self.text[:end]

    def visible_text(self, finished: bool) -> str:
        """Text safe to show now: holds back a tail that could still grow into a stop string."""
        if not self.stop and self.stop_reason is None:
            self._advance()
        if finished or self.stop_reason is not None or not self._hold:
            return self.text
        return self.text[:max(0, len(self.text) - self._hold)]


def _decoder(tokenizer, skip_special_tokens: bool):
    """A function ids -> text; the fast backend's decode when it gives the same text.

    transformers' ``decode`` wraps the Rust tokenizer with conversions that cost more than the
    decode itself; it only differs when the tokenizer asks for clean-up of tokenization spaces.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
