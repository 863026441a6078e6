"""The shipped tokenizer: loads offline with AutoTokenizer, round-trips any text, renders chat."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.demo import DEMO_MODEL

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(DEMO_MODEL)


def test_special_tokens(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == 0
    assert 3500 <= len(tokenizer) <= 4200


def test_encoding_adds_no_tokens(tokenizer):
    ids = tokenizer("x = 1")["input_ids"]
    assert 0 not in ids and ids == tokenizer.encode("x = 1")
    assert tokenizer.decode(ids) == "x = 1"


EXAMPLES = [
    Path(__file__).read_text(),
    "def f(x):\n\treturn x  \r\n",
    "   \n\n\n    \t \x0b\x0c trailing   ",
    "naïve café 世界 🙂👩‍👩‍👧 \u200b\u00a0 end",
    "a . b , c ' d n't  --  !!",
    "\x00\x01\x7f",
    "",
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_round_trip_examples(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_text(tokenizer, text):
    # Special-token strings would be split out as one token and still decode back, but keep
    # hypothesis on ordinary text.
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_python_source_is_compressed(tokenizer):
    import inspect

    source = inspect.getsource(inspect)
    ids = tokenizer(source)["input_ids"]
    assert len(source.encode()) / len(ids) > 2.5


def test_chat_template_renders(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    assert ids.count(1) == 3 and ids.count(2) == 2
    assert tokenizer.decode(ids) == text


def test_chat_template_lives_in_tokenizer_config():
    import json

    config = json.loads((Path(DEMO_MODEL) / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    assert not (Path(DEMO_MODEL) / "chat_template.jinja").exists()
