"""The probe reads toxicity: its held-out accuracy (Lee et al. §3; Yang et al. §3.1).

Every projection claim reads the model through the probe; a probe near chance makes them
statements about noise. Trained with ``mechclaims probe train``, a probe carries its held-out
accuracy in its metadata; a probe without one is skipped, never passed.

That accuracy was measured on the model the probe was trained on, whose sha256 it also records
(``model_sha256``): a probe trained on another model than this run's base fails, with both
hashes in the message. Models are hashed by their files' content, so the same base named
``organism:gpt2-base`` or by its directory is the same model.
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


def _trained_on(ctx) -> str:
    """The sha256 of the model the probe was trained on, as its metadata records it ('' if not)."""
    sha = ctx.probe_metadata.get("model_sha256")
    return sha if isinstance(sha, str) else ""


def _on_this_base(ctx) -> float:
    """1.0 when the probe was trained on this run's base (or the probe or the run does not say), else 0.0."""
    trained, base = _trained_on(ctx), getattr(ctx, "base_sha256", "")
    return 0.0 if trained and base and trained != base else 1.0


def _explain(ctx) -> str:
    if _on_this_base(ctx):
        return ""
    return (f"the probe was trained on another model (sha256 {_trained_on(ctx)[:12]}, its metadata's "
            f"model_sha256) than this run's base (sha256 {ctx.base_sha256[:12]}): its accuracy says nothing "
            "about this base. Train a probe on the base (`mechclaims probe train`) or pass the base it was "
            "trained on")


@claim("C24", "probe-validity",
       statement="The toxicity probe separates toxic from clean text: held-out accuracy >= 0.90, "
                 "measured on this run's base model.",
       checks=[Check("heldout_accuracy", ">=", 0.90, "held-out accuracy of the probe", resampled=False),
               Check("trained_on_base", ">=", 1.0, "probe trained on this run's base (1 yes, 0 another model)",
                     resampled=False, fixed=True)],
       source="Lee et al. §3 (probe accuracy 94%); Yang et al. §3.1",
       paper_value="GPT-2 medium probe: 0.94 held-out accuracy", applies=_has_heldout_accuracy, needs="A",
       tags=("gate",), requires=(), explain=_explain)
def test_C24_probe_validity(a, ctx):
    return {"heldout_accuracy": _heldout_accuracy(ctx), "trained_on_base": _on_this_base(ctx)}
