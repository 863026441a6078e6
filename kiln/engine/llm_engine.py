"""LLMEngine: add requests, abort them, and step the whole loop."""

from __future__ import annotations

import gc
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kiln.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from kiln.engine.detokenizer import IncrementalDetokenizer
from kiln.errors import InvalidRequestError, KilnError
from kiln.request import CompletionOutput, Logprob, Request, RequestOutput, RequestStatus
from kiln.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger("kiln")

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Prompt lengths the warm-up runs alone (where max_model_len and max_num_batched_tokens allow):
# with its other steps, a multiple of 16 and another row count in each M bucket of the weight-only
# prefill GEMM (kernels.quant_gemm.m_bucket: up to 16, 64, 256, larger).
PREFILL_WARM_UP_ROWS = (16, 32, 33, 128, 261, 272)


@dataclass
class _Sequence:
    """Engine-side view of one of a prompt's n sequences (one scheduler Request)."""

    request: Request
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class _Group:
    """All n sequences of one user request."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[_Sequence] = field(default_factory=list)
    arrival_time: float = 0.0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)


def resolve_device(device: str) -> torch.device:
    """'auto' means the GPU when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KilnError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _apply_engine_limits(config: EngineConfig, info: dict) -> EngineConfig:
    """The engine's build limits as defaults (max_model_len) and caps (max_num_seqs)."""
    from dataclasses import replace

    limits = info.get("limits") or {}
    max_len, max_batch = limits.get("max_seq_len"), limits.get("max_batch_size")
    if max_len:
        if config.model.max_model_len is None:
            config = replace(config, model=replace(config.model, max_model_len=int(max_len)))
        elif config.model.max_model_len > max_len:
            raise KilnError(f"max_model_len {config.model.max_model_len} exceeds the engine's "
                            f"max_seq_len {max_len}; rebuild with a larger --max-seq-len")
    if max_batch and config.scheduler.max_num_seqs > max_batch:
        logger.warning("max_num_seqs %d exceeds the engine's max_batch_size %d: using %d (rebuild "
                       "with a larger --max-batch-size to run more)", config.scheduler.max_num_seqs,
                       max_batch, max_batch)
        config = replace(config, scheduler=replace(config.scheduler, max_num_seqs=int(max_batch)))
    return config


def _prefill_graphs_wanted(config: EngineConfig) -> bool:
    """Whether a CUDA engine with this config captures prefill graphs (not under enforce_eager,
    KILN_PREFILL_GRAPHS=0 or prefill_graph_sizes 0)."""
    from kiln.runner.prefill_graphs import prefill_graphs_enabled

    return (not config.enforce_eager and prefill_graphs_enabled()
            and config.prefill_graph_sizes != ())


def batch1_ring_chosen(engine_info: dict | None) -> bool:
    """Whether an engine's decode-step tuning chose the ring path for its batch-1 decode graph
    (engine.json kernel_tuning.batch1_gemv; kiln.tune.in_situ.choose_batch1_ring). A checkpoint
    (no engine_info) or an engine tuned before the choice existed: no."""
    tuning = (engine_info or {}).get("kernel_tuning") or {}
    return tuning.get("batch1_gemv") == "ring"


