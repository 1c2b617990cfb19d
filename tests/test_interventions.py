"""Interventions on real tiny models: they do what they say, and leave no trace.

Known answers are built independently: a candidate that differs from the base only in the
input biases of a chosen neuron set, the exact arithmetic of a value-vector ablation read from
the bridge's cache, and the edit selection checked against its definition on random arrays.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from mechclaims.errors import MechclaimsError
from mechclaims.interventions import (
    EDIT_CELLS,
    InterventionError,
    edit_groups,
    neuron_index,
    patch_neurons,
    record_neurons,
    scale_key_vectors,
    scale_value_vectors,
    subtract_direction,
)
from mechclaims.loading import load_model, load_pair
from mechclaims.probe import Probe
from mechclaims.prompts import encode_prompts, pad_left
from mechclaims.stats import StatsSettings, collect_pair, greedy_generate
from tests import tiny


@pytest.fixture(scope="module")
def models(tiny_pairs):
    """Loaded base models, one per architecture under test."""
    return {arch: load_model(str(tiny_pairs[arch][0])) for arch in ("gpt2", "llama")}


def _batch(model, prompts):
    seqs = encode_prompts(model.tokenizer, prompts, max_prompt_tokens=16,
                          prepend_bos=bool(model.bridge.cfg.default_prepend_bos))
    return pad_left(seqs, model.tokenizer.pad_token_id)


def _logits(model, batch):
    return model.hf_model(batch.tokens, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids).logits


def _hook_count(module):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())


def _flat(model, layer, i):
    return np.asarray(i) + layer * model.d_mlp


class Boom(Exception):
    pass


# --------------------------------------------------------------------------------------------
# No trace


def _interventions(model, batch):
    L, D = model.n_layers, model.d_mlp
    g = torch.Generator().manual_seed(1)
    some = torch.randperm(L * D, generator=g)[: L * D // 3].numpy()
    mask = np.zeros((L, D), dtype=bool)
    mask[-1, ::3] = True
    n_pos = batch.tokens.shape[1]
    per_token = torch.randn(batch.tokens.shape[0], n_pos, some.size, generator=g)
    direction = torch.randn(model.d_model, generator=g)
    plan = edit_groups((np.random.default_rng(0).normal(size=(L, D)),
                        np.random.default_rng(1).normal(size=(L, D))), alpha=0.5)
    gated = {"gated_part": "both"} if model.gated else {"scale_bias": True}
    return {
        "patch-all": lambda: patch_neurons(model, some, 2.0, positions="all"),
        "patch-last-mask": lambda: patch_neurons(model, mask, np.full((L, D), -1.5), positions="last"),
        "patch-per-token": lambda: patch_neurons(model, some, per_token),
        "record": lambda: record_neurons(model, some),
        "value-ablate": lambda: scale_value_vectors(model, some, 0.0),
        "key-scale": lambda: scale_key_vectors(model, some, 10.0, **gated),
        "subtract": lambda: subtract_direction(model, direction, 3.0, layer=[0, -1]),
        "edit": lambda: plan.patch(model),
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_interventions_leave_no_trace(models, prompts, arch):
    model = models[arch]
    batch = _batch(model, prompts[:4])
    ref = _logits(model, batch)
    ref_bridge = model.bridge(batch.tokens, return_type="logits")
    ref_params = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    hooks = _hook_count(model.hf_model), _hook_count(model.bridge)
    for name, make in _interventions(model, batch).items():
        for raise_inside in (False, True):
            try:
                with make():
                    inside = _logits(model, batch)
                    if raise_inside:
                        raise Boom(name)
            except Boom:
                pass
            if name != "record":
                assert not torch.equal(inside, ref), f"{name} changed nothing"
            assert torch.equal(_logits(model, batch), ref), name
            assert torch.equal(model.bridge(batch.tokens, return_type="logits"), ref_bridge), name
            for k, v in model.hf_model.state_dict().items():
                assert torch.equal(v, ref_params[k]), f"{name}: {k} changed"
            assert (_hook_count(model.hf_model), _hook_count(model.bridge)) == hooks, name


def test_error_inside_a_hook_still_cleans_up(models, prompts):
    model = models["gpt2"]
    batch = _batch(model, prompts[:2])
    ref = _logits(model, batch)
    n = batch.tokens.shape[1]
    short = torch.zeros(2, n - 1, 3)  # one position too few: the hook raises mid-forward
    with pytest.raises(InterventionError, match="positions"):
        with patch_neurons(model, [0, 1, 2], short):
            _logits(model, batch)
    assert _hook_count(model.hf_model) == 0
    assert torch.equal(_logits(model, batch), ref)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patch_positions_all_and_last(models, prompts, arch):
    model = models[arch]
    batch = _batch(model, prompts[:4])
    L, D = model.n_layers, model.d_mlp
    flat = np.arange(1, L * D, 5)
    vals = torch.linspace(-2.0, 2.0, flat.size)
    with record_neurons(model) as plain:
        _logits(model, batch)
    with patch_neurons(model, flat, vals), record_neurons(model) as rec_all:
        _logits(model, batch)
    with patch_neurons(model, flat, vals, positions="last"), record_neurons(model) as rec_last:
        _logits(model, batch)
    plain, rec_all, rec_last = plain.values(), rec_all.values(), rec_last.values()
    want = vals.to(plain.dtype).expand(*plain.shape[:2], -1)
    assert torch.equal(rec_all[..., flat], want)
    assert torch.equal(rec_last[:, -1, flat], want[:, -1])
    # Causal attention: no earlier position sees the last one, so nothing else moved.
    assert torch.equal(rec_last[:, :-1], plain[:, :-1])
    first = np.setdiff1d(np.arange(D), flat)                   # layer 0, unpatched: upstream
    assert torch.equal(rec_all[..., first], plain[..., first])
    assert not torch.equal(rec_all[..., L * D - D:], plain[..., L * D - D:])


# --------------------------------------------------------------------------------------------
# Known answer: a candidate that differs only in the input biases of a set S


S_LAYER, S = 0, np.array([3, 10, 17, 40, 77])


@pytest.fixture(scope="module")
def bias_pair(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("bias-pair")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    base = tiny.make_model("gpt2", len(tok), seed=5)
    cand = copy.deepcopy(base)
    with torch.no_grad():
        cand.transformer.h[S_LAYER].mlp.c_fc.bias[torch.as_tensor(S)] += 1.5
    for name, m in (("base", base), ("candidate", cand)):
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return load_pair(str(root / "base"), str(root / "candidate"))


def _proj_out(model, layer, batch, w_hat):
    """Mean over non-pad positions of (MLP output of ``layer``) . w_hat, on the plain module."""
    seen = []
    h = model.stat_modules[layer][1].register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        _logits(model, batch)
    finally:
        h.remove()
    proj = seen[0].double() @ w_hat  # [batch, pos]
    return float(proj[batch.attention_mask.bool()].mean())


def test_patching_S_with_candidate_tokens_reproduces_candidate(bias_pair, prompts):
    base, cand = bias_pair
    flat = _flat(base, S_LAYER, S)
    batch = _batch(base, prompts)
    with record_neurons(cand, flat) as rec:
        want = _logits(cand, batch)
    base_logits = _logits(base, batch)
    assert not torch.equal(base_logits, want)
    with patch_neurons(base, flat, rec.values()):
        got = _logits(base, batch)
    assert torch.equal(got, want)
    # Same in KV-cached generation: the candidate's per-forward values drive the base onto
    # the candidate's own greedy continuation.
    with record_neurons(cand, flat) as rec:
        cont_c = greedy_generate(cand, batch, 6)
    with patch_neurons(base, flat, rec.values()):
        cont_patched = greedy_generate(base, batch, 6)
    assert torch.equal(cont_patched, cont_c)


def test_patching_S_to_candidate_means_moves_projection_toward_candidate(bias_pair, prompts):
    base, cand = bias_pair
    flat = _flat(base, S_LAYER, S)
    W = base.bridge.W_out[S_LAYER].detach().double()          # [d_mlp, d_model]
    probe = Probe(W[torch.as_tensor(S)].sum(0))               # the direction S writes along
    w_hat = probe.unit()
    stats = collect_pair(base, cand, prompts, probe,
                         StatsSettings(positions="shared", max_new_tokens=4, max_chunks=2))
    m_cand = stats.model.mean_act()[S_LAYER, S]
    m_base = stats.base.mean_act()[S_LAYER, S]
    assert (m_cand > m_base).all()                            # the +1.5 bias raised them
    batch = _batch(base, prompts)
    p_base, p_cand = _proj_out(base, S_LAYER, batch, w_hat), _proj_out(cand, S_LAYER, batch, w_hat)
    with patch_neurons(base, flat, m_cand):
        p_patch = _proj_out(base, S_LAYER, batch, w_hat)
    assert p_cand > p_base
    assert p_patch > p_base and abs(p_patch - p_cand) < abs(p_base - p_cand)
    # Known answer: only S's terms change, to the constants.
    with record_neurons(base, flat) as rec:
        _logits(base, batch)
    acts = rec.values().double()[batch.attention_mask.bool()]  # [n_tokens, |S|]
    vw = W[torch.as_tensor(S)] @ w_hat
    expected = float(((torch.as_tensor(m_cand) - acts) @ vw).mean())
    assert p_patch - p_base == pytest.approx(expected, rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------------------------
# Weight edits


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_value_vector_ablation_removes_exactly_that_contribution(models, prompts, arch):
    model = models[arch]
    layer, i = model.n_layers - 1, 5
    tokens = _batch(model, prompts[:3]).tokens
    names = (f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.mlp.out.hook_out")
    _, before = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    row = model.bridge.W_out[layer, i].detach().clone()
    assert row.abs().sum() > 0
    with scale_value_vectors(model, [layer * model.d_mlp + i], 0.0):
        assert torch.equal(model.bridge.W_out[layer, i], torch.zeros_like(row))
        _, after = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    act = before[names[0]][..., i]
    assert torch.equal(after[names[0]], before[names[0]])  # upstream of W_out: unchanged
    torch.testing.assert_close(before[names[1]] - after[names[1]], act[..., None] * row,
                               rtol=1e-4, atol=1e-5)
    assert torch.equal(model.bridge.W_out[layer, i], row)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_factor_one_is_a_no_op(models, prompts, arch):
    model = models[arch]
    batch = _batch(model, prompts[:3])
    ref = _logits(model, batch)
    neurons = np.arange(0, model.n_layers * model.d_mlp, 2)
    with scale_value_vectors(model, neurons, 1.0), scale_key_vectors(model, neurons, 1.0):
        assert torch.equal(_logits(model, batch), ref)


def test_key_vector_scaling_on_gpt2_matches_lee(models, prompts):
    """Lee et al. scale c_fc.weight[:, i] (not the bias): pre = f * (k . x) + b."""
    model = models["gpt2"]
    layer, i, f = 1, 7, 10.0
    mlp = model.hf_model.transformer.h[layer].mlp
    tokens = _batch(model, prompts[:2]).tokens
    name = f"blocks.{layer}.mlp.hook_pre"
    _, before = model.bridge.run_with_cache(tokens, names_filter=lambda n: n == name)
    with scale_key_vectors(model, [layer * model.d_mlp + i], f):
        _, after = model.bridge.run_with_cache(tokens, names_filter=lambda n: n == name)
    b = mlp.c_fc.bias[i]
    torch.testing.assert_close(after[name][..., i] - b, f * (before[name][..., i] - b), rtol=1e-4, atol=1e-5)
    others = torch.ones(model.d_mlp, dtype=bool)
    others[i] = False
    assert torch.equal(after[name][..., others], before[name][..., others])


# --------------------------------------------------------------------------------------------
# Direction subtraction


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_subtract_direction_lowers_projection_by_scale(models, prompts, arch):
    model = models[arch]
    batch = _batch(model, prompts[:4])
    probe = Probe(torch.randn(model.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    w_hat = probe.unit()
    proj = model.stat_modules[-1][1]
    seen = []
    h = proj.register_forward_hook(lambda m, a, o: seen.append(o.double() @ w_hat))
    try:
        _logits(model, batch)
        with subtract_direction(model, 3.0 * probe.direction, 2.5):     # not unit: normalised
            _logits(model, batch)
        with subtract_direction(model, probe, 2.5, positions="last"):
            _logits(model, batch)
        with subtract_direction(model, probe, 0.5, normalize=False):
            _logits(model, batch)
    finally:
        h.remove()
    plain, sub_all, sub_last, raw = seen
    torch.testing.assert_close(plain - sub_all, torch.full_like(plain, 2.5), rtol=0, atol=1e-4)
    torch.testing.assert_close(plain[:, -1] - sub_last[:, -1], torch.full_like(plain[:, -1], 2.5), rtol=0, atol=1e-4)
    assert torch.equal(plain[:, :-1], sub_last[:, :-1])
    norm = float(probe.direction.norm())
    torch.testing.assert_close(plain - raw, torch.full_like(plain, 0.5 * norm), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Activation editing


def _cells(cos, act):
    """Cell codes written out from the paper's table (TP TN AP AN), -1 for zeros."""
    out = np.full(cos.shape, -1)
    out[(cos > 0) & (act > 0)] = 0
    out[(cos > 0) & (act < 0)] = 1
    out[(cos < 0) & (act > 0)] = 2
    out[(cos < 0) & (act < 0)] = 3
    return out


