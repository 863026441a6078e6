"""Llama-family models: normalised args, the registry, the model, the checkpoint loader."""

from kiln.models.args import ModelArgs
from kiln.models.loader import load_generation_config, load_hf_config, load_model, load_tokenizer
from kiln.models.registry import resolve_model_class, supported_architectures

__all__ = ["ModelArgs", "load_model", "load_hf_config", "load_generation_config", "load_tokenizer",
           "resolve_model_class", "supported_architectures"]
