"""Scalar metrics of an Attribution that the claims compare against thresholds.

Each function is vectorised over neurons and returns plain floats (NaN where undefined, e.g.
a share of a zero reduction; the claims skip those with a reason instead of passing them).
"""

from __future__ import annotations

import math

import numpy as np

from .attribution import GROUPS_A, GROUPS_B, group_sums, top_k_by_cos, v2_toxic_share  # noqa: F401

NAN = float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else NAN


def gross_reduction(a) -> float:
    return float(a.delta[a.delta > 0].sum())


def net(a) -> float:
    return float(a.delta.sum())


def shares_b(a) -> dict[str, float]:
    """Definition-B group sum / gross reduction, for TP↓ TN↓ AP↓ AN↓."""
    _, sums = group_sums(a.group_b, a.delta)
    gross = gross_reduction(a)
    return {g: _ratio(sums[i], gross) for i, g in enumerate(GROUPS_B[:4])}


def shares_a(a) -> dict[str, float]:
    """Definition-A group sum / sum of the four reduction groups (v1), for TP- TN+ AP+ AN-."""
    _, sums = group_sums(a.group_a, a.delta)
    total = float(sums[:4].sum())
    return {g: _ratio(sums[i], total) for i, g in enumerate(GROUPS_A[:4])}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation in float64; NaN when either side is constant."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return float(xc @ yc) / den if den > 0 else NAN


def pearson_pvalue(r: float, n: int) -> float:
    """Two-sided p-value of H0: rho = 0 via Fisher's z (normal approximation, n >> 3)."""
    if not math.isfinite(r) or n <= 3:
        return NAN
    z = math.atanh(min(max(r, -0.999999999999), 0.999999999999)) * math.sqrt(n - 3)
    return math.erfc(abs(z) / math.sqrt(2))


def null_r_bound(n: int, alpha: float = 0.01) -> float:
    """|r| that a correlation of exactly zero exceeds with probability alpha among n neurons:
    z_{1-alpha/2} / sqrt(n - 3). GPT-2 medium (98,304 neurons): 0.0082; 2,048 neurons: 0.057."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / 2) / math.sqrt(max(n - 3, 1))


def relative_change(a, clip=(10, 90)) -> np.ndarray:
    """(act_base - act_dpo) / act_base; > 0 means the magnitude shrank. Clipped to the given
    percentiles over all neurons with nonzero base activation, as the paper's notebooks do."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rc = np.where(a.act_base != 0, a.adiff / a.act_base, np.nan)
    finite = rc[np.isfinite(rc)]
    if finite.size == 0:
        return rc
    lo, hi = np.percentile(finite, clip)
    return np.clip(rc, lo, hi)


def group_mean_relative_change(a) -> dict[str, float]:
    rc = relative_change(a)
    out = {}
    for i, g in enumerate(GROUPS_B[:4]):
        sel = (a.group_b == i) & np.isfinite(rc)
        out[g] = float(rc[sel].mean()) if sel.any() else NAN
    return out


def canonical_fraction(a) -> float:
    """Among neurons with delta > 0, the fraction whose activation moved the toxicity-reducing
    way (Definition-A reduction groups TP-, TN+, AP+, AN-). Paper: 0.849 GPT-2 ... 0.957."""
    pos = a.delta > 0
    canon = pos & (a.group_a >= 0) & (a.group_a < 4)
    return _ratio(float(canon.sum()), float(pos.sum()))


def cell_reduce_fractions(a) -> dict[str, float]:
    """For each sign cell (cos, act_base), the fraction of its neurons with delta > 0."""
    sc, sa = np.sign(a.cos), np.sign(a.act_base)
    cells = {"TP": (sc > 0) & (sa > 0), "TN": (sc > 0) & (sa < 0),
             "AP": (sc < 0) & (sa > 0), "AN": (sc < 0) & (sa < 0)}
    return {k: _ratio(float((m & (a.delta > 0)).sum()), float(m.sum())) for k, m in cells.items()}


def layer_halves(a) -> dict[str, float]:
    """Net delta of the later half of layers minus the earlier half, and the TP↓ + AN↓ share of
    gross reduction in the last third of layers."""
    L = a.n_layers
    per_layer = a.delta.sum(1)
    late = float(per_layer[L // 2:].sum())
    early = float(per_layer[: L // 2].sum())
    last = slice(L - max(1, L // 3), L)
    d = a.delta[last]
    g = a.group_b[last]
    gross_last = float(d[d > 0].sum())
    tp_an = float(d[(g == 0) | (g == 3)].sum())
    return {"late_minus_early": late - early, "tp_an_share_last_third": _ratio(tp_an, gross_last)}


# --------------------------------------------------------------------------------------------
# When a claim applies: each returns a reason to skip, or None.


def needs_reduction(a, ctx=None) -> str | None:
    """Shares of the gross reduction are undefined when no neuron reduced the projection."""
    if not gross_reduction(a) > 0:
        return "no neuron reduced the toxicity projection (gross reduction is 0): a share is undefined"
    return None


def needs_group_a_reduction(a, ctx=None) -> str | None:
    """Shares of the four Definition-A reducing groups are undefined when they sum to 0."""
    _, sums = group_sums(a.group_a, a.delta)
    if not sums[:4].sum() > 0:
        return "the four Definition-A reduction groups sum to 0: a share is undefined"
    return None
