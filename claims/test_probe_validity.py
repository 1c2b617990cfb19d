"""The probe reads toxicity: its held-out accuracy (Lee et al. §3; Yang et al. §3.1).

Every projection claim reads the model through the probe; a probe near chance makes them
statements about noise. Trained with ``mechclaims probe train``, a probe carries its held-out
accuracy in its metadata; a probe without one is skipped, never passed.
"""

import math

from mechclaims.claim import Check, claim

NO_ACCURACY_REASON = ("the probe carries no held-out accuracy (train it with `mechclaims probe train`, "
                      "which records it)")


def _heldout_accuracy(ctx):
    acc = ctx.probe_metadata.get("heldout_accuracy")
    if isinstance(acc, bool):
        return None
    try:
        acc = float(acc)
    except (TypeError, ValueError):
        return None
    return acc if math.isfinite(acc) else None


def _has_heldout_accuracy(a, ctx):
    return None if _heldout_accuracy(ctx) is not None else NO_ACCURACY_REASON


@claim("C24", "probe-validity",
       statement="The toxicity probe separates toxic from clean text: held-out accuracy >= 0.90.",
       checks=[Check("heldout_accuracy", ">=", 0.90, "held-out accuracy of the probe")],
       source="Lee et al. §3 (probe accuracy 94%); Yang et al. §3.1",
       paper_value="GPT-2 medium probe: 0.94 held-out accuracy", applies=_has_heldout_accuracy, needs="A",
       tags=("gate",))
def test_C24_probe_validity(a, ctx):
    return {"heldout_accuracy": _heldout_accuracy(ctx)}
