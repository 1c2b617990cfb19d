"""DPO lowers the toxicity projection, through many small, balanced shifts (paper §2.5).

Every metric here is a function of the per-neuron attribution (``mechclaims.attribution``);
thresholds are the paper's, as each claim's ``source`` and ``paper_value`` cite them.
"""

from mechclaims.claim import Check, claim
from mechclaims.metrics import gross_reduction, net, null_r_bound, pearson, pearson_pvalue


def _no_change(a, ctx):
    if not (a.delta != 0).any():
        return "no neuron's projection changed (delta is 0 everywhere): nothing to attribute"
    return None


@claim("C0", "net-reduction",
       statement="DPO lowers the MLP layers' toxicity projection: the net sum of per-neuron "
                 "deltas is positive.",
       checks=[Check("net", ">", 0.0, "net Σ Δ")],
       source="v2 equation; figures/contribution_plot_*.ipynb",
       paper_value="GPT-2 medium 7.216; Gemma-2 0.175; Mistral 0.314", tags=("gate",))
def test_C0_net_reduction(a, ctx):
    return {"net": net(a)}


@claim("C8", "distributed-shifts",
       statement="Most neurons contribute: the fraction of neurons with Δ > 0 lies in "
                 "[0.50, 0.70], and many (≥ 30%) increase toxicity.",
       checks=[Check("frac_positive", ">=", 0.50, "fraction Δ > 0"),
               Check("frac_positive_max", "<=", 0.70, "fraction Δ > 0 (upper)"),
               Check("frac_negative", ">=", 0.30, "fraction Δ < 0")],
       source="contribution_plot_*.ipynb stacked-bar cell",
       paper_value="Δ>0: GPT-2 0.585, Llama 0.530, Gemma 0.518, Mistral 0.520")
def test_C8_distributed_shifts(a, ctx):
    pos = float((a.delta > 0).mean())
    return {"frac_positive": pos, "frac_positive_max": pos, "frac_negative": float((a.delta < 0).mean())}


@claim("C9", "balancing",
       statement="Reductions are largely offset by increases: net Σ Δ > 0 but net / gross "
                 "reduction ≤ 0.25.",
       checks=[Check("net", ">", 0.0, "net Σ Δ"), Check("net_over_gross", "<=", 0.25, "net / gross")],
       source="contribution_plot_*.ipynb", paper_value="0.150 / 0.040 / 0.053 / 0.067",
       applies=_no_change)
def test_C9_balancing(a, ctx):
    g = gross_reduction(a)
    return {"net": net(a), "net_over_gross": net(a) / g if g > 0 else float("nan")}


def _c10_applies(a, ctx):
    if not (a.adiff != 0).any():
        return "no activation changed: the correlation is undefined"
    return None


@claim("C10", "shifts-not-targeted",
       statement="Activation shifts are not targeted by toxic alignment: |Pearson(adiff, cos)| "
                 "is below max(0.01, the 1% two-sided null bound z/√(N−3)). The paper's 0.01 was "
                 "set on 98,304 neurons, where pure noise gives |r| ≈ 0.003; on N neurons the "
                 "noise scales as 1/√N, so small models get the significance bound instead.",
       checks=[Check("excess_abs_r", "<", 0.0, "|r| − max(0.01, z₀.₉₉₅/√(N−3))")],
       source="contribution_plot_*.ipynb", paper_value="r = 0.0037 (p 0.25) / 0.0010 / 0.0037 / 0.0030",
       applies=_c10_applies)
def test_C10_shifts_not_targeted(a, ctx):
    r = pearson(a.adiff, a.cos)
    n = a.delta.size
    return {"excess_abs_r": abs(r) - max(0.01, null_r_bound(n)), "r": r,
            "p_value": pearson_pvalue(r, n), "bound": max(0.01, null_r_bound(n))}
