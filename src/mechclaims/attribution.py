"""Per-neuron change of the MLP write along the probe, and the paper's neuron groups.

For neuron ``(l, i)`` with value vector ``v`` (row ``i`` of ``W_out[l]``), mean activation ``m``
at the statistics positions, and ``w_hat = w / ||w||`` (paper 1(c), v2 equation)::

    cos      = cos(v_base, w)
    proj_M   = m_M * (v_M . w_hat)                       for M in {base, dpo}
    delta    = proj_base - proj_dpo                      > 0: the neuron reduced toxicity
    delta    = delta_act + delta_weight, exactly, with
    delta_act    = (m_base - m_dpo) * (v_base . w_hat)   activation-only term
    delta_weight = m_dpo * ((v_base - v_dpo) . w_hat)    weight-only term (paper A15)

Groups (strict signs; a neuron with an exact zero in a sign it needs is excluded and counted,
paper A7). ``adiff = m_base - m_dpo``.

Definition A (v1/v2, activation shift), +/- = change of |activation|::

    TP-  cos>0 act>0 adiff>0     TN+  cos>0 act<0 adiff>0      (reduce toxicity)
    AP+  cos<0 act>0 adiff<0     AN-  cos<0 act<0 adiff<0
    mirrors TP+ TN- AP- AN+ (adiff of the other sign) increase toxicity.

Definition B (v3, projection reduction)::

    TP↓ cos>0 act>0 delta>0      TN↓ cos>0 act<0 delta>0
    AP↓ cos<0 act>0 delta>0      AN↓ cos<0 act<0 delta>0
    mirrors TP↑ TN↑ AP↑ AN↑ have delta<0.

"act" is always the base model's mean activation. Everything is vectorised over neurons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .choices import GROUPS_A, GROUPS_B
from .errors import NumericalError

EXCLUDED = -1
CSV_COLUMNS = ("layer", "neuron", "cos", "act_base", "act_dpo", "proj_base", "proj_dpo",
               "delta", "group_a", "group_b")


@dataclass
class WeightTerms:
    """Probe-side weight quantities, float64, ``[L, d_mlp]`` unless noted."""

    vw_base: np.ndarray   # v_base . w_hat
    vw_dpo: np.ndarray    # v_dpo . w_hat
    cos_base: np.ndarray  # cos(v_base, w)
    cos_dpo: np.ndarray   # cos(v_dpo, w)
    bw_base: np.ndarray   # [L] b_out_base . w_hat
    bw_dpo: np.ndarray    # [L] b_out_dpo . w_hat


def _model_terms(model, w_hat):
    """(v . w_hat, ||v||, b_out . w_hat) for one LoadedModel, one layer at a time in float64
    (a stacked float64 W_out of a 7B model would not fit in memory), each on its layer's device
    (a device map puts layers on several)."""
    import torch

    from .loading import is_offloaded

    vw, norms, bw = [], [], []
    for layer, block in enumerate(model.bridge.blocks):
        proj = model.stat_modules[layer][1]
        if is_offloaded(proj):  # weights on disk/CPU until a forward: read them as one does
            W, b = _offloaded_w_out(proj)
        else:
            W = block.mlp.W_out.detach()  # [d_mlp, d_model]
            b = getattr(block.mlp, "b_out", None)
            if b is None:  # bias-free MLPs (Llama, Mistral, Gemma): zeros
                b = torch.zeros(W.shape[1], dtype=torch.float64, device=W.device)
        W = W.to(torch.float64)
        w = w_hat.to(W.device, torch.float64)
        vw.append((W @ w).cpu())
        norms.append(W.norm(dim=-1).cpu())
        bw.append((b.detach().to(w.device, torch.float64) @ w).cpu())
    bw = torch.stack(bw)
    return torch.stack(vw).numpy(), torch.stack(norms).numpy(), bw.numpy()


def _offloaded_w_out(proj):
    """``(W_out [d_mlp, d_model], b_out [d_model])`` of an offloaded MLP output projection,
    copied out while Accelerate has the weights loaded (GPT-2's Conv1D stores ``[in, out]``, a
    Linear ``[out, in]``)."""
    import torch

    from .loading import materialized

    with materialized(proj):
        weight = proj.weight.detach()
        W = (weight if type(proj).__name__ == "Conv1D" else weight.T).to(torch.float64, copy=True)
        bias = getattr(proj, "bias", None)
        b = (torch.zeros(W.shape[1], dtype=torch.float64, device=W.device) if bias is None
             else bias.detach().to(torch.float64, copy=True))
    return W, b


def weight_terms(base, model, probe) -> WeightTerms:
    w_hat = probe.unit()
    vb, nb, bb = _model_terms(base, w_hat)
    vd, nd, bd = _model_terms(model, w_hat)
    with np.errstate(divide="ignore", invalid="ignore"):
        cb = np.where(nb > 0, vb / nb, 0.0)
        cd = np.where(nd > 0, vd / nd, 0.0)
    return WeightTerms(vb, vd, cb, cd, bb, bd)


@dataclass
class Attribution:
    """Per-neuron arrays ``[L, d_mlp]`` (float64, or int8 group codes)."""

    cos: np.ndarray
    cos_dpo: np.ndarray
    act_base: np.ndarray
    act_dpo: np.ndarray
    proj_base: np.ndarray
    proj_dpo: np.ndarray
    delta: np.ndarray
    delta_act: np.ndarray
    delta_weight: np.ndarray
    group_a: np.ndarray  # int8 index into GROUPS_A, EXCLUDED = -1
    group_b: np.ndarray  # int8 index into GROUPS_B, EXCLUDED = -1
    #: The first ``choices.EARLY_POSITIONS`` positions' part of ``delta`` (their sums over every
    #: position's count, so ``delta = delta_early + the rest`` exactly); None when the statistics
    #: did not keep them apart.
    delta_early: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return int(self.delta.shape[0])

    @property
    def d_mlp(self) -> int:
        return int(self.delta.shape[1])

    @property
    def adiff(self) -> np.ndarray:
        return self.act_base - self.act_dpo

    def table(self) -> dict[str, np.ndarray]:
        """Flat columns, one row per neuron, in ``CSV_COLUMNS`` order (layer-major)."""
        L, D = self.delta.shape
        names_a = np.array(GROUPS_A + ("",), dtype=object)
        names_b = np.array(GROUPS_B + ("",), dtype=object)
        return {
            "layer": np.repeat(np.arange(L), D),
            "neuron": np.tile(np.arange(D), L),
            "cos": self.cos.ravel(),
            "act_base": self.act_base.ravel(),
            "act_dpo": self.act_dpo.ravel(),
            "proj_base": self.proj_base.ravel(),
            "proj_dpo": self.proj_dpo.ravel(),
            "delta": self.delta.ravel(),
            "group_a": names_a[self.group_a.ravel()],  # -1 picks the trailing ""
            "group_b": names_b[self.group_b.ravel()],
        }


def _signs(x):
    return np.sign(x).astype(np.int8)


def group_codes(cos, act, adiff, delta):
    """Definition A and B group codes from the sign arrays (vectorised)."""
    sc, sa, sd, sD = _signs(cos), _signs(act), _signs(adiff), _signs(delta)
    cell = np.where(sc > 0, 0, 2) + np.where(sa > 0, 0, 1)  # TP=0 TN=1 AP=2 AN=3
    # Definition A: a reduction group iff sign(adiff) == sign(cos); else its mirror (+4).
    code_a = (cell + np.where(sc * sd > 0, 0, 4)).astype(np.int8)
    code_a[(sc == 0) | (sa == 0) | (sd == 0)] = EXCLUDED
    code_b = (cell + np.where(sD > 0, 0, 4)).astype(np.int8)
    code_b[(sc == 0) | (sa == 0) | (sD == 0)] = EXCLUDED
    return code_a, code_b


def attribute(stats, weights: WeightTerms, chunk_weights=None) -> Attribution:
    """Attribution of a PairStats; ``chunk_weights`` reweights prompt chunks (bootstrap)."""
    m_b = stats.base.mean_act(chunk_weights)
    m_d = stats.model.mean_act(chunk_weights)
    proj_b = m_b * weights.vw_base
    proj_d = m_d * weights.vw_dpo
    delta = proj_b - proj_d
    delta_act = (m_b - m_d) * weights.vw_base
    delta_weight = m_d * (weights.vw_base - weights.vw_dpo)
    for name, arr in (("act_base", m_b), ("act_dpo", m_d), ("delta", delta), ("cos", weights.cos_base)):
        if not np.isfinite(arr).all():
            raise NumericalError(f"{int((~np.isfinite(arr)).sum())} non-finite values in {name}.")
    code_a, code_b = group_codes(weights.cos_base, m_b, m_b - m_d, delta)
    delta_early = None
    if stats.base.act_early_sum is not None and stats.model.act_early_sum is not None:
        delta_early = (stats.base.early_part_of_mean_act(chunk_weights) * weights.vw_base
                       - stats.model.early_part_of_mean_act(chunk_weights) * weights.vw_dpo)
    return Attribution(weights.cos_base, weights.cos_dpo, m_b, m_d, proj_b, proj_d, delta,
                       delta_act, delta_weight, code_a, code_b, delta_early)


# --------------------------------------------------------------------------------------------
# Aggregates


def top_k_by_cos(cos: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the ``k`` neurons with the largest cos(v_base, w) over all layers
    (ties broken by flat index, so the selection is deterministic)."""
    flat = cos.ravel()
    k = min(k, flat.size)
    order = np.lexsort((np.arange(flat.size), -flat))
    return order[:k]


