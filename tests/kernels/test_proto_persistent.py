"""The persistent-launch prototypes in benchmarks/kernels (proto_persistent_chain.py, the decode
step's GEMVs as one launch; proto_persistent_step.py, the whole batch-1 step) against their
float32 references, in the interpreter, so that they keep working until the GPU runs them
(benchmarks/h200-persistent). A grid barrier over several programs cannot meet in the
interpreter (it runs programs in turn): single launches run at one program, and the barrier's
give-up path is checked on its own."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "kernels"))

import proto_persistent_chain as chain  # noqa: E402
import proto_persistent_step as step  # noqa: E402


@pytest.fixture
def exact_conversions(monkeypatch):
    """The prototypes' exact float32 -> bf16 / fp8 conversions, for this test only."""
    from triton.runtime import interpreter
    monkeypatch.setattr(interpreter, "_convert_float", interpreter._convert_float)
    chain._exact_interpreter_conversions()


@pytest.mark.parametrize("kind", ["bf16", "fp8", "int4"])
def test_chain_matches_reference(exact_conversions, kind):
    # per-phase launches at 1 and 7 programs (7: runs of one unit, empty runs, shared tiles),
    # the single launch with its barriers at 1; EARLY 0, 1 and 2
    variants, shapes = chain.CHECKS[kind]
    assert chain.run_check("cpu", variants, shapes, [1, 7], [kind]) == 0


def test_chain_barrier_gives_up_instead_of_hanging(exact_conversions, monkeypatch):
    # two programs in turn: the first waits for the second, which cannot start until it ends
    monkeypatch.setattr(chain, "MAX_SPIN", 16)
    c = chain.Chain(chain.CHECK_SHAPES, "cpu")
    c.reset()
    c.launch(chain.CHECK_VARIANTS[0], 2, 0, len(chain.CHECK_SHAPES), True)
    assert c.err.item() == 1
    c.err.zero_()
    c.reset()
    c.launch(chain.CHECK_VARIANTS[0], 1, 0, len(chain.CHECK_SHAPES), True)
    assert c.err.item() == 0
    assert c.check(c.outputs(), chain.CHECK_VARIANTS[0][1]) < 1e-5


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_step_matches_reference(exact_conversions, monkeypatch, kind):
    # a 2-layer model at positions 5 (one chunk) and 37 (5 chunks of 8, combined 2 at a time)
    monkeypatch.setattr(step, "CHECK_VARIANTS", [step.CHECK_VARIANTS[1]])
    assert step.run_check("cpu", [1, 3], [kind]) == 0
