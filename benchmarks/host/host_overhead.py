"""Host time per engine step with a model that costs nothing: what the CPU adds to every step.

The runner is replaced by one that returns fixed tokens at once, so the time measured is the
scheduler, the KV-cache bookkeeping, the update, detokenizing and building outputs: the work that
async scheduling hides behind the GPU and that bounds the step rate when it cannot be hidden.

    PYTHONPATH=. python benchmarks/host/host_overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

from kiln.batch import ModelOutput
from kiln.engine.llm_engine import LLMEngine
from kiln.sampling_params import SamplingParams


class _Done:
    def __init__(self, out):
        self._out = out

    def result(self):
        return self._out


class FreeRunner:
    """Samples token 7 for every row that samples, instantly."""

    def _output(self, out):
        rows = [s for s in out.scheduled if s.sample]
        return ModelOutput(request_ids=[s.request_id for s in rows], sampled_token_ids=[7] * len(rows))

    def launch(self, out):
        return _Done(self._output(out))

    def execute(self, out):
        return self._output(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="any small checkpoint (its tokenizer is used)")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--final-only", action="store_true", help="outputs only when requests finish")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    engine = LLMEngine.from_args(args.model, device="cpu", max_num_seqs=args.max_num_seqs,
                                 max_num_batched_tokens=8192, num_kv_blocks=20000, max_model_len=args.input_len + args.output_len)
    engine.runner = FreeRunner()
    vocab = engine.model.args.vocab_size
    rng = random.Random(0)
    extra = {}
    if args.final_only:
        from kiln.sampling_params import RequestOutputKind
        extra["output_kind"] = RequestOutputKind.FINAL_ONLY
    for i in range(args.num_prompts):
        engine.add_request(str(i), {"prompt_token_ids": [rng.randrange(vocab) for _ in range(args.input_len)]},
                           SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True, **extra))
    steps = 0
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    elapsed = time.perf_counter() - t0
    result = {"steps": steps, "elapsed_s": elapsed, "ms_per_step": 1e3 * elapsed / steps,
              "num_prompts": args.num_prompts, "input_len": args.input_len,
              "output_len": args.output_len, "max_num_seqs": args.max_num_seqs,
              "final_only": args.final_only, "cpu": platform.processor() or platform.machine(),
              "python": platform.python_version()}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
