"""Byte-level BPE tokenizer for the demo models, trained with the `tokenizers` library.

Byte-level BPE maps every byte to a symbol before merging, so any UTF-8 (or Python source with
odd whitespace) encodes and decodes back exactly; no normalizer and no post-processor run, so
``encode`` returns exactly the BPE pieces of the text and nothing is added behind the caller's back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids: <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2.
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)

# ChatML, the format most chat checkpoints use; a system turn is optional.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` with the demo's special tokens at ids 0, 1, 2."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_hf_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Save ``tokenizer`` in Hugging Face format with the chat template inside tokenizer_config.json.

    ``clean_up_tokenization_spaces`` is off because it rewrites " ." and similar on decode, which
    would break exact round trips of source code.
    """
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(out_dir))
    _finish_tokenizer_config(out_dir)


def _finish_tokenizer_config(out_dir: Path) -> None:
    """Put the chat template into tokenizer_config.json and name the portable tokenizer class.

    Newer transformers write the template to its own file and name their own backend class;
    older readers (and simple engines) look for the template in tokenizer_config.json and know
    the class as PreTrainedTokenizerFast, which transformers 5 still loads.
    """
    import json

    jinja = out_dir / "chat_template.jinja"
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if jinja.exists():
        config["chat_template"] = jinja.read_text()
        jinja.unlink()
    config.setdefault("chat_template", CHAT_TEMPLATE)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
