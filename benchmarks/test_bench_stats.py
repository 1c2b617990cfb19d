"""The mechclaims statistics pass against plain generation and the paper's two-pass method.

Three ways to get the per-neuron MLP activation means of a (base, DPO) pair over 64 prompts,
``T = 20`` greedy new tokens, same batch size:

``mechclaims``  ``mechclaims.stats.collect_pair(positions="own")``: one KV-cached greedy pass
                per model (the plain HF module sharing the bridge's weights) with float64
                accumulating hooks on hook_post's tensors.
``hf_generate`` (a) plain ``transformers`` ``generate`` of both models, no hooks: the floor.
``two_pass``    (b) the paper's method, written here independently: HF greedy ``generate``, then
                a full forward over prompt + continuation storing every layer's MLP
                post-activation (forward hooks on ``mlp.act``) in fp16, then fp16 sums over the
                last T positions per neuron.

Positions: mechclaims reads the T positions whose outputs produce the T generated tokens (the
last prompt position and generated positions 1..T-1). The two-pass forward runs over
``prompt + continuation[:-1]`` so that its last T positions are exactly those; forwarding the
whole continuation instead would cost one position more and shift the window by one.

Every test checks something real, so a benchmark run also validates:
- the mechclaims continuations equal plain HF greedy ``generate``'s, for both models;
- the mechclaims activation means equal the two-pass fp16 means within fp16 tolerance;
- the mechclaims MLP-output projection equals ``(mean_act @ W_out + b_out) . w_hat`` (linearity).

Timings are never asserted here. The 124M pair only runs when benchmarking is on
(``--benchmark-enable`` or ``MECHCLAIMS_BENCH_FULL=1``); the 2x128 pair always runs. The
regression gate (``benchmarks/gate.py``, run by ``tox -e bench``) reads the JSON these
benchmarks write and compares the ratio mechclaims / plain generate with ``baseline.json``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mechclaims.probe import Probe
from mechclaims.prompts import encode_prompts, pad_left
from mechclaims.stats import StatsSettings, collect_pair

T = 20
BATCH_SIZE = int(os.environ.get("MECHCLAIMS_BENCH_BATCH", "32"))
ROUNDS = int(os.environ.get("MECHCLAIMS_BENCH_ROUNDS", "3"))
WARMUP = int(os.environ.get("MECHCLAIMS_BENCH_WARMUP", "1"))

pytestmark = pytest.mark.benchmark(group="stats-pass")


# --------------------------------------------------------------------------------------------
# The three methods


def _encode(bench, prompts) -> list[list[int]]:
    # The same token ids mechclaims feeds (first 32 tokens, BOS as the bridge prepends it).
    return encode_prompts(bench.tokenizer, prompts, max_prompt_tokens=32,
                          prepend_bos=bool(bench.base.bridge.cfg.default_prepend_bos))


def _batches(bench, seqs):
    for i in range(0, len(seqs), BATCH_SIZE):
        yield pad_left(seqs[i:i + BATCH_SIZE], bench.tokenizer.pad_token_id)


def hf_greedy(hf, batch):
    """Plain HF greedy generation of exactly T tokens; returns ``[batch, T]``."""
    tok = batch.tokens
    out = hf.generate(tok, attention_mask=batch.attention_mask, do_sample=False,
                      max_new_tokens=T, min_new_tokens=T, pad_token_id=hf.config.pad_token_id)
    return out[:, tok.shape[1]:]


def run_hf_generate(bench, seqs) -> dict[str, torch.Tensor]:
    """(a) Both models, plain ``generate``, no hooks."""
    conts = {"base": [], "model": []}
    with torch.no_grad():
        for batch in _batches(bench, seqs):
            for name, hf in (("base", bench.hf_base), ("model", bench.hf_model)):
                conts[name].append(hf_greedy(hf, batch))
    return {k: torch.cat(v) for k, v in conts.items()}


def two_pass_one(hf, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(b) for one model and batch: generate, then one full forward storing every layer's MLP
    post-activation in fp16; returns (continuation [B, T], fp16 sums [L, d_mlp])."""
    cont = hf_greedy(hf, batch)
    tokens = torch.cat([batch.tokens, cont[:, :-1]], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(cont[:, :-1])], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    stored: list[torch.Tensor] = []
    handles = [blk.mlp.act.register_forward_hook(lambda mod, inp, out: stored.append(out.half()))
               for blk in hf.transformer.h]
    try:
        hf(tokens, attention_mask=mask, position_ids=pos, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    sums = torch.stack([a[:, -T:].sum(dim=(0, 1), dtype=torch.float16) for a in stored])
    return cont, sums


def run_two_pass(bench, seqs) -> dict[str, dict]:
    res = {}
    with torch.no_grad():
        for name, hf in (("base", bench.hf_base), ("model", bench.hf_model)):
            conts, total, count = [], 0.0, 0
            for batch in _batches(bench, seqs):
                cont, sums = two_pass_one(hf, batch)
                conts.append(cont)
                total = total + sums.double()  # the per-batch sums are fp16, as in the paper
                count += cont.shape[0] * T
            res[name] = {"continuations": torch.cat(conts), "mean_act": (total / count).numpy()}
    return res


def run_mechclaims(bench, prompts, probe):
    settings = StatsSettings(positions="own", max_new_tokens=T, batch_size=BATCH_SIZE)
    with bench.slowed():  # no-op unless MECHCLAIMS_BENCH_SLOW_MS made a -slowed variant
        return collect_pair(bench.base, bench.model, prompts, probe, settings, progress=False)


# --------------------------------------------------------------------------------------------
# Checks


def _probe(bench) -> Probe:
    g = torch.Generator().manual_seed(0)
    return Probe(torch.randn(bench.base.d_model, dtype=torch.float64, generator=g))


def _assert_close_fp16(got: np.ndarray, want: np.ndarray, what: str) -> None:
    # fp16 storage (11-bit mantissa) of each activation plus an fp16 sum of B*T values per batch.
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= 5e-3 * scale + 1e-3, f"{what}: max |diff| {err:.3g} (max |mean| {scale:.3g})"


def _check_mechclaims(bench, stats, hf_conts: dict, two_pass: dict | None = None) -> None:
    for name, ms in (("base", stats.base), ("model", stats.model)):
        want = hf_conts[name].numpy()
        assert ms.continuations.shape == want.shape
        n_bad = int((ms.continuations != want).any(axis=1).sum())
        assert n_bad == 0, f"{name}: {n_bad} of {len(want)} continuations differ from HF generate"
        assert float(ms.count.sum()) == len(want) * T
        if two_pass is not None:
            _assert_close_fp16(ms.mean_act(), two_pass[name]["mean_act"], f"{name} mean_act")
    # The MLP output is linear in hook_post, so its mean projection follows from the means.
    w_hat = _probe(bench).unit().numpy()
    for ms, hf in ((stats.base, bench.hf_base), (stats.model, bench.hf_model)):
        pred = np.stack([(ms.mean_act()[layer] @ blk.mlp.c_proj.weight.double().numpy()
                          + blk.mlp.c_proj.bias.double().numpy()) @ w_hat
                         for layer, blk in enumerate(hf.transformer.h)])
        np.testing.assert_allclose(ms.mean_mlp_out_proj(), pred, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="session")
def references(bench_pair, prompts):
    """Reference outputs computed once per shape (outside the timed rounds)."""
    seqs = _encode(bench_pair, prompts)
    lens = [len(s) - 1 for s in seqs]
    assert 5 <= min(lens) and max(lens) <= 15, f"prompt lengths {min(lens)}..{max(lens)} tokens"
    two = run_two_pass(bench_pair, seqs)
    return {"seqs": seqs, "two_pass": two,
            "hf_conts": {k: v["continuations"] for k, v in two.items()}}


def _pedantic(benchmark, bench, fn, n_prompts):
    benchmark.group = f"stats-pass {bench.label} bs={BATCH_SIZE}"
    benchmark.extra_info.update(shape=bench.shape.name, batch_size=BATCH_SIZE, new_tokens=T,
                                threads=torch.get_num_threads(), n_prompts=n_prompts,
                                slow_ms=bench.slow_ms, dtype="float32", device="cpu")
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)


