"""A baseline: fail when a checkpoint's mechanism got worse than the last release's.

``--baseline`` names either a previous run's ``claims.json`` (a release's report, kept as a CI
artifact) or another model source. With a model, both candidates run on the same base,
prompts and probe, and the comparison is *paired*: the same prompt chunks and the same
bootstrap weights give the interval of the difference. With a ``claims.json`` the baseline's
values are taken as fixed and the interval is the candidate's, shifted.

A check *regresses* when the difference (candidate − baseline) moves against the check's
direction (down for ``>=``, up for ``<=``) by more than its tolerance: the value under
``[tool.mechclaims.regression]`` for that claim (or ``Cx.check``), else the default
``max(0.01, 0.1 × |threshold|)``. A regression fails the claim even when the absolute threshold
still passes. A baseline made with other prompts, probe, positions, token counts or base is
refused, naming the setting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_RELATIVE_TOLERANCE = 0.1
MINIMUM_TOLERANCE = 0.01
#: (where in claims.json, what it is called) of every setting a baseline must share.
MUST_MATCH = (
    (("provenance", "prompts", "sha256"), "the prompts (sha256)"),
    (("provenance", "probe", "sha256"), "the probe (sha256)"),
    (("provenance", "base", "sha256"), "the base model (sha256)"),
    (("provenance", "settings", "positions"), "--positions"),
    (("provenance", "settings", "max_new_tokens"), "--max-new-tokens"),
    (("provenance", "settings", "max_prompt_tokens"), "max_prompt_tokens"),
)


def is_report(path: str) -> bool:
    return str(path).lower().endswith(".json") and Path(path).expanduser().is_file()


def read_report(path: str) -> dict:
    p = Path(path).expanduser()
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--baseline {path!r} is not a readable claims.json ({exc}); pass a claims.json "
                          "written by an earlier mechclaims run, or a model source.") from exc
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("mechclaims.claims/"):
        raise ConfigError(f"--baseline {path!r} is not a mechclaims claims.json (no 'schema': "
                          "'mechclaims.claims/...'); pass the claims.json of an earlier run.")
    return doc


def _get(doc: dict, keys: tuple) -> object:
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def check_compatible(doc: dict, mine: dict, label: str) -> None:
    """Refuse a baseline report made under other settings; ``mine`` has the same layout."""
    for keys, what in MUST_MATCH:
        theirs, ours = _get(doc, keys), _get(mine, keys)
        if theirs is not None and ours is not None and theirs != ours:
            raise ConfigError(
                f"--baseline {label} was made with other {what}: {theirs!r} there, {ours!r} here. A "
                "baseline is only comparable on the same base, prompts, probe and settings; rerun the "
                "release with this run's settings, or drop --baseline.")


def report_values(doc: dict) -> dict[str, dict[str, float]]:
    """{claim id: {check name: value}} of the claims that ran (not skipped) in a report."""
    out = {}
    for c in doc.get("claims", []):
        if c.get("status") in ("pass", "fail"):
            vals = {k["name"]: k["value"] for k in c.get("checks", []) if isinstance(k.get("value"), (int, float))}
            if vals:
                out[c["id"]] = vals
    return out


def tolerance(cid: str, check, table) -> float:
    own = table.get(cid, {})
    for key in (check.name, "*"):
        if key in own:
            return float(own[key])
    return max(MINIMUM_TOLERANCE, DEFAULT_RELATIVE_TOLERANCE * abs(check.threshold))


@dataclass
class Comparison:
    """One check against the baseline."""

    baseline: float
    diff: float
    lo: float
    hi: float
    tolerance: float
    regressed: bool

    def as_dict(self) -> dict:
        return {"baseline": self.baseline, "diff": self.diff, "ci": [self.lo, self.hi],
                "tolerance": self.tolerance, "regressed": self.regressed}

    def message(self, value: float) -> str:
        return (f"{value:.4g} vs baseline {self.baseline:.4g} ({self.diff:+.4g} [{self.lo:+.4g}, {self.hi:+.4g}]) "
                f"exceeds tolerance {self.tolerance:g}")


def compare(check, value: float, baseline: float, diff_ci: tuple[float, float], tol: float) -> Comparison:
    diff = value - baseline
    worse = -diff if check.op in (">", ">=") else diff  # > 0 means moved against the claim
    regressed = math.isfinite(worse) and worse > tol
    return Comparison(baseline, diff, diff_ci[0], diff_ci[1], tol, regressed)