def group_sums(codes: np.ndarray, delta: np.ndarray, n_groups: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(count, sum of delta) per group code, excluded neurons dropped."""
    c = codes.ravel()
    keep = c >= 0
    counts = np.bincount(c[keep], minlength=n_groups).astype(np.int64)
    sums = np.bincount(c[keep], weights=delta.ravel()[keep], minlength=n_groups)
    return counts, sums


def per_layer_group_sums(codes: np.ndarray, delta: np.ndarray, n_groups: int = 8) -> np.ndarray:
    """``[L, n_groups]`` sum of delta per layer and group."""
    L = codes.shape[0]
    idx = (np.arange(L)[:, None] * n_groups + codes).ravel()
    keep = codes.ravel() >= 0
    return np.bincount(idx[keep], weights=delta.ravel()[keep], minlength=L * n_groups).reshape(L, n_groups)


def v2_toxic_share(attr: Attribution, k: int = 128) -> dict:
    """The v2 '4.9%' figure: sum of delta over the top-k-by-cos neurons with base act > 0
    and adiff > 0 (dampened), over the gross reduction sum_{delta>0} delta."""
    top = top_k_by_cos(attr.cos, k)
    d, a, ad = attr.delta.ravel()[top], attr.act_base.ravel()[top], attr.adiff.ravel()[top]
    sel = (a > 0) & (ad > 0)
    gross = float(attr.delta[attr.delta > 0].sum())
    num = float(d[sel].sum())
    return {"k": int(k), "n_selected": int(sel.sum()), "numerator": num, "gross_reduction": gross,
            "share": num / gross if gross > 0 else float("nan")}


def early_share_of_gross(attr: Attribution) -> dict:
    """Claim Q4: the share of the gross reduction ``sum_{delta_i > 0} delta_i`` that the first
    ``EARLY_POSITIONS`` positions contribute, over the same neurons. With the shift spread evenly
    over T positions it is EARLY_POSITIONS / T."""
    if attr.delta_early is None:
        return {"share": float("nan"), "gross_reduction": float("nan"), "early": float("nan")}
    pos = attr.delta > 0
    gross = float(attr.delta[pos].sum())
    early = float(attr.delta_early[pos].sum())
    return {"share": early / gross if gross > 0 else float("nan"), "gross_reduction": gross, "early": early}


def summarize(attr: Attribution, *, top_k: int = 128) -> dict:
    """The paper's aggregate figures for one attribution, as plain JSON-able values."""
    d = attr.delta
    pos, neg = d > 0, d < 0
    n = d.size
    counts_a, sums_a = group_sums(attr.group_a, d)
    counts_b, sums_b = group_sums(attr.group_b, d)
    gross_red = float(d[pos].sum())
    red_a_total = float(sums_a[:4].sum())
    share_b = {g: (float(sums_b[i]) / gross_red if gross_red > 0 else float("nan"))
               for i, g in enumerate(GROUPS_B[:4])}
    share_a = {g: (float(sums_a[i]) / red_a_total if red_a_total > 0 else float("nan"))
               for i, g in enumerate(GROUPS_A[:4])}
    return {
        "n_neurons": int(n),
        "net": float(d.sum()),
        "gross_reduction": gross_red,
        "gross_increase": float(d[neg].sum()),
        "delta_act_total": float(attr.delta_act.sum()),
        "delta_weight_total": float(attr.delta_weight.sum()),
        "n_delta_positive": int(pos.sum()),
        "n_delta_negative": int(neg.sum()),
        "n_delta_zero": int((d == 0).sum()),
        "frac_delta_positive": float(pos.mean()),
        "frac_delta_negative": float(neg.mean()),
        "per_layer": {
            "net": d.sum(1).tolist(),
            "gross_reduction": np.where(pos, d, 0).sum(1).tolist(),
            "gross_increase": np.where(neg, d, 0).sum(1).tolist(),
            "group_b": {g: col.tolist() for g, col in
                        zip(GROUPS_B, per_layer_group_sums(attr.group_b, d).T)},
            "group_a": {g: col.tolist() for g, col in
                        zip(GROUPS_A, per_layer_group_sums(attr.group_a, d).T)},
        },
        "group_a": {g: {"count": int(counts_a[i]), "sum_delta": float(sums_a[i])}
                    for i, g in enumerate(GROUPS_A)},
        "group_a_share": share_a,
        "group_a_excluded": int((attr.group_a < 0).sum()),
        "group_b": {g: {"count": int(counts_b[i]), "sum_delta": float(sums_b[i])}
                    for i, g in enumerate(GROUPS_B)},
        "group_b_share": share_b,
        "group_b_excluded": int((attr.group_b < 0).sum()),
        "toxic_neurons_v2": v2_toxic_share(attr, top_k),
    }
