"""A baseline: fail when a checkpoint's mechanism got worse than the last release's.

``--baseline`` names either a previous run's ``claims.json`` (a release's report, kept as a CI
artifact) or another model source. With a model, both candidates run on the same base,
prompts and probe, and the comparison is *paired*: the same prompt chunks and the same
bootstrap weights give the interval of the difference. With a ``claims.json`` the baseline's
values and intervals are fixed; the interval of the difference combines both half-widths in
quadrature (as for independent samples: the same prompts make the true interval narrower, so
this errs towards not crying wolf).

The rule, per check, on the difference d = candidate − baseline, signed so that ``worse`` > 0
moves against the check's direction (down for ``>=``, up for ``<=``), with tolerance ``tol``:

``regressed``     the whole 95% interval of ``worse`` lies beyond ``tol``: significant *and*
                  material. The claim fails, even when its absolute threshold still holds.
``inconclusive``  the point is beyond ``tol`` but the interval is not: reported, does not fail.
``improved``      the whole interval of ``worse`` lies below ``-tol``.
``same``          otherwise.

A value that is not resampled (perplexity on a fixed text) has no interval: its difference is
read at the point. The tolerance is ``[tool.mechclaims.regression]`` for that claim (or
``Cx.check``), else the larger of 10% of the threshold, 10% of the baseline's own value, and
0.01: scale-aware, so a net projection of 4.6 may move by 0.46 and a share by 0.025.

Error rates: with no true change, a false alarm needs the near end of a 95% interval (2.5% on
each side) to clear a tolerance of at least 10% of the value, so for one check it is below 2.5%
and, where the interval's half-width is smaller than the tolerance, far below. Measured on four
honest retrains against a release (docs/gating.md, "Measured"): no false alarm.

The ratchet: a claim that did not hold in the baseline (fail, inconclusive, not meaningful) and
does not hold now fails the candidate only if one of its checks regressed; otherwise it is a
*known failure since the baseline* (pytest ``xfail``). A claim that was measured in the baseline
and is not measured now has *lost coverage*: a regression. A baseline made with other prompts,
probe, positions, token counts, base, scorer or perplexity text is refused, naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_RELATIVE_TOLERANCE = 0.1
MINIMUM_TOLERANCE = 0.01
#: A claim that ran in the baseline with one of these statuses was measured there.
MEASURED = ("pass", "fail", "inconclusive", "not_meaningful")
#: (where in claims.json, what it is called) of every setting a baseline must share.
MUST_MATCH = (
    (("provenance", "prompts", "sha256"), "the prompts (sha256)"),
    (("provenance", "probe", "sha256"), "the probe (sha256)"),
    (("provenance", "base", "sha256"), "the base model (sha256)"),
    (("provenance", "settings", "positions"), "--positions"),
    (("provenance", "settings", "max_new_tokens"), "--max-new-tokens"),
    (("provenance", "settings", "max_prompt_tokens"), "max_prompt_tokens"),
    (("inputs", "scorer_sha256"), "the toxicity scorer (--scorer, content sha256)"),
    (("inputs", "ppl_text_sha256"), "the perplexity text (--ppl-text, sha256)"),
    (("inputs", "perplexity"), "the perplexity settings"),
)


def is_report(path: str) -> bool:
    return str(path).lower().endswith(".json") and Path(path).expanduser().is_file()


def read_report(path: str) -> dict:
    from .schema import read_claims_json  # parsed and validated: version, provenance, claims, finite values

    return read_claims_json(path, f"--baseline {path!r}")


def _get(doc: dict, keys: tuple) -> object:
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def check_compatible(doc: dict, mine: dict, label: str) -> None:
    """Refuse a baseline report made under other settings; ``mine`` has the same layout and
    records every setting, so one the baseline does not record is refused too (never skipped)."""
    for keys, what in MUST_MATCH:
        theirs, ours = _get(doc, keys), _get(mine, keys)
        if theirs != ours:
            there = "not recorded there" if theirs is None else f"{theirs!r} there"
            raise ConfigError(
                f"--baseline {label} differs from this run in {what}: {there}, {ours!r} here. A "
                "baseline is only comparable on the same base, prompts, probe, scorer, perplexity text and "
                "settings; rerun the release with this run's settings (and this mechclaims version), or drop "
                "--baseline.")


def report_values(doc: dict) -> dict[str, dict[str, float]]:
    """{claim id: {check name: value}} of the claims that were measured in a report."""
    out = {}
    for c in doc.get("claims", []):
        if c.get("status") in MEASURED:
            vals = {k["name"]: k["value"] for k in c.get("checks", []) if _finite_number(k.get("value"))}
            if vals:
                out[c["id"]] = vals
    return out


def report_half_widths(doc: dict) -> dict[str, dict[str, float]]:
    """{claim id: {check name: half-width of its 95% interval}} where the report has one."""
    out: dict[str, dict[str, float]] = {}
    for c in doc.get("claims", []):
        for k in c.get("checks", []):
            ci = k.get("ci")
            if isinstance(ci, list) and len(ci) == 2 and all(_finite_number(x) for x in ci):
                out.setdefault(c["id"], {})[k["name"]] = (float(ci[1]) - float(ci[0])) / 2.0
    return out


def report_statuses(doc: dict) -> dict[str, str]:
    """{claim id: status} of every claim in a report (schema 1's pass/fail/skip included)."""
    return {c["id"]: str(c.get("status")) for c in doc.get("claims", []) if isinstance(c, dict) and "id" in c}


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def tolerance(cid: str, check, table, baseline_value: float | None = None) -> float:
    """The configured tolerance, else max(0.1 x |threshold|, 0.1 x |baseline value|, 0.01)."""
    own = table.get(cid, {})
    for key in (check.name, "*"):
        if key in own:
            return float(own[key])
    scale = max(abs(check.threshold), abs(baseline_value) if baseline_value is not None else 0.0)
    return max(MINIMUM_TOLERANCE, DEFAULT_RELATIVE_TOLERANCE * scale)


STATES = ("regressed", "inconclusive", "improved", "same")


@dataclass
class Comparison:
    """One check against the baseline. ``lo``/``hi``: the 95% interval of the difference (None
    when the value is not resampled); ``state``: one of ``STATES``."""

    baseline: float
    diff: float
    lo: float | None
    hi: float | None
    tolerance: float
    state: str
    paired: bool = True

    @property
    def regressed(self) -> bool:
        return self.state == "regressed"

    def as_dict(self) -> dict:
        return {"baseline": self.baseline, "diff": self.diff,
                "ci": None if self.lo is None else [self.lo, self.hi], "tolerance": self.tolerance,
                "state": self.state, "regressed": self.regressed, "paired": self.paired}

    def message(self, value: float) -> str:
        ci = "" if self.lo is None else f" [{self.lo:+.4g}, {self.hi:+.4g}]"
        what = {"regressed": "worse beyond the tolerance",
                "inconclusive": "possibly worse (interval not wholly beyond)",
                "improved": "better beyond the tolerance", "same": "within the tolerance"}[self.state]
        return f"{value:.4g} vs baseline {self.baseline:.4g} ({self.diff:+.4g}{ci}): {what} {self.tolerance:.3g}"


def compare(check, value: float, baseline: float, diff_ci: tuple[float, float] | None, tol: float,
            *, paired: bool = True) -> Comparison:
    """Apply the rule of the module docstring; ``diff_ci`` None: no interval, read the point."""
    diff = value - baseline
    sign = -1.0 if check.op in (">", ">=") else 1.0  # worse = sign x diff > 0 moves against the claim
    worse = sign * diff
    if diff_ci is None:
        w_lo = w_hi = worse
    else:
        w_lo, w_hi = sorted((sign * diff_ci[0], sign * diff_ci[1]))
    if not math.isfinite(worse):
        state = "inconclusive"
    elif w_lo > tol:
        state = "regressed"
    elif worse > tol:
        state = "inconclusive"
    elif w_hi < -tol:
        state = "improved"
    else:
        state = "same"
    lo, hi = (None, None) if diff_ci is None else diff_ci
    return Comparison(baseline, diff, lo, hi, tol, state, paired)
