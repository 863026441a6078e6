"""The shipped models load in kiln, and kiln's greedy tokens equal transformers' on them."""

import pytest
import torch

from kiln import DEMO_DRAFT_MODEL, DEMO_MODEL, LLM, SamplingParams

PROMPTS = ["def fibonacci(n):", "import os\n\nclass Config:", "for i in range(10):\n"]


@pytest.mark.parametrize("model_dir", [DEMO_MODEL, DEMO_DRAFT_MODEL], ids=["demo", "draft"])
def test_kiln_greedy_equals_transformers(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n = 24
    llm = LLM(model_dir, dtype="float32", device="cpu")
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt, out in zip(PROMPTS, outs):
        ids = torch.tensor([tok.encode(prompt)])
        assert out.prompt_token_ids == ids[0].tolist()
        ref = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert out.outputs[0].token_ids == ref
        assert out.outputs[0].text  # plausible, non-empty Python continuation
