"""kiln: an LLM inference compiler, runtime and server for NVIDIA GPUs, with an exact CPU path."""

from kiln.config import EngineConfig
from kiln.engine.llm import LLM
from kiln.request import RequestOutput
from kiln.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "EngineConfig", "RequestOutput", "DEMO_MODEL",
           "DEMO_DRAFT_MODEL", "__version__"]


def __getattr__(name: str):
    # The demo model paths live with the shipped weights; resolved on first use.
    if name in ("DEMO_MODEL", "DEMO_DRAFT_MODEL"):
        from kiln import demo
        return getattr(demo, name)
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")
