""""Toxic neurons" explain little of DPO's effect (paper §1(d), §2.3; Lee et al.)."""

import numpy as np

from mechclaims.claim import Check, claim
from mechclaims.metrics import needs_group_a_reduction, needs_reduction, shares_a, top_k_by_cos, v2_toxic_share


@claim("C3", "v2-toxic-neuron-share",
       statement="The top-128 toxic-aligned neurons (by cos) that are positively activated and "
                 "were dampened by DPO account for < 10% of the gross reduction.",
       checks=[Check("share", "<", 0.10, "Σ Δ(top-128, act>0, dampened) / Σ_{Δ>0} Δ")],
       source="v2 abstract; figures/eda_activation.ipynb cells 6, 8",
       paper_value="GPT-2 medium 0.049 (2.333 / 47.963)", applies=needs_reduction, tags=("gate",))
def test_C3_v2_toxic_neuron_share(a, ctx):
    s = v2_toxic_share(a, ctx.top_k)
    return {"share": s["share"], "n_selected": s["n_selected"]}


@claim("C4", "v1-tp-minus-share",
       statement="The dampened toxic-aligned, positively activated neurons (Definition A, TP-) "
                 "give less than half of the four reducing groups' total.",
       checks=[Check("share", "<", 0.50, "Σ Δ(TP-) / Σ Δ(TP-, TN+, AP+, AN-)")],
       source="v1 abstract; figures/group_neurons_gpt2.ipynb cell 29",
       paper_value="GPT-2 medium 0.318 (15.111 / 47.484)", applies=needs_group_a_reduction)
def test_C4_v1_tp_minus_share(a, ctx):
    return {"share": shares_a(a)["TP-"]}


def _gelu_only(a, ctx):
    if ctx.gated_mlp:
        return ("gated MLP: activations are signed products act(gate)·up, about half negative "
                "by construction; the claim is about GELU models (paper: ~0.5 expected)")
    return None


@claim("C20", "toxic-neurons-negatively-activated",
       statement="Most of the top-128 toxic neurons (by cos) have a negative mean base "
                 "activation (GELU models).",
       checks=[Check("frac_negative", ">", 0.5, "fraction of top-128 with act < 0")],
       source="v1 Fig. 4; activation_patching_gpt2.ipynb cell 45", paper_value="GPT-2 medium 92/128 = 0.72",
       applies=_gelu_only, tags=("exploratory",))
def test_C20_toxic_neurons_negatively_activated(a, ctx):
    top = top_k_by_cos(a.cos, ctx.top_k)
    return {"frac_negative": float((a.act_base.ravel()[top] < 0).mean())}


@claim("C23", "activation-drop",
       statement="The mean activation of the top-5 toxic value vectors is lower after DPO "
                 "(Lee et al.'s activation drop).",
       checks=[Check("drop", ">", 0.0, "mean act_base − act_dpo over the top-5 by cos")],
       source="Lee et al. 2024, Fig. 2", paper_value="GPT-2 medium: drop shown, no number", tags=("exploratory",))
def test_C23_activation_drop(a, ctx):
    top = top_k_by_cos(a.cos, 5)
    return {"drop": float(np.mean(a.adiff.ravel()[top]))}
