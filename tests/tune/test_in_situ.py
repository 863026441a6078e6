"""The whole-step GEMV tuner's logic (kiln.tune.in_situ) on the CPU, with fake kernels and costs."""

import types

import pytest
import torch
import triton

from kiln.tune import in_situ


def test_coordinate_descent_finds_the_separable_minimum_and_logs_every_trial():
    slots = ["a", "b"]
    cands = {"a": [0, 1, 2], "b": [0, 1, 2]}
    cost = {"a": {0: 5.0, 1: 1.0, 2: 3.0}, "b": {0: 4.0, 1: 2.0, 2: 0.5}}
    calls = []

    def measure(assign):
        calls.append(dict(assign))
        return 10.0 + cost["a"][assign["a"]] + cost["b"][assign["b"]]

    best, ms, trace = in_situ.coordinate_descent(slots, cands, {"a": 0, "b": 0}, measure, rounds=3,
                                                 same=lambda x, y: x == y)
    assert best == {"a": 1, "b": 2} and ms == pytest.approx(11.5)
    assert trace[0] == {"slot": None, "config": None, "cost": 19.0}
    # round 1: 2 trials per slot; round 2 finds nothing better and stops (no third round)
    assert len(trace) == 1 + 4 + 4 and len(calls) == len(trace)


def test_coordinate_descent_keeps_the_current_config_unless_the_gain_beats_min_gain():
    best, ms, _ = in_situ.coordinate_descent(["s"], {"s": ["x", "y"]}, {"s": "x"},
                                             lambda a: {"x": 100.0, "y": 99.9}[a["s"]],
                                             min_gain=0.005, same=lambda p, q: p == q)
    assert best == {"s": "x"} and ms == 100.0
    best, _, _ = in_situ.coordinate_descent(["s"], {"s": ["x", "y"]}, {"s": "x"},
                                            lambda a: {"x": 100.0, "y": 99.0}[a["s"]],
                                            min_gain=0.005, same=lambda p, q: p == q)
    assert best == {"s": "y"}


def test_coordinate_descent_skips_a_candidate_that_fails():
    def measure(assign):
        if assign["s"] == "bad":
            raise RuntimeError("does not launch")
        return {"ok": 2.0, "good": 1.0}[assign["s"]]

    best, ms, trace = in_situ.coordinate_descent(["s"], {"s": ["bad", "good"]}, {"s": "ok"},
                                                 measure, same=lambda p, q: p == q)
    assert best == {"s": "good"} and ms == 1.0
    assert trace[1]["cost"] is None and "does not launch" in trace[1]["error"]


class FakeTuner:
    """The parts of a Triton autotuner the tuner uses: keys, cache, early_config_prune."""

    def __init__(self, keys, cache, prune=None):
        self.keys, self.cache, self.early_config_prune = keys, cache, prune

    def run(self, key):
        return self.cache[key]


def test_slots_of_records_keys_in_first_use_order_and_restores_plain_caches():
    c1, c2 = triton.Config({"BLOCK_N": 64}), triton.Config({"BLOCK_N": 128})
    gemv = FakeTuner(["N", "K"], {(4096, 4096): c1, (6144, 4096): c2, (1, 1): c1})
    tc = FakeTuner(["N", "K"], {(28672, 4096): c2})

    def forward():
        gemv.run((6144, 4096))
        tc.run((28672, 4096))
        gemv.run((4096, 4096))
        gemv.run((6144, 4096))  # read again: recorded once
        gemv.cache[(7, 7)] = c1  # a key tuned during the forward stays in the cache

    slots = in_situ.slots_of(forward, {"gemv": gemv, "tc_gemv": tc})
    assert slots == [("gemv", (6144, 4096)), ("tc_gemv", (28672, 4096)), ("gemv", (4096, 4096))]
    assert type(gemv.cache) is dict and type(tc.cache) is dict
    assert gemv.cache[(7, 7)] is c1 and len(gemv.cache) == 4


