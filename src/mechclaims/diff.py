"""``mechclaims diff A.json B.json``: what changed between two claim reports, with no model run.

A is the reference (a release's ``claims.json``), B the candidate. For every claim: its status in
A and in B, and for each check the value in A, the value in B, the difference B − A and what the
baseline rule (``mechclaims.baseline``) calls it: *regressed*, *inconclusive* (possibly worse),
*improved* or *same*. The rule is the one a ``pytest claims/ --baseline A.json`` run of B applies:

* the tolerance is B's ``[tool.mechclaims.regression]`` for that check (recorded in B's
  ``config.regression``), else max(10% of the threshold, 10% of A's value, 0.01);
* the two reports are unpaired (their bootstrap draws are not shared), so the 95% interval of
  the difference is B − A ± the two half-widths in quadrature; a check without an interval in B
  (not resampled) is read at the point.

A claim measured in A (pass, fail, inconclusive, not meaningful) that B did not measure (skip,
not checked) has *lost coverage*: a regression, as in a gated run. A claim in only one report
is listed, not compared. Both documents must be valid claims.json (``mechclaims.schema``) made
on the same base, prompts, probe, scorer, perplexity text and settings
(``baseline.MUST_MATCH``); anything else is refused, naming what differs.

Exit status: 0 no claim regressed, 1 a claim regressed, 4 a report was refused.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from .baseline import MEASURED, MUST_MATCH, Comparison, compare, report_half_widths, report_values, tolerance
from .errors import ConfigError
from .summary import claim_id_key, md_cell, num, signed

#: Words for a check that could not be compared (missing or not finite on one side).
NOT_COMPARED = "not compared"


@dataclass(frozen=True)
class _Check:
    """What ``baseline.tolerance`` and ``baseline.compare`` read of a check."""

    name: str
    op: str
    threshold: float


@dataclass
class CheckChange:
    name: str
    label: str
    op: str
    threshold: float | None
    a: float | None
    b: float | None
    a_ci: list | None
    b_ci: list | None
    comparison: Comparison | None = None  # None: not compared
    note: str = ""

    @property
    def state(self) -> str:
        return self.comparison.state if self.comparison is not None else NOT_COMPARED


@dataclass
class ClaimChange:
    id: str
    slug: str
    status_a: str | None      # None: not in A
    status_b: str | None      # None: not in B
    checks: list[CheckChange] = field(default_factory=list)

    @property
    def lost_coverage(self) -> bool:
        return self.status_a in MEASURED and self.status_b in ("skip", "not_checked")

    @property
    def regressed(self) -> bool:
        return self.lost_coverage or any(c.state == "regressed" for c in self.checks)

    @property
    def improved(self) -> bool:
        return not self.regressed and any(c.state == "improved" for c in self.checks)

    @property
    def state(self) -> str:
        """One word for the claim: regressed, improved, possibly worse, same, only in A/B, not compared."""
        if self.status_b is None:
            return "only in A"
        if self.status_a is None:
            return "only in B"
        if self.regressed:
            return "regressed"
        if self.improved:
            return "improved"
        if any(c.state == "inconclusive" for c in self.checks):
            return "possibly worse"
        if any(c.state == "same" for c in self.checks):
            return "same"
        return NOT_COMPARED

    def statuses(self) -> str:
        return f"{self.status_a or '—'} → {self.status_b or '—'}"


@dataclass
class ReportDiff:
    a_label: str
    b_label: str
    a: dict
    b: dict
    claims: list[ClaimChange]
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> list[str]:
        return [c.id for c in self.claims if c.regressed]

    @property
    def improved(self) -> list[str]:
        return [c.id for c in self.claims if c.improved]

    @property
    def exit_status(self) -> int:
        return 1 if self.regressed else 0

    def verdict_line(self) -> str:
        """``mechclaims diff: REGRESSED — 1 regressed (C6), 1 improved (C3), 2 status changes (...)``."""
        changed = [f"{c.id} {c.statuses()}" for c in self.claims
                   if c.status_a and c.status_b and c.status_a != c.status_b]
        only = [c.id for c in self.claims if c.status_a is None or c.status_b is None]
        parts = [f"{len(self.regressed)} regressed" + (f" ({', '.join(self.regressed)})" if self.regressed else ""),
                 f"{len(self.improved)} improved" + (f" ({', '.join(self.improved)})" if self.improved else ""),
                 f"{len(changed)} status change{'s' if len(changed) != 1 else ''}"
                 + (f" ({', '.join(changed)})" if changed else "")]
        if only:
            parts.append(f"{len(only)} in one report only ({', '.join(only)})")
        head = "REGRESSED" if self.regressed else "NO REGRESSION"
        return f"mechclaims diff: {head} — " + ", ".join(parts)


# --- reading and comparing ---------------------------------------------------------------------


def read_pair(a_path: str | Path, b_path: str | Path) -> tuple[dict, dict]:
    """Both documents, validated as claims.json and checked comparable; ConfigError otherwise."""
    from .schema import read_claims_json

    a = read_claims_json(a_path, f"mechclaims diff: A ({a_path})")
    b = read_claims_json(b_path, f"mechclaims diff: B ({b_path})")
    check_comparable(a, b, str(a_path), str(b_path))
    return a, b


def check_comparable(a: dict, b: dict, a_label: str = "A", b_label: str = "B") -> None:
    """Refuse two reports made on other inputs or settings (every entry of ``baseline.MUST_MATCH``)."""
    for keys, what in MUST_MATCH:
        va, vb = _get(a, keys), _get(b, keys)
        if va != vb:
            raise ConfigError(
                f"mechclaims diff: {a_label} and {b_label} were made with other {what}: {_show(va)} in A, "
                f"{_show(vb)} in B ({'.'.join(keys)}). Two claim reports compare only when they were made on the same "
                "base, prompts, probe, scorer, perplexity text and settings; diff two runs made with the same "
                "inputs (rerun one of them with the other's settings).")


def diff_documents(a: dict, b: dict, a_label: str = "A", b_label: str = "B") -> ReportDiff:
    """Compare two claims.json documents (checked with ``check_comparable`` first by ``read_pair``)."""
    claims_a = {c["id"]: c for c in a.get("claims", [])}
    claims_b = {c["id"]: c for c in b.get("claims", [])}
    values_a, values_b = report_values(a), report_values(b)
    half_a, half_b = report_half_widths(a), report_half_widths(b)
    table = (b.get("config") or {}).get("regression") or {}
    out = []
    for cid in sorted(set(claims_a) | set(claims_b), key=claim_id_key):
        ca, cb = claims_a.get(cid), claims_b.get(cid)
        change = ClaimChange(cid, (cb or ca).get("slug", ""), ca and ca.get("status"), cb and cb.get("status"))
        checks_a = {k["name"]: k for k in (ca or {}).get("checks", [])}
        checks_b = {k["name"]: k for k in (cb or {}).get("checks", [])}
        for name in [*checks_b, *(n for n in checks_a if n not in checks_b)]:
            ka, kb = checks_a.get(name), checks_b.get(name)
            ref = kb or ka
            cc = CheckChange(name, ref.get("label") or name, ref.get("op", ""), ref.get("threshold"),
                             ka and ka.get("value"), kb and kb.get("value"), ka and ka.get("ci"),
                             kb and kb.get("ci"))
            if ka and kb and ka.get("threshold") != kb.get("threshold"):
                cc.note = f"threshold {num(ka.get('threshold'))} in A, {num(kb.get('threshold'))} in B"
            va, vb = values_a.get(cid, {}).get(name), values_b.get(cid, {}).get(name)
            if va is not None and vb is not None and ref.get("op") and _finite(ref.get("threshold")):
                check = _Check(name, ref["op"], float(ref["threshold"]))
                tol = tolerance(cid, check, table, va)
                hb = half_b.get(cid, {}).get(name)
                if hb is None:  # no interval in B (not resampled): the point difference
                    cc.comparison = compare(check, vb, va, None, tol, paired=False)
                else:            # unpaired: the half-widths in quadrature (as suite._compare for a report)
                    h, d = math.hypot(hb, half_a.get(cid, {}).get(name, 0.0)), vb - va
                    cc.comparison = compare(check, vb, va, (d - h, d + h), tol, paired=False)
            change.checks.append(cc)
        out.append(change)
    notes = []
    if a.get("reading") != b.get("reading"):
        notes.append(f"the statuses were read differently: {a.get('reading')} in A, {b.get('reading')} in B "
                     "(the value comparison does not depend on it)")
    return ReportDiff(a_label, b_label, a, b, out, notes)


# --- rendering ----------------------------------------------------------------------------------


def _side(doc: dict) -> str:
    model = (doc.get("provenance") or {}).get("model") or {}
    sha = str(model.get("sha256") or "")[:12]
    return f"model {model.get('source', '?')} ({sha}), {doc.get('created', '?')}"


def _value(v, ci) -> str:
    if v is None:
        return "n/a"
    return num(v) + (f" [{num(ci[0])}, {num(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")


def _delta(c: CheckChange) -> str:
    cmp = c.comparison
    if cmp is None:
        return "n/a"
    return signed(cmp.diff) + (f" [{signed(cmp.lo)}, {signed(cmp.hi)}]" if cmp.lo is not None else "")


def _tol(c: CheckChange) -> str:
    return num(c.comparison.tolerance, 3) if c.comparison is not None else "n/a"


def render_text(d: ReportDiff) -> str:
    lines = ["mechclaims diff", f"  A: {d.a_label} — {_side(d.a)}", f"  B: {d.b_label} — {_side(d.b)}",
             "  same base, prompts, probe, scorer, perplexity text and settings"]
    lines += [f"  note: {n}" for n in d.notes]
    lines.append("")
    for c in d.claims:
        flag = {"regressed": "  REGRESSED" + (" (lost coverage)" if c.lost_coverage else ""),
                "improved": "  improved", "possibly worse": "  possibly worse"}.get(c.state, "")
        lines.append(f"{c.id} {c.slug}: {c.statuses()}{flag}")
        for k in c.checks:
            lines.append(f"    {k.name:<24} {_value(k.a, k.a_ci)} → {_value(k.b, k.b_ci)}   "
                         f"Δ {_delta(k)}   tolerance {_tol(k)}   {k.state}" + (f"   ({k.note})" if k.note else ""))
    lines += ["", d.verdict_line()]
    return "\n".join(lines) + "\n"


_COLUMNS = ("claim", "status A → B", "check", "A [95% CI]", "B [95% CI]", "Δ B − A [95% CI]", "tolerance", "state")


def _rows(d: ReportDiff) -> list[list[str]]:
    rows = []
    for c in d.claims:
        head = [f"{c.id} {c.slug}", c.statuses()]
        if not c.checks:
            rows.append([*head, "", "", "", "", "", c.state])
        for i, k in enumerate(c.checks):
            state = k.state + (f" ({k.note})" if k.note else "")
            if i == 0 and c.lost_coverage:
                state = f"lost coverage; {state}"
            rows.append([*(head if i == 0 else ["", ""]), k.name, _value(k.a, k.a_ci), _value(k.b, k.b_ci),
                         _delta(k), _tol(k), state])
    return rows


def render_markdown(d: ReportDiff) -> str:
    out = [f"### {md_cell(d.verdict_line())}", "", f"A: {md_cell(d.a_label)} — {md_cell(_side(d.a))}  ",
           f"B: {md_cell(d.b_label)} — {md_cell(_side(d.b))}", *(f"\nNote: {md_cell(n)}" for n in d.notes), "",
           "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    out += ["| " + " | ".join(md_cell(x) for x in row) + " |" for row in _rows(d)]
    return "\n".join(out) + "\n"


def render_html(d: ReportDiff) -> str:
    e = html.escape
    state_class = {"regressed": "bad", "lost coverage": "bad", "improved": "good", "inconclusive": "warn"}
    body = []
    for row in _rows(d):
        cls = next((v for k, v in state_class.items() if row[-1].startswith(k)), "")
        body.append(f"<tr class='{cls}'>" + "".join(f"<td>{e(x)}</td>" for x in row) + "</tr>")
    notes = "".join(f"<p class='note'>Note: {e(n)}</p>" for n in d.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(d.verdict_line())}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; padding: 0 16px; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ text-align: left; padding: 5px 8px;
border-bottom: 1px solid #eee; }} th {{ background: #fafafa; }} td {{ font-variant-numeric: tabular-nums; }}
tr.bad td {{ background: #fdecea; }} tr.good td {{ background: #e8f6ee; }} tr.warn td {{ background: #fef5e7; }}
.sub {{ color: #666; }} .note {{ color: #9a6400; }}
</style></head><body>
<h1>{e(d.verdict_line())}</h1>
<p class="sub">A: {e(d.a_label)} — {e(_side(d.a))}<br>B: {e(d.b_label)} — {e(_side(d.b))}<br>
Same base, prompts, probe, scorer, perplexity text and settings. Δ's interval: the two reports' half-widths in
quadrature (unpaired); the tolerance is B's [tool.mechclaims.regression] or the default rule.</p>{notes}
<table><thead><tr>{"".join(f"<th>{e(c)}</th>" for c in _COLUMNS)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def write_html(d: ReportDiff, out: str | Path, reports: tuple[str | Path, ...]) -> Path:
    """Write the HTML page atomically; never over one of the two ``reports`` it reads
    (``mechclaims.outputs``: the same file, a hard link, a device or a directory are refused)."""
    from .cache import atomic_write_text
    from .outputs import Output, check, inputs, writing

    check([Output("--html", out)], inputs([(f"report {label}", p) for label, p in zip("AB", reports)]))
    path = Path(out).expanduser()
    with writing("--html", path):
        atomic_write_text(path, render_html(d))
    return path


def _get(doc: dict, keys: tuple):
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def _show(x) -> str:
    return "not recorded" if x is None else repr(x)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


__all__ = ["CheckChange", "ClaimChange", "ReportDiff", "check_comparable", "diff_documents", "read_pair",
           "render_html", "render_markdown", "render_text", "write_html"]
