"""Per-neuron attribution and the paper's neuron groups, as properties over random arrays.

The group tables are written out here independently from the paper's definitions (not read
from ``mechclaims.attribution``), and the aggregates are recomputed with plain Python loops.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from mechclaims.attribution import (
    EXCLUDED,
    GROUPS_A,
    GROUPS_B,
    WeightTerms,
    attribute,
    group_codes,
    summarize,
    top_k_by_cos,
    v2_toxic_share,
)
from mechclaims.errors import NumericalError
from mechclaims.stats import ModelStats, PairStats, StatsSettings

SETTINGS = settings(max_examples=60, deadline=None)

# The paper's tables, keyed by the signs (cos, act, adiff) for Definition A and
# (cos, act, delta) for Definition B. +1 / -1; any zero sign excludes the neuron.
TABLE_A = {
    (+1, +1, +1): "TP-", (+1, -1, +1): "TN+", (-1, +1, -1): "AP+", (-1, -1, -1): "AN-",  # reduce
    (+1, +1, -1): "TP+", (+1, -1, -1): "TN-", (-1, +1, +1): "AP-", (-1, -1, +1): "AN+",  # increase
}
REDUCING_A = {"TP-", "TN+", "AP+", "AN-"}
TABLE_B = {
    (+1, +1, +1): "TP↓", (+1, -1, +1): "TN↓", (-1, +1, +1): "AP↓", (-1, -1, +1): "AN↓",
    (+1, +1, -1): "TP↑", (+1, -1, -1): "TN↑", (-1, +1, -1): "AP↑", (-1, -1, -1): "AN↑",
}
REDUCING_B = {"TP↓", "TN↓", "AP↓", "AN↓"}


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _name(table, *xs) -> str:
    s = tuple(_sign(float(x)) for x in xs)
    return "" if 0 in s else table[s]


def test_group_name_tables_match_the_paper():
    assert set(GROUPS_A) == set(TABLE_A.values()) and len(GROUPS_A) == 8
    assert set(GROUPS_B) == set(TABLE_B.values()) and len(GROUPS_B) == 8
    assert set(GROUPS_A[:4]) == REDUCING_A and set(GROUPS_B[:4]) == REDUCING_B


# --------------------------------------------------------------------------------------------
# group_codes

signed = st.one_of(st.just(0.0), st.just(-0.0), st.floats(-5, 5, allow_nan=False, allow_subnormal=False))


@st.composite
def sign_arrays(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 12)))
    return [draw(hnp.arrays(np.float64, shape, elements=signed)) for _ in range(4)]


@SETTINGS
@given(sign_arrays())
def test_group_codes_match_the_tables(arrs):
    cos, act, adiff, delta = arrs
    code_a, code_b = group_codes(cos, act, adiff, delta)
    assert code_a.shape == code_b.shape == cos.shape
    for idx in np.ndindex(cos.shape):
        c, a, ad, d = cos[idx], act[idx], adiff[idx], delta[idx]
        want_a, want_b = _name(TABLE_A, c, a, ad), _name(TABLE_B, c, a, d)
        got_a = "" if code_a[idx] == EXCLUDED else GROUPS_A[code_a[idx]]
        got_b = "" if code_b[idx] == EXCLUDED else GROUPS_B[code_b[idx]]
        assert (got_a, got_b) == (want_a, want_b), (c, a, ad, d)


@SETTINGS
@given(sign_arrays())
def test_group_codes_set_properties(arrs):
    cos, act, adiff, delta = arrs
    code_a, code_b = group_codes(cos, act, adiff, delta)
    nz = (cos != 0) & (act != 0)
    # Definition B
    assert np.array_equal((code_b >= 0) & (code_b <= 3), nz & (delta > 0))
    assert np.array_equal(code_b >= 4, nz & (delta < 0))
    assert np.array_equal(code_b == EXCLUDED, (cos == 0) | (act == 0) | (delta == 0))
    # Definition A
    nza = nz & (adiff != 0)
    assert np.array_equal((code_a >= 0) & (code_a <= 3), nza & (np.sign(adiff) == np.sign(cos)))
    assert np.array_equal(code_a >= 4, nza & (np.sign(adiff) != np.sign(cos)))
    assert np.array_equal(code_a == EXCLUDED, ~nza)
    # A partition: every neuron has exactly one code in -1..7.
    for code in (code_a, code_b):
        assert code.dtype == np.int8
        assert set(np.unique(code).tolist()) <= set(range(-1, 8))
        assert sum(int((code == g).sum()) for g in range(-1, 8)) == code.size


# --------------------------------------------------------------------------------------------
# Synthetic statistics and weight terms


def make_stats(rng, K, L, D, zero_frac=0.0, count_scale=20):
    count = rng.integers(1, count_scale, size=K).astype(np.float64)
    act_sum = rng.normal(size=(K, L, D)) * count[:, None, None]
    if zero_frac:
        act_sum[:, rng.random((L, D)) < zero_frac] = 0.0  # neurons whose mean is exactly 0
    return ModelStats(
        act_sum=act_sum,
        count=count,
        mlp_out_proj_sum=rng.normal(size=(K, L)),
        resid_post_proj_sum=rng.normal(size=(K, L)),
        continuations=np.zeros((K, 3), dtype=np.int64),
    )


def make_pair(rng, K, L, D, zero_frac=0.0, same_weights=False, tie_cos=False):
    base, model = make_stats(rng, K, L, D, zero_frac), make_stats(rng, K, L, D, zero_frac)
    if zero_frac:  # same zero pattern in both: adiff == 0 exactly there
        z = (base.act_sum == 0).all(0)
        model.act_sum[:, z] = 0.0
    pair = PairStats(base, model, StatsSettings(max_chunks=K), [(k, k + 1) for k in range(K)], {})

    def vw_cos():
        norms = rng.uniform(0.5, 3.0, size=(L, D))
        if tie_cos:  # few distinct cosines, so top-k must break ties
            cos = rng.choice([-0.5, 0.0, 0.25, 0.5, 0.9], size=(L, D))
        else:
            cos = rng.uniform(-1, 1, size=(L, D))
            if zero_frac:
                cos[rng.random((L, D)) < zero_frac] = 0.0
        return cos * norms, cos

    vb, cb = vw_cos()
    vd, cd = (vb.copy(), cb.copy()) if same_weights else vw_cos()
    wt = WeightTerms(vb, vd, cb, cd, rng.normal(size=L), rng.normal(size=L))
    return pair, wt


pair_params = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "K": st.integers(1, 5),
    "L": st.integers(1, 3),
    "D": st.integers(1, 80),
    "zero_frac": st.sampled_from([0.0, 0.0, 0.1, 0.4]),
    "tie_cos": st.booleans(),
})


def build(p, **kw):
    rng = np.random.default_rng(p["seed"])
    return make_pair(rng, p["K"], p["L"], p["D"], zero_frac=p["zero_frac"], tie_cos=p["tie_cos"], **kw)


@SETTINGS
@given(pair_params)
def test_attribute_identities(p):
    stats, wt = build(p)
    at = attribute(stats, wt)
    K, L, D = p["K"], p["L"], p["D"]
    for ms, mean in ((stats.base, at.act_base), (stats.model, at.act_dpo)):
        want = np.empty((L, D))
        for l in range(L):
            for i in range(D):
                want[l, i] = sum(ms.act_sum[k, l, i] for k in range(K)) / sum(ms.count)
        np.testing.assert_allclose(mean, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(at.proj_base, at.act_base * wt.vw_base)
    np.testing.assert_array_equal(at.proj_dpo, at.act_dpo * wt.vw_dpo)
    np.testing.assert_array_equal(at.delta, at.proj_base - at.proj_dpo)
    np.testing.assert_allclose(at.delta, at.delta_act + at.delta_weight, rtol=0, atol=1e-12)
    np.testing.assert_allclose(at.delta_act, (at.act_base - at.act_dpo) * wt.vw_base, rtol=0, atol=1e-12)
    np.testing.assert_allclose(at.delta_weight, at.act_dpo * (wt.vw_base - wt.vw_dpo), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(at.cos, wt.cos_base)
    np.testing.assert_array_equal(at.adiff, at.act_base - at.act_dpo)
    ca, cb = group_codes(wt.cos_base, at.act_base, at.adiff, at.delta)
    np.testing.assert_array_equal(at.group_a, ca)
    np.testing.assert_array_equal(at.group_b, cb)
    assert (at.n_layers, at.d_mlp) == (L, D)


@SETTINGS
@given(pair_params, st.data())
def test_attribute_chunk_weights(p, data):
    stats, wt = build(p)
    K = p["K"]
    plain = attribute(stats, wt)
    ones = attribute(stats, wt, chunk_weights=np.ones(K))
    for name in ("act_base", "act_dpo", "delta", "delta_act", "delta_weight", "group_a", "group_b"):
        np.testing.assert_array_equal(getattr(ones, name), getattr(plain, name))
    k = data.draw(st.integers(0, K - 1))
    onehot = np.zeros(K)
    onehot[k] = 1.0
    one = attribute(stats, wt, chunk_weights=onehot)
    np.testing.assert_allclose(one.act_base, stats.base.act_sum[k] / stats.base.count[k], rtol=1e-15)
    np.testing.assert_allclose(one.act_dpo, stats.model.act_sum[k] / stats.model.count[k], rtol=1e-15)
    # Bootstrap weights = resampling chunks with repetition.
    w = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=K, max_size=K)), dtype=np.float64)
    assume(w.sum() > 0)
    got = attribute(stats, wt, chunk_weights=w)
    want = sum(w[j] * stats.base.act_sum[j] for j in range(K)) / sum(w[j] * stats.base.count[j] for j in range(K))
    np.testing.assert_allclose(got.act_base, want, rtol=1e-12, atol=1e-15)


def test_attribute_refuses_non_finite():
    rng = np.random.default_rng(0)
    stats, wt = make_pair(rng, 3, 2, 5)
    with np.errstate(all="ignore"), pytest.raises(NumericalError):
        attribute(stats, wt, chunk_weights=np.zeros(3))  # no positions at all: 0/0
    stats.model.act_sum[1, 0, 2] = np.nan
    with pytest.raises(NumericalError, match="act_dpo"):
        attribute(stats, wt)


# --------------------------------------------------------------------------------------------
# summarize


def brute_v2(at, k):
    L, D = at.delta.shape
    rows = []
    for l in range(L):
        for i in range(D):
            rows.append((float(at.cos[l, i]), l * D + i, float(at.act_base[l, i]),
                         float(at.act_base[l, i] - at.act_dpo[l, i]), float(at.delta[l, i])))
    rows.sort(key=lambda r: (-r[0], r[1]))
    top = rows[:k]
    picked = [r for r in top if r[2] > 0 and r[3] > 0]
    num = sum(r[4] for r in picked)
    gross = sum(r[4] for r in rows if r[4] > 0)
    return len(picked), num, gross


@SETTINGS
@given(pair_params, st.sampled_from([1, 7, 128]))
def test_summarize_identities(p, top_k):
    stats, wt = build(p)
    at = attribute(stats, wt)
    s = summarize(at, top_k=top_k)
    json.dumps(s)  # plain JSON-able values
    n = at.delta.size
    d = at.delta
    close = lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)  # noqa: E731
    assert s["n_neurons"] == n
    assert close(s["net"], s["gross_reduction"] + s["gross_increase"])
    assert close(s["net"], s["delta_act_total"] + s["delta_weight_total"])
    assert s["gross_reduction"] >= 0 >= s["gross_increase"]
    assert s["n_delta_positive"] + s["n_delta_negative"] + s["n_delta_zero"] == n
    assert s["n_delta_positive"] == int((d > 0).sum())

    # Groups: counts partition the neurons; signs of the group sums follow the definitions.
    for defn, names, excl in (("group_a", GROUPS_A, "group_a_excluded"), ("group_b", GROUPS_B, "group_b_excluded")):
        assert sum(s[defn][g]["count"] for g in names) + s[excl] == n
    for g in GROUPS_B[:4]:
        assert s["group_b"][g]["sum_delta"] >= 0
    for g in GROUPS_B[4:]:
        assert s["group_b"][g]["sum_delta"] <= 0

    # Group B shares = fraction of the gross reduction; what is missing is exactly the excluded
    # neurons with delta > 0 (an exact zero in cos or act).
    gross = s["gross_reduction"]
    if gross > 0:
        excl_pos = float(d[(at.group_b == EXCLUDED) & (d > 0)].sum())
        assert close(sum(s["group_b_share"].values()), 1.0 - excl_pos / gross)
        if not ((at.cos == 0) | (at.act_base == 0)).any():
            assert close(sum(s["group_b_share"].values()), 1.0)
    red_a = sum(s["group_a"][g]["sum_delta"] for g in GROUPS_A[:4])
    if red_a > 1e-12:
        assert close(sum(s["group_a_share"].values()), 1.0)

    # Per-layer columns add up to the totals.
    pl = s["per_layer"]
    assert len(pl["net"]) == at.n_layers
    assert close(sum(pl["net"]), s["net"])
    assert close(sum(pl["gross_reduction"]), s["gross_reduction"])
    assert close(sum(pl["gross_increase"]), s["gross_increase"])
    for defn, names in (("group_a", GROUPS_A), ("group_b", GROUPS_B)):
        for g in names:
            assert close(sum(pl[defn][g]), s[defn][g]["sum_delta"])
            # and each layer's group sum is a plain loop over that layer's neurons
        codes = getattr(at, defn)
        for l in range(at.n_layers):
            for gi, g in enumerate(names):
                want = sum(float(d[l, i]) for i in range(at.d_mlp) if codes[l, i] == gi)
                assert close(pl[defn][g][l], want)

    # The v2 toxic-neuron share, by brute force.
    n_sel, num, gross_bf = brute_v2(at, top_k)
    v2 = s["toxic_neurons_v2"]
    assert v2["k"] == top_k and v2["n_selected"] == n_sel
    assert close(v2["numerator"], num) and close(v2["gross_reduction"], gross_bf)
    if gross_bf > 0:
        assert close(v2["share"], num / gross_bf)
    else:
        assert math.isnan(v2["share"])


def test_v2_share_on_a_hand_built_case():
    """Six neurons, k=3: top-3 by cos are n5 (0.9), n1 (0.8), n3 (0.8; tie, later index)."""
    from mechclaims.attribution import Attribution

    cos = np.array([[0.1, 0.8, -0.2, 0.8, 0.0, 0.9]])
    act_b = np.array([[1.0, 2.0, 1.0, -1.0, 1.0, 3.0]])
    act_d = np.array([[0.5, 1.0, 1.5, -2.0, 1.0, 1.0]])
    delta = np.array([[0.5, 0.8, -0.1, 0.8, 0.0, 1.8]])
    z = np.zeros_like(cos)
    at = Attribution(cos, cos, act_b, act_d, z, z, delta, z, z, z.astype(np.int8), z.astype(np.int8))
    v2 = v2_toxic_share(at, k=3)
    # n5: act>0, adiff 2>0 -> in; n1: act>0, adiff 1>0 -> in; n3: act<0 -> out.
    assert v2["n_selected"] == 2
    assert v2["numerator"] == pytest.approx(1.8 + 0.8)
    assert v2["gross_reduction"] == pytest.approx(0.5 + 0.8 + 0.8 + 1.8)
    assert v2["share"] == pytest.approx(2.6 / 3.9)


# --------------------------------------------------------------------------------------------
# top_k_by_cos


@SETTINGS
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 20)),
                  elements=st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0])),
       st.integers(0, 80))
def test_top_k_by_cos_is_deterministic_with_ties(cos, k):
    got = top_k_by_cos(cos, k)
    flat = cos.ravel().tolist()
    want = sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]
    assert got.tolist() == want
    assert top_k_by_cos(cos.copy(), k).tolist() == want
    assert len(got) == min(k, cos.size)


# --------------------------------------------------------------------------------------------
# The definitions agree when the weights do not change


@SETTINGS
@given(pair_params)
def test_equal_weights_definitions_agree(p):
    stats, wt = build(p, same_weights=True)
    at = attribute(stats, wt)
    np.testing.assert_array_equal(at.delta_weight, 0.0)
    red_a = (at.group_a >= 0) & (at.group_a <= 3)
    inc_a = at.group_a >= 4
    assert (at.delta[red_a] > 0).all()
    assert (at.delta[inc_a] < 0).all()
    # Same cell and same direction: Definition A's code equals Definition B's wherever both hold.
    both = (at.group_a >= 0) & (at.group_b >= 0)
    np.testing.assert_array_equal(at.group_a[both], at.group_b[both])


def test_table_names_follow_codes():
    rng = np.random.default_rng(3)
    stats, wt = make_pair(rng, 2, 2, 30, zero_frac=0.3)
    at = attribute(stats, wt)
    t = at.table()
    assert list(t) == ["layer", "neuron", "cos", "act_base", "act_dpo", "proj_base", "proj_dpo",
                       "delta", "group_a", "group_b"]
    assert (at.group_a == EXCLUDED).any() and (at.group_b == EXCLUDED).any()
    for row in range(at.delta.size):
        l, i = int(t["layer"][row]), int(t["neuron"][row])
        assert (l, i) == divmod(row, at.d_mlp)
        assert t["delta"][row] == at.delta[l, i]
        assert t["group_a"][row] == _name(TABLE_A, at.cos[l, i], at.act_base[l, i], at.adiff[l, i])
        assert t["group_b"][row] == _name(TABLE_B, at.cos[l, i], at.act_base[l, i], at.delta[l, i])
