"""Counts the Triton kernel variants compiled after start-up.

The start-up warm-up runs the step shapes it can foresee so that their kernels are compiled
before the first request; a variant it missed is compiled (or loaded from Triton's disk cache)
while a step waits. On the H200 the first 1000-request run on a fresh machine took up to 48%
longer than the second, so each such miss is logged and counted (engine.stats()).
"""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger("kiln.engine")


class CompileWatch:
    """Hooks Triton's in-memory kernel-cache misses (process-wide: the newest engine's watch wins)."""

    def __init__(self) -> None:
        self.count = 0
        self.by_kernel: Counter[str] = Counter()

    def install(self) -> bool:
        """Start counting; False when this Triton has no cache-miss hook."""
        try:
            from triton import knobs

            knobs.runtime.jit_cache_hook = self._on_miss
        except (ImportError, AttributeError):
            return False
        return True

    @staticmethod
    def uninstall_any() -> None:
        """Stop whichever watch is installed (an earlier engine's, in this process): a new engine
        starts unwatched, so that its own start-up compiles are neither counted against the
        earlier engine nor described to the hook (Triton serializes every compile's launch
        arguments for it), and installs its own watch once warmed up."""
        try:
            from triton import knobs

            knobs.runtime.jit_cache_hook = None
        except (ImportError, AttributeError):
            pass

    def _on_miss(self, *, fn=None, repr: str = "", **_) -> None:  # noqa: A002 - Triton's name
        name = getattr(fn, "name", None) or repr.split("[", 1)[0] or "?"
        self.count += 1
        self.by_kernel[name] += 1
        logger.info("Triton kernel variant compiled after start-up (not met by the warm-up): %s",
                    repr[:400])
        return None  # a true value would tell Triton to skip the compilation
