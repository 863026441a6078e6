"""The L2 prefetch of the next linear's weight (KILN_L2_NEXT): which linear prefetches which, the
weight each GEMV call would prefetch, and unchanged outputs. The prefetch itself is PTX (CUDA
only; tests/gpu checks its bits); here the kernels run without it."""

import pytest
import torch

from kiln.kernels import quant_matmul as qm
from kiln.models.loader import load_model
from model_helpers import PagedRunner, hf_config, save_hf_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("l2next") / "llama"
    save_hf_checkpoint(hf_config("llama", num_hidden_layers=3), out, seed=5)
    return out


def test_targets_from_the_environment(monkeypatch):
    monkeypatch.delenv("KILN_L2_NEXT", raising=False)
    assert qm.l2_next_targets() == ()
    monkeypatch.setenv("KILN_L2_NEXT", "all")
    assert qm.l2_next_targets() == qm.L2_NEXT_TARGETS
    monkeypatch.setenv("KILN_L2_NEXT", " o_proj, down_proj ")
    assert qm.l2_next_targets() == ("o_proj", "down_proj")
    monkeypatch.setenv("KILN_L2_NEXT", "o_proj,lm_head")
    with pytest.raises(ValueError, match="lm_head"):
        qm.l2_next_targets()


def test_prefetch_bytes_are_capped(monkeypatch):
    w = torch.empty(4096, 4096, dtype=torch.bfloat16)
    monkeypatch.delenv("KILN_L2_NEXT_MB", raising=False)
    assert qm.l2_next_bytes(w) == 32 << 20
    monkeypatch.setenv("KILN_L2_NEXT_MB", "64")
    assert qm.l2_next_bytes(w) == 4096 * 4096 * 2
    # off CUDA a launch gets no prefetch arguments, set or not
    with qm.l2_prefetch_next(w):
        assert qm._next_flags(torch.empty(1, 4096)) == {}


def test_each_gemv_prefetches_the_next_linears_weight(checkpoint, monkeypatch):
    """With every target wired, qkv -> o -> gate_up -> down -> the next layer's qkv: each linear's
    forward runs with the next one's weight set for its GEMV (none after the last down_proj);
    the logits are those of the unwired model."""
    monkeypatch.setenv("KILN_L2_NEXT", "all")
    model = load_model(checkpoint, dtype="float32")
    layers = model.layers
    assert model.wire_l2_prefetch() == 4 * len(layers) - 1
    order = [lin for layer in layers for lin in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                  layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    seen = []
    for lin in order:
        real = lin.method.apply

        def apply(layer, x, real=real):
            seen.append((layer, getattr(qm._l2_next, "weight", None)))
            return real(layer, x)

        monkeypatch.setattr(lin.method, "apply", apply)
    prompt = list(range(3, 19))
    wired = PagedRunner(model).step([("a", prompt)])[0]
    assert [s[0] for s in seen] == order
    assert all(w is nxt.weight for (_, w), nxt in zip(seen, order[1:]))
    assert seen[-1][1] is None
    model.wire_l2_prefetch(())
    assert all(not lin._l2_next for lin in order)
    seen.clear()
    plain = PagedRunner(model).step([("a", prompt)])[0]
    assert all(w is None for _, w in seen)
    assert torch.equal(wired, plain)
