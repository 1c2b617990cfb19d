"""The automatic batch size rule (``mechclaims.devices``), fed fake free-memory numbers: no GPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mechclaims.devices import (AUTO_BATCH_MAX, DEFAULT_CPU_BATCH, RowShape, auto_batch_size, resolve_batch_size,
                                row_bytes)
from mechclaims.errors import ConfigError

GiB = 1 << 30
# GPT-2 medium (355M) in bf16, and Llama-3.1-8B in bf16 (grouped-query attention: 8 KV heads).
GPT2_MEDIUM = RowShape(n_layers=24, d_model=1024, d_mlp=4096, n_heads=16, kv_width=1024, d_vocab=50257,
                       dtype_bytes=2)
LLAMA_8B = RowShape(n_layers=32, d_model=4096, d_mlp=14336, n_heads=32, kv_width=8 * 128, d_vocab=128256,
                    dtype_bytes=2)


def test_row_bytes_is_dominated_by_the_kv_cache():
    # 33 prompt tokens + 20 new: K and V of 25 layer slots x 53 positions x 1024 x 2 bytes = 5.4 MB.
    kv = 2 * 25 * 53 * 1024 * 2
    got = row_bytes(GPT2_MEDIUM, 33, 20)
    assert kv < got < 2 * kv
    assert row_bytes(GPT2_MEDIUM, 33, 40) > got  # longer generation, more cache
    assert row_bytes(RowShape(**{**GPT2_MEDIUM.__dict__, "dtype_bytes": 4}), 33, 20) > got


def test_the_rule():
    row = 10 * (1 << 20)
    assert auto_batch_size(4 * GiB, row) == 204           # floor(4 GiB * 0.5 / 10 MiB)
    assert auto_batch_size(100 * GiB, row) == AUTO_BATCH_MAX  # clamped above
    assert auto_batch_size(1 << 20, row) == 1              # clamped below: always at least one row
    assert auto_batch_size(0, row) == 1
    assert auto_batch_size(4 * GiB, row, fraction=0.25) == 102
    for bad in ({"bytes_per_row": 0}, {"fraction": 0.0}, {"fraction": 1.5}):
        with pytest.raises(ConfigError):
            auto_batch_size(GiB, **{"bytes_per_row": row, **bad})


def test_resolve_on_fake_gpus():
    calls = []

    def fake(free):
        def mem_get_info(device):
            calls.append(device)
            return free, 141 * GiB
        return mem_get_info

    # An H200 after loading two 355M bf16 models (~1.4 GB): the clamp.
    assert resolve_batch_size(None, "cuda", GPT2_MEDIUM, 33, 20, mem_get_info=fake(139 * GiB)) == AUTO_BATCH_MAX
    # A 16 GiB card after two Llama-8B... does not fit; 2 GiB left: the rule's own figure.
    row = row_bytes(LLAMA_8B, 33, 20)
    assert resolve_batch_size(None, "cuda:1", LLAMA_8B, 33, 20, mem_get_info=fake(2 * GiB)) == (GiB // row)
    assert calls == ["cuda", "cuda:1"]
    # Almost nothing free: one row, never zero.
    assert resolve_batch_size(None, "cuda", LLAMA_8B, 33, 20, mem_get_info=fake(1000)) == 1


def test_user_batch_size_and_cpu_are_untouched():
    def boom(device):
        raise AssertionError("mem_get_info must not be called")

    assert resolve_batch_size(7, "cuda", GPT2_MEDIUM, 33, 20, mem_get_info=boom) == 7
    assert resolve_batch_size(None, "cpu", GPT2_MEDIUM, 33, 20, mem_get_info=boom) == DEFAULT_CPU_BATCH
    assert resolve_batch_size(None, "mps", GPT2_MEDIUM, 33, 20, mem_get_info=boom) == DEFAULT_CPU_BATCH
    with pytest.raises(ConfigError):
        resolve_batch_size(0, "cuda", GPT2_MEDIUM, 33, 20, mem_get_info=boom)


def test_row_shape_of_a_loaded_model():
    cfg = SimpleNamespace(n_layers=2, d_model=32, d_mlp=96, n_heads=4, d_head=8, n_key_value_heads=2, d_vocab=320)
    shape = RowShape.of(SimpleNamespace(cfg=cfg, dtype="bfloat16"))
    assert shape == RowShape(n_layers=2, d_model=32, d_mlp=96, n_heads=4, kv_width=16, d_vocab=320, dtype_bytes=2)
    cfg.n_key_value_heads = None  # no grouped-query attention: every head has its K and V
    assert RowShape.of(SimpleNamespace(cfg=cfg, dtype="float32")).kv_width == 32


def test_batch_size_unset_is_auto_on_cuda_and_32_on_cpu(gpt2_pair, monkeypatch):
    """The run's rule, end to end: no batch size given -> 32 on a CPU; on CUDA the statistics
    pass and the intervention sets take resolve_batch_size's choice (free memory faked here)."""
    import torch

    from mechclaims.analysis import _auto_batch
    from mechclaims.config import build_config
    from mechclaims.errors import ConfigError
    from mechclaims.loading import load_model
    from mechclaims.stats import StatsSettings

    assert build_config({}).batch_size is None
    assert build_config({"batch_size": "auto"}).batch_size is None
    assert build_config({"batch_size": "8"}).batch_size == 8
    with pytest.raises(ConfigError, match="batch_size"):
        build_config({"batch_size": "0"})
    base = load_model(str(gpt2_pair[0]), memo=False)
    assert _auto_batch(StatsSettings(), base, "cpu").batch_size == 32
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 1 << 34))
    want = auto_batch_size(1 << 30, row_bytes(RowShape.of(base), 33, 20))
    assert _auto_batch(StatsSettings(), base, "cuda").batch_size == want
    # A run whose analysis came from the cache measures when the intervention sets open the models.
    from mechclaims.behaviour import _Runner

    runner = _Runner((base, base), lambda b: None, ["x"], StatsSettings(batch_size=32), None, None, None, "generated")
    runner.auto_batch_device = "cuda"
    runner._open()
    assert runner.settings.batch_size == want != 32