_vals = st.sampled_from([0.0, 0.25, -0.25]) | st.floats(-1, 1, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 12)),
    data=st.data(),
    alpha=st.floats(0.001, 0.9),
    beta=st.floats(0.0, 1.0),
    rule=st.sampled_from(["paper", "largest"]),
    q=st.sampled_from([None, 0.8, 0.5]),
)
def test_edit_groups_properties(shape, data, alpha, beta, rule, q):
    cos = data.draw(hnp.arrays(np.float64, shape, elements=_vals))
    act = data.draw(hnp.arrays(np.float64, shape, elements=_vals))
    plan = edit_groups((cos, act), alpha, beta, select_rule=rule, activation_quantile_filter=q)
    c, a = cos.ravel(), act.ravel()
    cell = _cells(c, a)
    if q is not None:
        cell[a > np.quantile(a, q)] = -1
    sel = np.zeros(c.size, dtype=bool)
    sel[plan.neurons] = True
    assert np.unique(plan.neurons).size == plan.neurons.size
    assert (cell[plan.neurons] >= 0).all() and np.array_equal(plan.cells, cell[plan.neurons])
    vw = c * data.draw(hnp.arrays(np.float64, c.size, elements=st.floats(0.1, 3.0)))  # sign of cos
    for code, name in enumerate(EDIT_CELLS):
        members = cell == code
        n = int(members.sum())
        assert plan.cell_sizes[name] == n
        assert int((sel & members).sum()) == math.floor(beta * n)        # floor, documented
        chosen, rest = np.abs(c[sel & members]), np.abs(c[~sel & members])
        if chosen.size and rest.size:
            if name in ("TP", "AN") or rule == "largest":
                assert chosen.min() >= rest.max()
            else:                                   # paper: smallest |cos| in TN and AP
                assert chosen.max() <= rest.min()
    i = plan.neurons
    shrink = np.isin(plan.cells, [0, 3])
    np.testing.assert_allclose(plan.values, np.where(shrink, 1 - alpha, 1 + alpha) * a[i])
    change = (plan.values - a[i]) * vw[i]                 # contribution after minus before
    assert (change < 0).all()                             # always toward anti-toxic