# --------------------------------------------------------------------------------------------
# The benchmarks


def test_mechclaims_pass(benchmark, bench_pair, prompts, references):
    probe = _probe(bench_pair)
    stats = _pedantic(benchmark, bench_pair, lambda: run_mechclaims(bench_pair, prompts, probe), len(prompts))
    assert stats.n_chunks == min(32, len(prompts))
    _check_mechclaims(bench_pair, stats, references["hf_conts"], references["two_pass"])


def test_hf_generate(benchmark, bench_pair, references):
    """(a) plain generate of both models, no hooks."""
    conts = _pedantic(benchmark, bench_pair, lambda: run_hf_generate(bench_pair, references["seqs"]),
                      len(references["seqs"]))
    for name in ("base", "model"):
        assert torch.equal(conts[name], references["hf_conts"][name])
    # The two models differ (the DPO perturbation changes some greedy continuations).
    assert not torch.equal(conts["base"], conts["model"])


def test_two_pass(benchmark, bench_pair, references):
    """(b) the paper's two-pass method: generate, full forward storing fp16 activations, sums."""
    res = _pedantic(benchmark, bench_pair, lambda: run_two_pass(bench_pair, references["seqs"]),
                    len(references["seqs"]))
    for name in ("base", "model"):
        assert torch.equal(res[name]["continuations"], references["hf_conts"][name])
        np.testing.assert_array_equal(res[name]["mean_act"], references["two_pass"][name]["mean_act"])
        assert np.isfinite(res[name]["mean_act"]).all()
