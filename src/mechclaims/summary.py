"""What CI shows of a claim run: one verdict line, and a markdown summary for the job page.

Pure functions over a ``claims.json`` document (``report.build_document``, or the file read
back), so the plugin, ``mechclaims diff`` and the sweep render the same words::

    mechclaims: FAILED — 2 failed (C5, S1), 1 regressed (C6), 1 inconclusive (C14), 1 not checked (C2),
                18 passed, 3 known failures (C1, C9, C10)

Every claim that ran is in exactly one group (``group_claims``): a known failure (pytest
``xfail``) is counted there only, a regressed claim under *regressed* only, the rest by status.
The verdict is FAILED when any claim is in a failing group (``FAILING``), else PASSED.

``markdown`` is what the plugin appends to ``$GITHUB_STEP_SUMMARY``: the verdict as a header,
then one table row per claim (claim, status, value [95% CI], threshold, baseline Δ, reason).

Ground floor: no torch, no numpy.
"""

from __future__ import annotations

import math

#: (group, words in the verdict line), in the order the line lists them.
GROUPS = (
    ("failed", "failed"),
    ("regressed", "regressed"),
    ("inconclusive", "inconclusive"),
    ("not_checked", "not checked"),
    ("not_meaningful", "not meaningful"),
    ("passed", "passed"),
    ("known_failure", "known failure"),
    ("skipped", "skipped"),
)
#: Groups whose claims fail the run (their pytest tests fail).
FAILING = ("failed", "regressed", "inconclusive", "not_checked", "not_meaningful")
#: Groups whose members the line counts without naming them (the common, unremarkable case).
_UNNAMED = ("passed", "skipped")
_BY_STATUS = {"fail": "failed", "inconclusive": "inconclusive", "not_checked": "not_checked",
              "not_meaningful": "not_meaningful", "pass": "passed", "skip": "skipped"}


def claim_id_key(cid: str) -> tuple:
    """Claims sort by letter, then number: C2 before C10 before S1."""
    letters = "".join(ch for ch in cid if not ch.isdigit())
    digits = "".join(ch for ch in cid if ch.isdigit())
    return (letters, int(digits) if digits else 10**9, cid)


def outcome(claim: dict) -> str:
    """The claim's pytest outcome; derived from the status for a document that lacks it."""
    out = claim.get("outcome")
    if out:
        return str(out)
    return {"pass": "passed", "skip": "skipped"}.get(str(claim.get("status")), "failed")


def group_of(claim: dict) -> str:
    """The one group of ``GROUPS`` a claim of a claims.json belongs to."""
    out = outcome(claim)
    if out == "xfailed":
        return "known_failure"
    if claim.get("regressed") and out == "failed":
        return "regressed"
    return _BY_STATUS.get(str(claim.get("status")), "failed")  # an unknown status never reads as a pass


def group_claims(doc: dict) -> dict[str, list[str]]:
    """{group: claim IDs in ID order} for every group of ``GROUPS`` (empty lists included)."""
    out: dict[str, list[str]] = {g: [] for g, _ in GROUPS}
    for c in sorted(doc.get("claims") or [], key=lambda c: claim_id_key(str(c.get("id", "")))):
        out[group_of(c)].append(str(c.get("id", "?")))
    return out


def verdict(doc: dict) -> str:
    """``FAILED`` when a claim's test fails, ``PASSED`` otherwise, ``NO CLAIMS`` when none ran."""
    groups = group_claims(doc)
    if not any(groups.values()):
        return "NO CLAIMS"
    return "FAILED" if any(groups[g] for g in FAILING) else "PASSED"


def verdict_line(doc: dict, prefix: str = "mechclaims") -> str:
    """``mechclaims: FAILED — 2 failed (C5, S1), 1 regressed (C6), ..., 18 passed, 1 known failure (C9)``."""
    groups = group_claims(doc)
    parts = []
    for g, words in GROUPS:
        ids = groups[g]
        if not ids:
            continue
        if g == "known_failure" and len(ids) != 1:
            words += "s"
        parts.append(f"{len(ids)} {words}" + ("" if g in _UNNAMED else f" ({', '.join(ids)})"))
    return f"{prefix}: {verdict(doc)} — " + (", ".join(parts) if parts else "no claim ran")


