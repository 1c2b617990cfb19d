"""What a claim's numbers mean for a release: readings, inconclusive verdicts, preconditions.

A claim's checks are read in one of two ways (``[tool.mechclaims] reading``):

``point``     the paper's reading: the point estimate must meet the threshold. A 95% interval that
              straddles the threshold is flagged *unstable* but the verdict is the point's. For
              research runs that reproduce a paper's numbers.
``interval``  the gate's reading (``-m gate``, ``--claims-strict``, a sweep or the TRL callback with
              ``select="gate"``): a check *passes* when its whole 95% interval meets the threshold,
              *fails* when its whole interval misses it, and is *inconclusive* in between; the message
              says about how many prompts would decide it. A value that is not resampled (a
              perplexity on a fixed text, the probe's held-out accuracy) is read at its value.
``auto``      (default) ``interval`` when the run selects the gate (``-m gate``) or is strict,
              ``point`` otherwise.

A claim's status is one of ``STATUSES``. A status that is not ``pass`` fails the claim's test
(pytest exit 1), except:

* ``skip``: an exploratory claim that does not apply or could not be checked (a ``gate`` claim
  in that case is ``not_checked`` and fails: the gate never goes green on what it did not check);
* a *known failure*: the claim already failed (or was inconclusive or not meaningful) in the
  ``--baseline`` and did not get worse, or it is in ``[tool.mechclaims] accepted``; pytest
  reports it as ``xfail`` (see ``mechclaims.baseline`` for "worse").

Preconditions (``claim.PRECONDITIONS``): a claim whose precondition failed or was itself not
meaningful is ``not_meaningful`` (a model whose perplexity rose x248 is not "detoxified by four
groups of neurons", whatever the shares say).
"""

from __future__ import annotations

import math

#: Every status a claim can end in, worst first (the order of the report's counts).
STATUSES = ("fail", "inconclusive", "not_meaningful", "not_checked", "pass", "skip")
#: Statuses that mean "measured, and not shown to hold".
NOT_HOLDING = ("fail", "inconclusive", "not_meaningful")
READINGS = ("auto", "point", "interval")
#: Fewer prompt chunks than this give no interval: a bootstrap over 2-7 units has too few
#: distinct resamples for a 95% percentile interval to mean anything.
MIN_CHUNKS = 8


def resolve_reading(reading: str, *, strict: bool = False, gate_selected: bool = False) -> str:
    """``auto`` -> ``interval`` for a gate run (``-m gate``) or a strict run, else ``point``."""
    if strict:
        return "interval"
    if reading == "auto":
        return "interval" if gate_selected else "point"
    return reading


def check_verdict(check, value: float, lo: float, hi: float, has_interval: bool, reading: str) -> str:
    """``pass`` / ``fail`` / ``inconclusive`` for one check (``value`` finite and in range)."""
    if reading == "point" or not check.resampled:
        return "pass" if check.holds(value) else "fail"
    if not has_interval:
        return "inconclusive"
    lo_ok, hi_ok = check.holds(lo), check.holds(hi)
    if lo_ok and hi_ok:
        return "pass"
    if not lo_ok and not hi_ok:
        return "fail"
    return "inconclusive"


def prompts_to_decide(value: float, lo: float, hi: float, threshold: float, n_prompts: int) -> int | None:
    """About how many prompts would make the interval clear the threshold, if the effect stays
    where it is: the half-width shrinks as 1/sqrt(n). None when the value sits on the threshold."""
    half = (hi - lo) / 2.0
    gap = abs(value - threshold)
    if not (math.isfinite(half) and half > 0 and gap > 0):
        return None
    return int(math.ceil(n_prompts * (half / gap) ** 2 * 1.1))  # 10% margin: the estimate moves too


def inconclusive_reason(check, value: float, lo: float, hi: float, has_interval: bool, n_prompts: int) -> str:
    name = check.label or check.name
    if not has_interval:
        return (f"inconclusive: {name} = {value:.4g} has no interval (too few resamples or prompt chunks; "
                f"at least {MIN_CHUNKS} chunks and --bootstrap >= 20 are needed), so the gate cannot tell")
    need = prompts_to_decide(value, lo, hi, check.threshold, n_prompts)
    more = (f"about {need} prompts (now {n_prompts}) would decide it if the effect stays the same"
            if need is not None else "the value sits on the threshold: more prompts will not decide it")
    return (f"inconclusive: {name} = {value:.4g}, 95% interval [{lo:.4g}, {hi:.4g}] straddles "
            f"{check.op} {check.threshold:g}; {more}")


def pytest_outcome(result) -> str:
    """``passed`` / ``failed`` / ``xfailed`` / ``skipped`` for a claim's test."""
    if result.status == "pass":
        return "passed"
    if result.status == "skip":
        return "skipped"
    if result.known_failure and not result.regressed and result.status != "not_checked":
        return "xfailed"
    return "failed"
