"""Engine configuration: frozen dataclasses built once; each component receives only its slice."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kiln.errors import KilnError

SUPPORTED_DTYPES = ("auto", "float32", "float16", "bfloat16")
# "auto": the model's dtype; "fp8": float8_e4m3fn with per-layer scales (1.0 unless an engine
# built with --kv-cache-dtype fp8 carries calibrated ones).
SUPPORTED_KV_CACHE_DTYPES = ("auto", "fp8")


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint (or engine directory) to run, and in which dtype."""

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        aliases = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
                   "bf16": "bfloat16"}
        object.__setattr__(self, "dtype", aliases.get(self.dtype, self.dtype))
        if self.dtype not in SUPPORTED_DTYPES:
            raise KilnError(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise KilnError(f"max_model_len must be >= 1, got {self.max_model_len}")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: block size, how many blocks, prefix caching, storage dtype."""

    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gb: float = 1.0
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise KilnError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise KilnError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise KilnError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_dtype not in SUPPORTED_KV_CACHE_DTYPES:
            raise KilnError(f"kv_cache_dtype must be one of {', '.join(SUPPORTED_KV_CACHE_DTYPES)}, "
                            f"got {self.kv_cache_dtype!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    """The per-step token budget and admission rules."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    scheduling_policy: str = "fcfs"
    max_waiting_requests: int | None = None

    def __post_init__(self) -> None:
        if self.scheduling_policy not in ("fcfs", "no-evict"):
            raise KilnError(f"scheduling_policy must be 'fcfs' or 'no-evict', got {self.scheduling_policy!r}")
        if self.max_num_seqs < 1:
            raise KilnError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise KilnError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs; derived values (like the KV block count) make a new object."""

    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    device: str = "auto"
    enforce_eager: bool = False
    # Decode batch sizes captured as CUDA graphs (None: kiln.runner.cuda_graphs.batch_buckets).
    cuda_graph_sizes: tuple[int, ...] | None = None
    # Token counts of steps with prompt tokens captured as piecewise CUDA graphs (None:
    # kiln.runner.prefill_graphs.prefill_buckets; empty: none, given as 0).
    prefill_graph_sizes: tuple[int, ...] | None = None
    # Schedule step n+1 while the device runs step n (None: on for CUDA, off for the CPU, where
    # the device is the host and nothing overlaps).
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        if self.cuda_graph_sizes is not None:
            sizes = tuple(self.cuda_graph_sizes)
            if not sizes or any(int(b) != b or b < 1 for b in sizes):
                raise KilnError(f"cuda_graph_sizes must be positive integers, got {list(sizes)}")
            object.__setattr__(self, "cuda_graph_sizes", tuple(sorted(set(int(b) for b in sizes))))
        if self.prefill_graph_sizes is not None:
            sizes = tuple(self.prefill_graph_sizes)
            if sizes == (0,):
                sizes = ()
            if any(int(n) != n or n < 1 for n in sizes):
                raise KilnError(f"prefill_graph_sizes must be positive integers (or 0 alone: none), "
                                f"got {list(self.prefill_graph_sizes)}")
            object.__setattr__(self, "prefill_graph_sizes", tuple(sorted(set(int(n) for n in sizes))))

    def with_num_kv_blocks(self, num_blocks: int) -> "EngineConfig":
        """A copy with the KV block count fixed (after memory profiling)."""
        return replace(self, cache=replace(self.cache, num_kv_blocks=num_blocks))

    def with_max_model_len(self, max_model_len: int) -> "EngineConfig":
        """A copy with the context limit fixed (from the checkpoint when not given)."""
        return replace(self, model=replace(self.model, max_model_len=max_model_len),
                       scheduler=replace(self.scheduler, max_model_len=max_model_len))