class LLMEngine:
    """The engine loop: scheduler (CPU decisions) -> runner (GPU work) -> scheduler update -> text.

    ``step()`` is synchronous and not thread-safe; the async server drives it from one thread.
    """

    def __init__(self, config: EngineConfig):
        from kiln.models.loader import load_generation_config, load_model, load_tokenizer
        from kiln.runner.model_runner import ModelRunner

        model_dir = config.model.model
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.model.seed)
        t0 = time.perf_counter()
        from kiln.engine.compile_watch import CompileWatch
        CompileWatch.uninstall_any()  # an earlier engine's; this one's follows its warm-up
        from kiln.build.engine_dir import is_engine_dir, load_engine_model

        # An engine directory (kiln build) holds processed weights: loaded as they are, after a
        # check that it was built for this device.
        self.engine_info = None
        if is_engine_dir(model_dir):
            self.model, self.engine_info = load_engine_model(model_dir, self.device,
                                                             config.model.dtype)
            config = _apply_engine_limits(config, self.engine_info)
        else:
            self.model = load_model(model_dir, dtype=config.model.dtype, device=self.device)
        args = self.model.args
        from kiln.kernels.quant_act import producer_quant_enabled
        if producer_quant_enabled() and hasattr(self.model, "quantize_in_producers"):
            logger.info("KILN_PRODUCER_QUANT: %d norms and activations quantize their fp8 "
                        "linears' inputs", self.model.quantize_in_producers())
        self.dtype = self.model.embed_tokens.weight.dtype
        config = self._set_kv_cache_dtype(config)
        self.tokenizer = load_tokenizer(config.model.tokenizer or model_dir)
        self.generation_config = load_generation_config(model_dir)
        self.model_name = Path(model_dir).name
        max_len = config.model.max_model_len or args.max_position_embeddings
        if max_len > args.max_position_embeddings:
            raise KilnError(f"max_model_len {max_len} exceeds the model's max_position_embeddings "
                            f"{args.max_position_embeddings}; lower --max-model-len")
        config = config.with_max_model_len(max_len)
        self.max_model_len = max_len
        num_blocks = self._num_kv_blocks(config)
        config = config.with_num_kv_blocks(num_blocks)
        self.config = config
        logger.info("KV cache: %d blocks of %d tokens (%d tokens)", num_blocks,
                    config.cache.block_size, num_blocks * config.cache.block_size)
        self.runner = ModelRunner(self.model, num_blocks, config.cache.block_size, self.device,
                                  self.dtype, kv_cache_dtype=self.kv_dtype)
        from kiln.kernels import use_triton
        if self.device.type == "cuda":
            self._warm_up_kernels(config.cache.block_size)
        # Capture needs the Triton kernels: the torch references read sizes on the host.
        if (self.device.type == "cuda" and not config.enforce_eager
                and use_triton(torch.empty(0, device=self.device))):
            t1 = time.perf_counter()
            reserved = torch.cuda.memory_reserved(self.device)
            self.runner.capture_decode_graphs(config.scheduler.max_num_seqs, max_len,
                                              config.cuda_graph_sizes,
                                              batch1_ring=batch1_ring_chosen(self.engine_info))
            logger.info("decode CUDA graphs captured in %.1f s (%.2f GiB)", time.perf_counter() - t1,
                        (torch.cuda.memory_reserved(self.device) - reserved) / 2**30)
            if _prefill_graphs_wanted(config):
                t1 = time.perf_counter()
                self.runner.capture_prefill_graphs(config.scheduler.max_num_batched_tokens,
                                                   config.prefill_graph_sizes)
                logger.info("prefill CUDA graphs captured in %.1f s (%.2f GiB)",
                            time.perf_counter() - t1, self.runner.prefill_graphs.pool_bytes / 2**30)
        from kiln.scheduler.scheduler import Scheduler
        self.scheduler = Scheduler(config.scheduler, config.cache)
        self.eos_token_ids = frozenset(self.generation_config.get("eos_token_id") or [])
        self._seed_rng = random.Random(config.model.seed)
        self.async_scheduling = (config.async_scheduling if config.async_scheduling is not None
                                 else self.device.type == "cuda")
        # A launched step whose samples have not been taken in yet (async scheduling).
        self._in_flight = None
        self._gc_frozen = False  # see _hold_gc_while_busy
        self._groups: dict[str, _Group] = {}
        self._seq_to_group: dict[str, tuple[_Group, int]] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.load_seconds = time.perf_counter() - t0
        self.compile_watch = CompileWatch()
        if self.device.type == "cuda":
            self.compile_watch.install()

    @classmethod
    def from_args(cls, model: str | None = None, *, tokenizer: str | None = None, dtype: str = "auto",
                  max_model_len: int | None = None, seed: int = 0, block_size: int = 16,
                  num_kv_blocks: int | None = None, gpu_memory_utilization: float = 0.9,
                  cpu_kv_cache_gb: float = 1.0, enable_prefix_caching: bool = True,
                  kv_cache_dtype: str = "auto",
                  max_num_seqs: int = 256, max_num_batched_tokens: int = 2048,
                  scheduling_policy: str = "fcfs", max_waiting_requests: int | None = None,
                  device: str = "auto", enforce_eager: bool = False,
                  cuda_graph_sizes: Sequence[int] | None = None,
                  prefill_graph_sizes: Sequence[int] | None = None,
                  async_scheduling: bool | None = None) -> "LLMEngine":
        """Build an engine from flat keyword arguments (the CLI's and LLM's)."""
        if model is None:
            from kiln.demo import DEMO_MODEL
            model = DEMO_MODEL
        cfg = EngineConfig(
            model=ModelConfig(model=str(model), tokenizer=tokenizer, dtype=dtype,
                              max_model_len=max_model_len, seed=seed),
            cache=CacheConfig(block_size=block_size, num_kv_blocks=num_kv_blocks,
                              gpu_memory_utilization=gpu_memory_utilization,
                              cpu_kv_cache_gb=cpu_kv_cache_gb,
                              enable_prefix_caching=enable_prefix_caching,
                              kv_cache_dtype=kv_cache_dtype),
            scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                      max_num_batched_tokens=max_num_batched_tokens,
                                      scheduling_policy=scheduling_policy,
                                      max_waiting_requests=max_waiting_requests),
            device=device, enforce_eager=enforce_eager,
            cuda_graph_sizes=tuple(cuda_graph_sizes) if cuda_graph_sizes else None,
            prefill_graph_sizes=(tuple(prefill_graph_sizes) if prefill_graph_sizes is not None
                                 else None),
            async_scheduling=async_scheduling)
        return cls(cfg)

    def _set_kv_cache_dtype(self, config: EngineConfig) -> EngineConfig:
        """The KV cache's storage dtype; an fp8 cache takes the engine's calibrated scales."""
        from dataclasses import replace

        from kiln.runner import memory

        kv_info = (self.engine_info or {}).get("kv_cache") or {}
        if kv_info.get("dtype") == "fp8" and config.cache.kv_cache_dtype == "auto":
            config = replace(config, cache=replace(config.cache, kv_cache_dtype="fp8"))
        self.kv_dtype = memory.kv_cache_torch_dtype(config.cache.kv_cache_dtype, self.dtype)
        if config.cache.kv_cache_dtype == "fp8":
            if kv_info.get("scales"):
                self.model.set_kv_cache_scales(kv_info["scales"])
            else:
                logger.warning("fp8 KV cache without calibrated scales (build an engine with "
                               "--kv-cache-dtype fp8 to get them): using scale 1.0")
        return config

    def _num_kv_blocks(self, config: EngineConfig) -> int:
        from kiln.runner import memory

        if config.cache.num_kv_blocks is not None:
            return config.cache.num_kv_blocks
        args = self.model.args
        block_bytes = memory.kv_block_bytes(args.num_hidden_layers, args.num_key_value_heads,
                                            args.head_dim, config.cache.block_size, self.kv_dtype)
        if self.device.type != "cuda":
            return memory.num_kv_blocks_cpu(block_bytes, config.cache, config.scheduler)
        peak = self._profile_activation_bytes(config)
        if _prefill_graphs_wanted(config):
            # The prefill graphs keep the intermediates of their largest bucket (their pool):
            # about the profiled forward's, scaled to that many tokens.
            from kiln.runner.prefill_graphs import prefill_buckets
            largest = prefill_buckets(config.scheduler.max_num_batched_tokens,
                                      config.prefill_graph_sizes)[-1]
            profiled = min(config.scheduler.max_num_batched_tokens, config.scheduler.max_model_len)
            peak += int(peak * min(1.0, largest / profiled))
        if not config.enforce_eager:  # the decode graphs' shared logits buffer (cuda_graphs.py)
            from kiln.runner.cuda_graphs import batch_buckets
            rows = batch_buckets(config.scheduler.max_num_seqs, config.cuda_graph_sizes)[-1]
            peak += rows * args.vocab_size * self.dtype.itemsize
        blocks = memory.num_kv_blocks_cuda(block_bytes, config.cache, self.device, peak)
        return min(blocks, memory.blocks_needed_at_most(config.cache, config.scheduler))

    def _scratch_kv_caches(self, num_blocks: int, block_size: int) -> list[torch.Tensor]:
        """Zeroed per-layer KV caches for forwards outside the engine's own cache (start-up)."""
        from kiln.runner.memory import allocate_kv_caches

        return allocate_kv_caches(self.model.args, num_blocks, block_size, self.kv_dtype, self.device)

    @torch.inference_mode()
    def _profile_activation_bytes(self, config: EngineConfig) -> int:
        """Peak extra memory of one forward over the largest batch the scheduler may build."""
        from kiln.layers.forward_context import build_attention_metadata

        args = self.model.args
        n = min(config.scheduler.max_num_batched_tokens, config.scheduler.max_model_len)
        bs = config.cache.block_size
        num_blocks = -(-n // bs)
        caches = self._scratch_kv_caches(num_blocks, bs)
        meta = build_attention_metadata([(0, n, list(range(num_blocks)))], bs, self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        ids = torch.randint(0, args.vocab_size, (n,), device=self.device)
        hidden = self.model(ids, torch.arange(n, device=self.device), caches, meta)
        self.model.compute_logits(hidden[-config.scheduler.max_num_seqs:])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        del caches, hidden
        torch.cuda.empty_cache()
        return peak

    @torch.inference_mode()
    def _warm_up_kernels(self, block_size: int) -> None:
        """Compile, before the first request, the kernel variants the profile run did not need.

        Triton compiles a kernel once per specialization of its integer arguments (whether each
        is 1 and whether it divides by 16) and per set of compile-time constants (tile sizes the
        dispatchers pick from the step's shape), and the profile run was one sequence of a
        16-multiple length. Here short sequences go through the step shapes a server meets first
        (a ragged prefill, two prefills, a decode beside a prefill chunk, decode-only steps of two
        and of one sequence), then one longer sequence: a prompt, chunks over it of the sizes that
        give each query-tile height of the tiled attention kernel, and a decode over a context
        long enough to be split into partitions, alone and beside a prefill chunk. When
        max_num_seqs allows decode batches large enough for the large-batch decode tile
        (kernels.decode_attention.LARGE_DECODE_TILE), a decode of that many short sequences
        follows, alone and beside a prefill chunk (mixed steps and eager decodes use it too, not
        only the captured graphs). Each step computes its logits
        and their greedy argmax (float32 as the eager head and the sampler give them; once more
        in the decode graphs' logits dtype, whose argmax runs after each replay); all of it runs
        eagerly on a scratch cache. (Missing variants compile while serving: see CompileWatch.)
        """
        from kiln.kernels.argmax import argmax
        from kiln.kernels.decode_attention import _num_sms, large_decode_min_seqs
        from kiln.layers.forward_context import build_step_inputs
        from kiln.runner.cuda_graphs import logits_dtype

        args = self.model.args
        group = max(1, args.num_attention_heads // args.num_key_value_heads)
        # (start position, new tokens, sequence) per scheduled sequence, step by step.
        steps = [[(0, 7, 0)], [(0, 10, 1), (0, 5, 2)], [(7, 1, 0), (10, 3, 1)],
                 [(8, 1, 0), (13, 1, 1)], [(9, 1, 0)]]
        lengths = [14, 14, 14]
        # Sequence 3: a prompt past one 128-key partition, then continuation chunks whose query
        # rows (tokens x group) fill tiles of 16, 32, 64 and 128 rows, then a decode.
        pos, long_steps = 130, [[(0, 130, 3)]]
        for rows in (16, 32, 64, 128):
            n = max(2, rows // group)
            if pos + n + 1 > self.max_model_len:
                break
            long_steps.append([(pos, n, 3)])
            pos += n
        if pos + 1 <= self.max_model_len:
            steps += long_steps + [[(pos, 1, 3)]]
            if pos + 2 <= self.max_model_len:
                # the long decode again beside a prefill chunk: a mixed step's decode rows take
                # the decode kernel without RoPE where decode-only steps may take it with
                # (KILN_ATTN_ROPE)
                steps.append([(pos + 1, 1, 3), (0, 2, 2)])
                pos += 1
            lengths.append(pos + 1)
        n_large = large_decode_min_seqs(args.num_key_value_heads, _num_sms(self.device))
        if self.config.scheduler.max_num_seqs >= n_large and self.max_model_len >= 4:
            big = list(range(len(lengths), len(lengths) + n_large))
            steps += [[(0, 2, s) for s in big], [(2, 1, s) for s in big],
                      [(3, 1, s) for s in big[1:]] + [(0, 4, big[0])]]
            lengths += [4] * n_large
        # Prompts alone whose rows give the weight-only prefill GEMM (Triton, above GEMV_MAX_M
        # rows) a row count in each of its M buckets both as a multiple of 16 and not, which
        # Triton compiles apart: the steps above and the profile run give only some of them (an
        # int4-wo 8B engine compiled two GEMM variants for 128-token prompts while serving).
        limit = min(self.max_model_len, self.config.scheduler.max_num_batched_tokens)
        for n in PREFILL_WARM_UP_ROWS:
            if n <= limit:
                steps.append([(0, n, len(lengths))])
                lengths.append(n)
        per_seq = [-(-n // block_size) for n in lengths]
        firsts = [sum(per_seq[:i]) for i in range(len(per_seq))]
        tables = [list(range(f, f + n)) for f, n in zip(firsts, per_seq)]
        caches = self._scratch_kv_caches(sum(per_seq), block_size)
        for step in steps:
            seqs = [(start, n, tables[i]) for start, n, i in step]
            ends = np.cumsum([n for _, n, _ in seqs]) - 1
            meta, positions, (ends_t,) = build_step_inputs(seqs, block_size, self.device, (ends,))
            ids = torch.randint(0, args.vocab_size, (len(positions),), device=self.device)
            hidden = self.model(ids, positions, caches, meta)
            logits = self.model.compute_logits(hidden.index_select(0, ends_t))
            argmax(logits)
        # The LM head alone at 3 and 4 rows (a decode of a few sequences): the steps above give it
        # 1, 2 or many rows, and the head may be the only layer of its weight kind (an int8-wo
        # head on an int4-wo engine), whose GEMV would otherwise compile its 4-row tile while
        # serving (tests/gpu test_weight_only_lm_head_engine[int8-wo] on the H200).
        for rows in (3, 4):
            argmax(self.model.compute_logits(hidden[-1:].expand(rows, -1).contiguous()))
        argmax(logits.to(logits_dtype(self.model)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        del caches

    # ----------------------------------------------------------------------------------- requests
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text with this model's tokenizer."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def _prompt_ids(self, prompt: str | list[int] | dict) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = list(prompt["prompt_token_ids"])
                text = prompt.get("prompt")
            elif "prompt" in prompt:
                text = prompt["prompt"]
                ids = self.tokenize(text)
            else:
                raise InvalidRequestError("a prompt dict needs 'prompt' or 'prompt_token_ids'",
                                          param="prompt")
        elif isinstance(prompt, str):
            text, ids = prompt, self.tokenize(prompt)
        elif isinstance(prompt, (list, tuple)):
            text, ids = None, list(prompt)
        else:
            raise InvalidRequestError(f"unsupported prompt type {type(prompt).__name__}", param="prompt")
        if not ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        vocab = self.model.args.vocab_size
        if any(not isinstance(t, int) or t < 0 or t >= vocab for t in ids):
            raise InvalidRequestError(f"prompt token ids must be integers in [0, {vocab})",
                                      param="prompt")
        return text, ids

    def add_request(self, request_id: str, prompt: str | list[int] | dict, params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        """Queue a request; raises InvalidRequestError if it cannot be served as given."""
        if request_id in self._groups:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", param="request_id")
        text, ids = self._prompt_ids(prompt)
        room = self.max_model_len - len(ids)
        if room < 1:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens but this model's context is {self.max_model_len} "
                "tokens; shorten the prompt", param="prompt", code="context_length_exceeded")
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens > room:
            raise InvalidRequestError(
                f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the context of "
                f"{self.max_model_len} tokens; lower max_tokens or shorten the prompt",
                param="max_tokens", code="context_length_exceeded")
        arrival = time.monotonic() if arrival_time is None else arrival_time
        group = _Group(request_id, text, ids, params, arrival_time=arrival)
        requests = []
        for i in range(params.n):
            seed = params.seed + i if params.seed is not None else self._seed_rng.getrandbits(62)
            seq_id = request_id if params.n == 1 else f"{request_id}#{i}"
            req = Request(request_id=seq_id, prompt_token_ids=ids, sampling_params=params,
                          eos_token_ids=self.eos_token_ids, seed=seed, max_tokens=max_tokens,
                          arrival_time=arrival)
            detok = IncrementalDetokenizer(self.tokenizer, ids, params.stop, params.skip_special_tokens,
                                           params.include_stop_str_in_output)
            group.sequences.append(_Sequence(req, detok, [] if params.logprobs is not None else None,
                                             0.0 if params.logprobs is not None else None))
            requests.append(req)
        for i, req in enumerate(requests):
            self.scheduler.add_request(req)
            self._seq_to_group[req.request_id] = (group, i)
        self._groups[request_id] = group
        self.prompt_tokens_total += len(ids) * params.n

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        """Stop requests now and free their KV blocks; unknown ids are ignored."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            group = self._groups.pop(rid, None)
            if group is None:
                continue
            seq_ids = [s.request.request_id for s in group.sequences]
            self.scheduler.abort_requests(seq_ids)
            for sid in seq_ids:
                self._seq_to_group.pop(sid, None)
        self._hold_gc_while_busy()

    def has_unfinished_requests(self) -> bool:
        """True while any request is queued or running (or a launched step is not taken in)."""
        return bool(self._groups) or self._in_flight is not None

    # ---------------------------------------------------------------------------------- the loop
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, update, detokenize; returns outputs of requests that advanced.

        With async scheduling, this step is launched and the previous one's samples are taken in
        while the device runs it: the host's scheduling, bookkeeping and detokenizing overlap
        the device's work, and outputs trail the device by one step.
        """
        self._hold_gc_while_busy()
        sched_out = self.scheduler.schedule()
        launched = self.runner.launch(sched_out)
        if self.async_scheduling:
            previous = self._in_flight
            self._in_flight = None if sched_out.is_empty else (sched_out, launched)
            if previous is None:
                if self._in_flight is not None:
                    return []
                previous = (sched_out, launched)  # nothing ran: take it in now
            sched_out, launched = previous
        model_out = launched.result()
        finished = self.scheduler.update(sched_out, model_out)
        touched: dict[str, _Group] = {}
        for i, seq_id in enumerate(model_out.request_ids):
            entry = self._seq_to_group.get(seq_id)
            if entry is None:
                continue
            group, idx = entry
            seq = group.sequences[idx]
            if seq.finish_reason is not None:
                continue  # ended (stop string) while this step was in flight
            token = model_out.sampled_token_ids[i]
            self.generation_tokens_total += 1
            seq.detokenizer.add_token(token)
            if seq.logprobs is not None and model_out.logprobs is not None:
                seq.logprobs.append(self._logprob_entry(token, model_out.logprobs[i]))
                seq.cumulative_logprob += model_out.logprobs[i].sampled_logprob
            if seq.detokenizer.stop_reason is not None and seq.finish_reason is None:
                self.scheduler.finish_requests([seq_id], RequestStatus.FINISHED_STOPPED)
                seq.finish_reason, seq.stop_reason = "stop", seq.detokenizer.stop_reason
            touched[group.request_id] = group
        for req in finished:
            entry = self._seq_to_group.get(req.request_id)
            if entry is None:
                continue
            group, idx = entry
            seq = group.sequences[idx]
            if seq.finish_reason is None:
                seq.finish_reason = req.status.finish_reason
                seq.stop_reason = req.stop_reason
            touched[group.request_id] = group
        outputs = []
        for g in touched.values():
            done = g.finished
            if done or g.params.output_kind is not RequestOutputKind.FINAL_ONLY:
                outputs.append(self._make_output(g, done))
            if done:
                self._groups.pop(g.request_id, None)
                for s in g.sequences:
                    self._seq_to_group.pop(s.request.request_id, None)
        self._hold_gc_while_busy()
        return outputs

    def _hold_gc_while_busy(self) -> None:
        """Keep the objects alive when work starts out of cyclic-GC passes until the engine idles.

        A pass over the oldest generation walks every object in the process (model, tokenizer,
        compiled kernels, captured graphs...). In a 1000-request throughput run on the H200 two
        such passes took ~190-200 ms each, the GPU idle meanwhile (5% of the run). Frozen objects
        are skipped; they are handed back when no request is left, so nothing that dies while
        frozen is kept for good.
        """
        busy = self.has_unfinished_requests()
        if busy and not self._gc_frozen:
            gc.freeze()
        elif not busy and self._gc_frozen:
            gc.unfreeze()
        self._gc_frozen = busy

    def _logprob_entry(self, token: int, lp) -> dict[int, Logprob]:
        entry = {token: Logprob(lp.sampled_logprob, lp.sampled_rank, self.tokenizer.decode([token]))}
        for rank, (tid, val) in enumerate(zip(lp.top_token_ids, lp.top_logprobs), start=1):
            if tid not in entry:
                entry[tid] = Logprob(val, rank, self.tokenizer.decode([tid]))
        return entry

    def _make_output(self, group: _Group, finished: bool) -> RequestOutput:
        outs = []
        for i, s in enumerate(group.sequences):
            done = s.finish_reason is not None
            outs.append(CompletionOutput(
                index=i, text=s.detokenizer.visible_text(done),
                token_ids=list(s.request.output_token_ids),
                cumulative_logprob=s.cumulative_logprob,
                logprobs=list(s.logprobs) if s.logprobs is not None else None,
                finish_reason=s.finish_reason, stop_reason=s.stop_reason))
        first = group.sequences[0].request
        return RequestOutput(request_id=group.request_id, prompt=group.prompt,
                             prompt_token_ids=group.prompt_token_ids, outputs=outs,
                             finished=finished,
                             num_cached_tokens=max(first.num_cached_tokens, 0),
                             metrics={"arrival_time": group.arrival_time,
                                      "first_token_time": first.first_token_time})

    def stats(self) -> dict:
        """Counters and gauges: KV blocks, preemptions, prefix-cache queries and hits (tokens),
        Triton kernel variants compiled after start-up."""
        s = dict(self.scheduler.stats())
        s["prompt_tokens_total"] = self.prompt_tokens_total
        s["generation_tokens_total"] = self.generation_tokens_total
        s["kernel_compiles_after_startup"] = self.compile_watch.count
        return s
