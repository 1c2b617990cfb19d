"""Four neuron groups, two reducing toxicity and two promoting anti-toxicity (paper §1(e), §2.4)."""

from mechclaims.claim import Check, claim
from mechclaims.metrics import (canonical_fraction, cell_reduce_fractions, group_mean_relative_change,
                                layer_halves, needs_reduction, shares_b)


@claim("C6", "no-dominant-group",
       statement="No Definition-B group (TP↓, TN↓, AP↓, AN↓) exceeds 50% of the gross "
                 "reduction, and each gives at least 5%.",
       checks=[Check("max_share", "<=", 0.50, "largest group share"),
               Check("min_share", ">=", 0.05, "smallest group share")],
       source="contribution_plot_*.ipynb stacked-bar cell",
       paper_value="max 37/26/31/34%, min 7/24/19/15% (GPT-2/Llama/Gemma/Mistral)",
       applies=needs_reduction)
def test_C6_no_dominant_group(a, ctx):
    s = shares_b(a)
    return {"max_share": max(s.values()), "min_share": min(s.values()), **s}


@claim("C7", "anti-toxic-groups-matter",
       statement="The anti-toxic-aligned groups (AP↓ + AN↓) give at least 30% of the gross reduction.",
       checks=[Check("share", ">=", 0.30, "share of AP↓ + AN↓")],
       source="contribution_plot_*.ipynb", paper_value="0.44 / 0.50 / 0.49 / 0.49",
       applies=needs_reduction)
def test_C7_anti_toxic_groups_matter(a, ctx):
    s = shares_b(a)
    return {"share": s["AP↓"] + s["AN↓"]}


def _needs_positive(a, ctx):
    if not (a.delta > 0).any():
        return "no neuron has Δ > 0: there is no reducing group to describe"
    return None


@claim("C11", "shift-directions",
       statement="Within the ↓ groups, TP↓ and AN↓ shrink in magnitude (mean relative change "
                 "> 0) while TN↓ and AP↓ grow (< 0); ≥ 80% of Δ > 0 neurons moved the "
                 "canonical way (TP-, TN+, AP+, AN-).",
       checks=[Check("TP↓", ">", 0.0, "mean rel. change TP↓"), Check("AN↓", ">", 0.0, "mean rel. change AN↓"),
               Check("TN↓", "<", 0.0, "mean rel. change TN↓"), Check("AP↓", "<", 0.0, "mean rel. change AP↓"),
               Check("canonical", ">=", 0.80, "canonical fraction of Δ > 0")],
       source="contribution_plot_*.ipynb cells 16, 23",
       paper_value="GPT-2: +15.4/+6.6/−3.6/−7.6 %, canonical 0.849 (0.938–0.957 others)",
       applies=_needs_positive)
def test_C11_shift_directions(a, ctx):
    return {**group_mean_relative_change(a), "canonical": canonical_fraction(a)}


@claim("C12", "shrink-asymmetry",
       statement="Magnitude shrinking reduces toxicity more often than growing: the fraction of "
                 "neurons with Δ > 0 is higher in TP than TN, and in AN than AP.",
       checks=[Check("TP_minus_TN", ">", 0.0, "frac_reduce(TP) − frac_reduce(TN)"),
               Check("AN_minus_AP", ">", 0.0, "frac_reduce(AN) − frac_reduce(AP)")],
       source="contribution_plot_*.ipynb cells 20–21", paper_value="GPT-2 68.8 > 53.7; 66.4 > 27.3")
def test_C12_shrink_asymmetry(a, ctx):
    f = cell_reduce_fractions(a)
    return {"TP_minus_TN": f["TP"] - f["TN"], "AN_minus_AP": f["AN"] - f["AP"]}


@claim("C13", "later-layers-dominate",
       statement="Later layers dominate: the net reduction of the later half of layers exceeds "
                 "the earlier half's, and TP↓ + AN↓ give most of the reduction in the last third.",
       checks=[Check("late_minus_early", ">", 0.0, "net(late half) − net(early half)"),
               Check("tp_an_share_last_third", ">", 0.5, "TP↓+AN↓ share, last third")],
       source="v1 Fig. 3 caption (qualitative; exploratory)", paper_value="GPT-2 medium: qualitative only",
       applies=_needs_positive, tags=("exploratory",))
def test_C13_later_layers_dominate(a, ctx):
    return layer_halves(a)
