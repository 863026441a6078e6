"""The demo checkpoints that ship inside kiln: a small Llama trained on the Python stdlib and its draft.

Both are ordinary Hugging Face checkpoint folders (see README.md beside this file for the recipe and
held-out numbers), so examples, tests and benchmarks can run a real trained model with no download.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent

DEMO_MODEL: str = str(_HERE / "demo-model")
"""Absolute path of the demo model folder (LlamaForCausalLM, ~11.8M parameters, bf16)."""

DEMO_DRAFT_MODEL: str = str(_HERE / "draft-model")
"""Absolute path of the draft model folder (same tokenizer, ~2.4M parameters), for speculative decoding."""

__all__ = ["DEMO_MODEL", "DEMO_DRAFT_MODEL"]
