"""HF ``architectures`` names -> the kiln model class that runs them."""

from __future__ import annotations

from types import MappingProxyType

from kiln.errors import KilnError
from kiln.models.args import SUPPORTED_ARCHITECTURES
from kiln.models.llama import LlamaFamilyModel

# Read-only: the registry is fixed at import time.
MODEL_CLASSES = MappingProxyType({name: LlamaFamilyModel for name in SUPPORTED_ARCHITECTURES})


def supported_architectures() -> tuple[str, ...]:
    """The HF architecture names kiln can load."""
    return tuple(MODEL_CLASSES)


def resolve_model_class(architectures: list[str] | None) -> type:
    """The class for the first supported name in a config's ``architectures`` list.

    Raises KilnError listing the supported architectures when none is.
    """
    for name in architectures or []:
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    found = ", ".join(architectures) if architectures else "none listed"
    raise KilnError(f"unsupported architecture ({found}); kiln supports "
                    f"{', '.join(supported_architectures())}")
