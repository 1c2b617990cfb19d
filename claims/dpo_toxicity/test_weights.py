"""DPO barely moves the value vectors; the change is in the activations (paper A15, C19)."""

import numpy as np

from mechclaims.claim import Check, claim
from mechclaims.metrics import pearson


@claim("C19", "value-vectors-barely-change",
       statement="Value vectors barely change: the median |cos(v_base, w) − cos(v_dpo, w)| is "
                 "below 1e-3 and Pearson(cos_base, cos_dpo) exceeds 0.999.",
       checks=[Check("median_abs_cos_change", "<", 1e-3, "median |Δcos|"),
               Check("pearson_cos", ">", 0.999, "Pearson(cos_base, cos_dpo)")],
       source="all_neuron_metrics.csv; e.g. neuron (0,0) 0.020808 vs 0.020818",
       paper_value="GPT-2 medium, Gemma-2 (Llama unusable: 8-bit weights, A6)")
def test_C19_value_vectors_barely_change(a, ctx):
    return {"median_abs_cos_change": float(np.median(np.abs(a.cos - a.cos_dpo))),
            "pearson_cos": pearson(a.cos, a.cos_dpo)}