def test_edit_groups_known_answer_and_errors(models, prompts):
    cos = np.array([[0.9, 0.1, 0.5, -0.2, -0.8, -0.1, 0.3, -0.6, 0.0, 0.4]])
    act = np.array([[1.0, 2.0, 4.0, 1.0, 2.0, 3.0, -1.0, -2.0, 5.0, -4.0]])
    plan = edit_groups({"cos": cos, "act_base": act}, alpha=0.1, beta=0.5)
    # TP = {0, 1, 2} -> 1 with largest |cos|: 0. TN = {6, 9} -> 1, smallest |cos|: 6.
    # AP = {3, 4, 5} -> 1, smallest |cos|: 5. AN = {7} -> 0. Neuron 8 (cos 0) in no cell.
    assert plan.neurons.tolist() == [0, 5, 6]
    np.testing.assert_allclose(plan.values, [0.9 * 1.0, 1.1 * 3.0, 1.1 * -1.0])
    largest = edit_groups((cos, act), alpha=0.1, beta=0.5, select_rule="largest")
    assert largest.neurons.tolist() == [0, 4, 9]
    # 0.8 quantile of act (linear) = 3.2: neurons 2 (4.0) and 8 (5.0) are dropped.
    filt = edit_groups((cos, act), beta=1.0, activation_quantile_filter=0.8)
    assert filt.n_filtered == 2 and filt.neurons.tolist() == [0, 1, 3, 4, 5, 6, 7, 9]
    assert plan.mask().shape == cos.shape and plan.describe()["n_neurons"] == 3
    for kw in ({"beta": 1.5}, {"alpha": -1}, {"select_rule": "smallest"}, {"activation_quantile_filter": 2}):
        with pytest.raises(InterventionError):
            edit_groups((cos, act), **kw)
    with pytest.raises(InterventionError, match="plan is for shape"):
        plan.patch(models["gpt2"])