def test_slot_candidates_apply_the_kernels_pruning_with_the_key_as_named_arguments():
    sk = triton.Config({"BLOCK_N": 128, "STREAM_K": 4})
    plain = triton.Config({"BLOCK_N": 64})

    def prune(configs, named_args, **kwargs):
        return [c for c in configs if not (named_args["split_hint"] > 0 and c.kwargs.get("STREAM_K"))]

    k = FakeTuner(["N", "K", "split_hint"], {}, prune)
    assert in_situ.slot_candidates(k, (4096, 4096, 0, "torch.bfloat16"), [plain, sk]) == [plain, sk]
    assert in_situ.slot_candidates(k, (4096, 4096, 2, "torch.bfloat16"), [plain, sk]) == [plain]
    assert in_situ.slot_candidates(FakeTuner(["N"], {}), (1,), [plain, sk]) == [plain, sk]
    assert in_situ.slot_candidates(FakeTuner(["N", "split_hint"], {}, prune), (1,),
                                   [plain, sk]) == [plain, sk]  # a short key: nothing pruned


def test_set_configs_installs_an_assignment():
    c = triton.Config({"BLOCK_N": 32})
    k = FakeTuner(["N"], {(1,): triton.Config({"BLOCK_N": 64})})
    in_situ.set_configs({"gemv": k}, {("gemv", (1,)): c})
    assert k.cache[(1,)] is c


def test_same_config_compares_launch_parameters():
    a = triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3)
    assert in_situ.same_config(a, triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3))
    assert not in_situ.same_config(a, triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=3))
    assert not in_situ.same_config(a, triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=3))
    capped = triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3, maxnreg=64)
    assert not in_situ.same_config(a, capped)
    assert in_situ.config_json(capped)["maxnreg"] == 64 and "maxnreg" not in in_situ.config_json(a)


def test_fill_inputs_gives_each_row_its_own_blocks_and_the_slot_of_its_new_token():
    n, max_blocks = 4, 16
    g = types.SimpleNamespace(
        max_blocks=max_blocks, block_tables=torch.full((n, max_blocks), 7, dtype=torch.int32),
        seq_lens=torch.ones(n, dtype=torch.int32), positions=torch.zeros(n, dtype=torch.int64),
        slot_mapping=torch.full((n,), -1, dtype=torch.int64))
    in_situ._fill_inputs(g, 3, 40, 16, 1000)
    assert g.block_tables[:3, :3].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert int(g.block_tables[:3, 3:].abs().sum()) == 0 and g.block_tables[3].tolist() == [7] * 16
    assert g.seq_lens[:3].tolist() == [40] * 3 and g.positions[:3].tolist() == [39] * 3
    assert g.slot_mapping[:3].tolist() == [2 * 16 + 7, 5 * 16 + 7, 8 * 16 + 7]
    assert g.slot_mapping[3] == -1
    with pytest.raises(ValueError, match="exceeds"):
        in_situ._fill_inputs(g, 1, 16 * 17, 16, 1000)


def _tuning():
    return {"status": "tuned", "results": [
        {"kernel": "gemv", "key": [4096, 4096, 1], "config": {"BLOCK_N": 64}, "num_warps": 4,
         "num_stages": 3},
        {"kernel": "gemm", "key": [4096, 4096, 16], "config": {"BLOCK_M": 16}, "num_warps": 4,
         "num_stages": 4}]}


def test_store_choices_replaces_the_same_keys_and_keeps_one_summary_per_batch_size():
    new = triton.Config({"BLOCK_N": 128, "STREAM_K": 4}, num_warps=8, num_stages=3)
    other = triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=3)
    best = {("gemv", (4096, 4096, 1)): new, ("gemv", (6144, 4096, 1)): other}
    record = {"batch_size": 1, "context": 256, "rounds": 1, "min_gain": 0.002, "slots": 2,
              "trials": 9, "step_ms_before": [2.7, 2.8, 2.7], "step_ms_after": [2.6, 2.6, 2.6],
              "seconds": 12.0, "changed": [{"kernel": "gemv"}], "trace": [{"ms": 1.0}]}
    tuning = in_situ.store_choices(_tuning(), best, record)
    by_key = {(e["kernel"], tuple(e["key"])): e for e in tuning["results"]}
    assert len(tuning["results"]) == 3  # one replaced, one added, the gemm entry kept
    assert by_key["gemv", (4096, 4096, 1)] == {"kernel": "gemv", "key": [4096, 4096, 1],
                                               "config": {"BLOCK_N": 128, "STREAM_K": 4},
                                               "num_warps": 8, "num_stages": 3}
    assert by_key["gemm", (4096, 4096, 16)]["config"] == {"BLOCK_M": 16}
    assert tuning["in_situ"] == [{"batch_size": 1, "context": 256, "rounds": 1, "min_gain": 0.002,
                                  "slots": 2, "trials": 9, "step_ms_before": [2.7, 2.8, 2.7],
                                  "step_ms_after": [2.6, 2.6, 2.6], "seconds": 12.0, "changed": 1}]
    again = in_situ.store_choices(tuning, best, {**record, "batch_size": 4})
    again = in_situ.store_choices(again, best, {**record, "trials": 5})
    assert [r["batch_size"] for r in again["in_situ"]] == [1, 4] and again["in_situ"][0]["trials"] == 5
    # the stored entries are what loading seeds the autotuners with
    import kiln.kernels.quant_matmul as qm
    assert all(qm._same_config(cfg, by_key[s]) for s, cfg in best.items())


