"""The incremental detokenizer is exact for byte-level BPE, including characters split over tokens."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

from kiln.engine.detokenizer import IncrementalDetokenizer

TEXTS = [
    "def f(x):\n    return x * 2  # double\n",
    "naïve café — 日本語のテキスト 🙂🙃 émojis and ünïcödé",
    "  leading spaces\tand tabs\n\n",
]


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["def return x the and of " * 20, "abc def ghi"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_equals_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    # Multi-byte characters must be split over several byte-level tokens for this test to bite.
    assert len(ids) > len(text.encode("utf-8")) // 4
    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids=tokenizer.encode("prompt: "))
    shown = []
    for t in ids:
        detok.add_token(t)
        shown.append(detok.visible_text(finished=False))
    # Text read after every token only grows, never shows half a character, and ends whole.
    assert all(b.startswith(a) for a, b in zip(shown, shown[1:]))
    assert all("\ufffd" not in p for p in shown)
    assert shown[-1] == text == detok.text


@pytest.mark.parametrize("text", TEXTS)
def test_text_read_once_at_the_end_equals_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids=tokenizer.encode("prompt: "))
    for t in ids:
        detok.add_token(t)
    assert detok.visible_text(finished=True) == text


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_text_read_mid_character_holds_the_partial_character_back(tokenizer, cut):
    text = "ab 🙂"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, [])
    for t in ids[:-cut]:
        detok.add_token(t)
    partial = detok.visible_text(finished=False)
    assert "\ufffd" not in partial and text.startswith(partial)
    for t in ids[-cut:]:
        detok.add_token(t)
    assert detok.visible_text(finished=True) == text


def test_stop_string_across_tokens_and_holdback(tokenizer):
    text = "alpha beta gamma delta"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, [], stop=["ma de"])
    for t in ids:
        detok.add_token(t)
        # Never show text that might turn out to be the start of the stop string.
        assert "ma d" not in detok.visible_text(finished=False)
        if detok.stop_reason:
            break
    assert detok.stop_reason == "ma de"
    assert detok.text == "alpha beta gam"
