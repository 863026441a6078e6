"""The kv_cache_dtype setting: validation, the storage dtype it selects, the block size in bytes."""

import pytest
import torch

from kiln.config import CacheConfig
from kiln.errors import KilnError
from kiln.runner.memory import kv_block_bytes, kv_cache_torch_dtype


def test_cache_config_kv_cache_dtype_default_and_validation():
    assert CacheConfig().kv_cache_dtype == "auto"
    assert CacheConfig(kv_cache_dtype="fp8").kv_cache_dtype == "fp8"
    for bad in ("int8", "fp8_e5m2", "bfloat16", ""):
        with pytest.raises(KilnError, match="kv_cache_dtype"):
            CacheConfig(kv_cache_dtype=bad)


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kv_cache_torch_dtype(model_dtype):
    assert kv_cache_torch_dtype("auto", model_dtype) == model_dtype
    assert kv_cache_torch_dtype("fp8", model_dtype) == torch.float8_e4m3fn
    with pytest.raises(KilnError):
        kv_cache_torch_dtype("int4", model_dtype)


def test_fp8_blocks_take_half_the_bytes_of_bf16_blocks():
    bf16 = kv_block_bytes(32, 8, 128, 16, torch.bfloat16)
    fp8 = kv_block_bytes(32, 8, 128, 16, kv_cache_torch_dtype("fp8", torch.bfloat16))
    assert bf16 == 2 * 32 * 16 * 8 * 128 * 2
    assert fp8 * 2 == bf16