def test_store_choices_needs_a_stored_tuning():
    with pytest.raises(ValueError, match="not-tuned"):
        in_situ.store_choices({"status": "not-tuned", "results": []}, {}, {"batch_size": 1})


def test_choose_batch1_ring_takes_the_ring_only_when_its_step_is_faster():
    times = {False: 3.0, True: 2.9}
    calls, logs = [], []

    def step(ring):
        calls.append(ring)
        return times[ring]
    got = in_situ.choose_batch1_ring(step, confirm=3, log=logs.append)
    assert got == {"chosen": "ring", "ms_tc": [3.0] * 3, "ms_ring": [2.9] * 3}
    assert calls == [False, True] * 3 and "chosen" in logs[-1]  # alternating
    times[True] = 2.999  # within min_gain: noise does not pick the ring
    assert in_situ.choose_batch1_ring(step, confirm=2, log=logs.append)["chosen"] == "tc"


def test_choose_batch1_ring_keeps_the_tensor_core_path_when_the_ring_fails():
    def step(ring):
        if ring:
            raise RuntimeError("out of shared memory")
        return 3.0
    got = in_situ.choose_batch1_ring(step, confirm=2, log=lambda s: None)
    assert got["chosen"] == "tc" and "out of shared memory" in got["error"] and got["ms_tc"] == [3.0]


def test_ring_may_apply_needs_a_gpu_and_an_unforced_environment(monkeypatch):
    model = torch.nn.Linear(256, 64, bias=False).to(torch.bfloat16)
    monkeypatch.delenv("KILN_RING_GEMV", raising=False)
    monkeypatch.delenv("KILN_PDL_TRIGGER", raising=False)
    assert not in_situ.ring_may_apply(model)  # CPU parameters
    monkeypatch.setenv("KILN_RING_GEMV", "0")
    assert not in_situ.ring_may_apply(model)


def test_store_choices_records_the_batch1_path():
    ring = {"chosen": "ring", "ms_tc": [3.0], "ms_ring": [2.9]}
    record = {"batch_size": 1, "slots": 1, "trials": 1, "step_ms_before": [3.0],
              "step_ms_after": [3.0], "changed": [], "batch1_ring": ring}
    tuning = in_situ.store_choices(_tuning(), {}, record)
    assert tuning["batch1_gemv"] == "ring" and tuning["in_situ"][0]["batch1_ring"] == ring
    other = {k: v for k, v in record.items() if k != "batch1_ring"}
    tuning = in_situ.store_choices(tuning, {}, {**other, "batch_size": 4})
    assert tuning["batch1_gemv"] == "ring"  # another batch size's run keeps it
    assert "batch1_gemv" not in in_situ.store_choices(_tuning(), {}, other)


def test_the_engine_takes_the_stored_batch1_choice():
    from kiln.engine.llm_engine import batch1_ring_chosen
    tuning = in_situ.store_choices(_tuning(), {}, {"batch_size": 1, "batch1_ring": {
        "chosen": "ring", "ms_tc": [3.0], "ms_ring": [2.9]}})
    assert batch1_ring_chosen({"kernel_tuning": tuning})
    assert not batch1_ring_chosen({"kernel_tuning": {**tuning, "batch1_gemv": "tc"}})
    assert not batch1_ring_chosen({"kernel_tuning": _tuning()})  # tuned before the choice existed
    assert not batch1_ring_chosen(None)  # a checkpoint
