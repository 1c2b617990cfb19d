"""Behavioural claims (need generation + a toxicity scorer, perplexity, interventions).

C1 (DPO lowers toxicity), C2 (fluency preserved), C5 (patching the top-256 toxic neurons
recovers ≤ 25% of DPO's drop), C14 (ablation is not enough), C15–C17 (patching the groups),
C18 (activation editing), C21–C22 (Lee et al.'s interventions) land here with the
interventions and scorers of the behavioural-claims issue. They are declared with the same
``@claim`` decorator; their metrics will read the intervention results instead of the
attribution.
"""
