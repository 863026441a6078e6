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
    pieces = [detok.add_token(t) for t in ids]
    assert "".join(pieces) == text == detok.text
    assert all("\ufffd" not in p for p in pieces)


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