# --------------------------------------------------------------------------------------------
# Generation under a patch


def test_patch_during_greedy_generation(models, prompts):
    model = models["gpt2"]
    batch = _batch(model, prompts)
    T = 8
    with record_neurons(model) as rec_all, record_neurons(model, positions="last") as rec_last:
        ref = greedy_generate(model, batch, T)
    everything = np.arange(model.n_layers * model.d_mlp)
    with patch_neurons(model, everything, 3.0):
        assert not torch.equal(greedy_generate(model, batch, T), ref)
    with patch_neurons(model, everything, 3.0, positions="last"):
        assert not torch.equal(greedy_generate(model, batch, T), ref)
    own_all, own_last = rec_all.values(), rec_last.values()
    assert own_all.shape == (len(prompts), batch.tokens.shape[1] + T - 1, everything.size)
    assert own_last.shape == (len(prompts), T, everything.size)
    with patch_neurons(model, everything, own_all):
        assert torch.equal(greedy_generate(model, batch, T), ref)
    with patch_neurons(model, everything, own_last, positions="last"):
        assert torch.equal(greedy_generate(model, batch, T), ref)


# --------------------------------------------------------------------------------------------
# Input validation


def test_bad_inputs_are_refused_before_anything_is_hooked(models):
    model = models["gpt2"]
    L, D = model.n_layers, model.d_mlp
    assert neuron_index(model, [D + 1, 0]).tolist() == [D + 1, 0]
    assert issubclass(InterventionError, MechclaimsError)
    bad = [
        lambda: patch_neurons(model, [L * D], 1.0),
        lambda: patch_neurons(model, [1, 1], 1.0),
        lambda: patch_neurons(model, np.zeros((L, D + 1), bool), 1.0),
        lambda: patch_neurons(model, [0.5], 1.0),
        lambda: patch_neurons(model, [0, 1], np.ones(3)),
        lambda: patch_neurons(model, [0], float("nan")),
        lambda: patch_neurons(model, [0], 1.0, positions="first"),
        lambda: scale_value_vectors(model, [0], float("inf")),
        lambda: scale_key_vectors(model, [0], 2.0, gated_part="down"),
        lambda: subtract_direction(model, torch.zeros(model.d_model), 1.0),
        lambda: subtract_direction(model, torch.ones(model.d_model + 1), 1.0),
        lambda: subtract_direction(model, torch.ones(model.d_model), 1.0, layer=L),
    ]
    for make in bad:
        with pytest.raises(InterventionError):
            with make():
                pass
        assert _hook_count(model.hf_model) == 0