def setup_error_line(message: str, prefix: str = "mechclaims") -> str:
    """The verdict line of a run that stopped before any claim was checked (exit status 4)."""
    text = _one_line(message)
    text = text[len(prefix) + 2:] if text.startswith(prefix + ": ") else text  # pytest's UsageError has it already
    return f"{prefix}: SETUP ERROR (exit status 4) — no claim was checked: {text}"


# --- markdown ----------------------------------------------------------------------------------


def num(x, digits: int = 4) -> str:
    """A number as a report shows it: 4 significant digits; None (null in the JSON) as n/a."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def signed(x, digits: int = 4) -> str:
    return "n/a" if x is None else (f"{x:+.{digits}g}" if math.isfinite(x) else str(x))


def interval(ci, fmt=num) -> str:
    """``[lo, hi]``, or empty when the value has no interval (``ci: null``)."""
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        return ""
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def check_value(check: dict) -> str:
    """``label = value [lo, hi]``."""
    return f"{check.get('label') or check.get('name')} = {num(check.get('value'))}{interval(check.get('ci'))}"


def check_threshold(check: dict) -> str:
    return f"{check.get('op', '')} {num(check.get('threshold'))}".strip()


def check_baseline(check: dict) -> str:
    """``+0.15 [+0.08, +0.22] regressed (tolerance 0.07)``, or empty without a baseline."""
    b = check.get("baseline")
    if not isinstance(b, dict):
        return ""
    return (f"{signed(b.get('diff'))}{interval(b.get('ci'), signed)} {b.get('state', '')} "
            f"(tolerance {num(b.get('tolerance'), 3)})")


def status_words(claim: dict) -> str:
    """What the status column says: ``fail``, ``REGRESSED (fail)``, ``known failure (inconclusive)``."""
    g, status = group_of(claim), str(claim.get("status", "?")).replace("_", " ")
    if g == "known_failure":
        return f"known failure ({status})"
    if g == "regressed":
        return f"**REGRESSED** ({status})"
    return f"**{status.upper()}**" if g in FAILING else status


def md_cell(text: str) -> str:
    """Text safe inside a markdown table cell: no pipe, no line break, no HTML tag."""
    return _one_line(str(text)).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown(doc: dict, title: str | None = None) -> str:
    """The run as markdown: the verdict line as a header, then one row per claim."""
    head = f"### {md_cell(title or verdict_line(doc))}\n\n"
    claims = sorted(doc.get("claims") or [], key=lambda c: claim_id_key(str(c.get("id", ""))))
    if not claims:
        return head
    rows = ["| claim | status | value [95% CI] | threshold | baseline Δ | reason |",
            "|---|---|---|---|---|---|"]
    for c in claims:
        checks = [k for k in c.get("checks") or [] if isinstance(k, dict)]
        reason = c.get("reason") or ""
        if outcome(c) == "xfailed" and c.get("known_failure"):
            reason = f"{c['known_failure']}" + (f"; {reason}" if reason else "")
        cells = [md_cell(f"{c.get('id', '?')} {c.get('slug', '')}"), md_cell(status_words(c)),
                 "<br>".join(md_cell(check_value(k)) for k in checks),
                 "<br>".join(md_cell(check_threshold(k)) for k in checks),
                 "<br>".join(md_cell(check_baseline(k) or "–") for k in checks) if _has_baseline(checks) else "",
                 md_cell(reason)]
        rows.append("| " + " | ".join(cells) + " |")
    reading = doc.get("reading")
    foot = f"\n\nReading: {reading} ({_READINGS.get(reading, '')})." if reading else ""
    return head + "\n".join(rows) + foot + "\n"


_READINGS = {"point": "the point estimate decides each check",
             "interval": "the whole 95% interval must meet the threshold; an interval across it is inconclusive"}


def _has_baseline(checks: list[dict]) -> bool:
    return any(isinstance(k.get("baseline"), dict) for k in checks)


def setup_error_markdown(message: str) -> str:
    text = str(message).replace("```", "'''")
    return f"### {md_cell(setup_error_line(message))}\n\n```\n{text}\n```\n"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


__all__ = ["FAILING", "GROUPS", "group_claims", "group_of", "markdown", "setup_error_line", "setup_error_markdown",
           "verdict", "verdict_line"]
