"""A ``claims.json`` read back (``--baseline``): its version and the fields a comparison uses,
checked before any of them is trusted.

A baseline report that parses but holds nothing comparable (values as strings, no claims, empty
checks), that lost its provenance, or that carries a NaN would otherwise give a silent answer
("0 of 25 checks compared", "no regression") or crash after all the model work. Every check
here is on the document alone, so a bad file stops the run before any model is loaded.

What a readable document must hold::

    schema                      one of ``READABLE`` ("mechclaims.claims/N")
    provenance.prompts.sha256   non-empty string      (every setting a baseline must share:
    provenance.probe.sha256     non-empty string       ``baseline.MUST_MATCH``)
    provenance.base.sha256      non-empty string
    provenance.settings         positions (string), max_new_tokens and max_prompt_tokens
                                (whole numbers >= 1)
    claims                      a non-empty list of objects, each with
        id                      a non-empty string, unique
        status                  a non-empty string
        checks                  a list (non-empty when the status is pass or fail) of objects with
            name                a non-empty string, unique within the claim
            value               a finite number; null only where the claim did not pass (a
                                skipped claim, or a metric that was not finite, which the
                                report writes as null)

and at least one finite value to compare. No number anywhere in the document may be NaN or
infinite (the report never writes one: ``json.dumps(allow_nan=False)``). Every error names the
JSON path of the first bad field (``claims[3].checks[0].value``), what was there, what was
expected, and what to do.

Ground floor apart from ``errors``: no torch, no numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: The version this release writes (``report.SCHEMA`` must equal it; tests check).
CLAIMS_SCHEMA = "mechclaims.claims/2"  # version 2: gate statuses, readings, ci null (report.py)
#: The versions this release reads as a baseline.
READABLE = (CLAIMS_SCHEMA,)
SCHEMA_PREFIX = "mechclaims.claims/"

_FIX = ("Pass the claims.json that an earlier mechclaims run wrote, unedited (rerun the release to make a "
        "new one), or a model source as --baseline.")
#: A key that is absent (``dict.get`` would say null): errors tell the two apart.
_MISSING = object()
#: Statuses whose claims were computed and must carry their checks.
_RAN = ("pass", "fail")


def read_claims_json(path: str | Path, label: str) -> dict:
    """Read, parse and validate a claims.json; ``label`` names it in errors (``--baseline 'x.json'``).

    Raises ConfigError for an unreadable, empty, non-UTF-8, non-JSON or too deeply nested file, and
    for any document ``validate_claims_json`` refuses.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label} is not UTF-8 text ({exc.reason} at byte {exc.start}); a claims.json is "
                          f"UTF-8 JSON. {_FIX}") from exc
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read ({type(exc).__name__}: {exc}). {_FIX}") from exc
    if not text.strip():
        raise ConfigError(f"{label} is empty; expected a claims.json (a JSON object). {_FIX}")
    try:
        doc = json.loads(text)
    except RecursionError as exc:
        # The JSON reader recurses once per level of [ or {; a claims.json is a few levels deep.
        raise ConfigError(f"{label} is nested deeper than the JSON reader allows (thousands of levels of "
                          f"[ or {{); a claims.json is a handful of levels deep. {_FIX}") from exc
    except ValueError as exc:
        raise ConfigError(f"{label} is not valid JSON ({exc}); expected a claims.json. {_FIX}") from exc
    validate_claims_json(doc, label)
    return doc


def validate_claims_json(doc: Any, label: str) -> None:
    """Raise ConfigError naming the first field of ``doc`` that a baseline comparison cannot use."""
    if not isinstance(doc, dict):
        _bad(label, "the document", doc, "a JSON object (a claims.json)")
    schema = doc.get("schema", _MISSING)
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        _bad(label, "schema", schema, f"a mechclaims report version such as {CLAIMS_SCHEMA!r} (this is not a "
                                      "mechclaims claims.json)")
    if schema not in READABLE:
        raise ConfigError(
            f"{label} was written with report schema {schema!r}; this mechclaims reads {', '.join(READABLE)}. "
            "Rerun the release with this mechclaims version to make a comparable claims.json, or run the "
            "version that wrote it.")
    _provenance(doc.get("provenance", _MISSING), label)
    claims = doc.get("claims", _MISSING)
    if not isinstance(claims, list) or not claims:
        _bad(label, "claims", claims, "a non-empty list of claim objects (one per claim that ran)")
    ids: set[str] = set()
    comparable = 0
    for i, claim in enumerate(claims):
        comparable += _claim(claim, f"claims[{i}]", ids, label)
    if not comparable:
        raise ConfigError(f"{label} holds no check with a finite value (every claim was skipped or not "
                          f"finite), so nothing could be compared against it. {_FIX}")
    _no_nonfinite(doc, label)


# --------------------------------------------------------------------------------------------


def _provenance(prov: Any, label: str) -> None:
    if not isinstance(prov, dict):
        _bad(label, "provenance", prov, "an object recording the base, probe, prompts and settings the release "
                                        "ran with (without it the baseline cannot be checked comparable)")
    for part in ("prompts", "probe", "base"):
        sub = prov.get(part, _MISSING)
        if not isinstance(sub, dict):
            _bad(label, f"provenance.{part}", sub, "an object with its sha256")
        sha = sub.get("sha256", _MISSING)
        if not isinstance(sha, str) or not sha:
            _bad(label, f"provenance.{part}.sha256", sha, "the content hash as a non-empty string")
    settings = prov.get("settings", _MISSING)
    if not isinstance(settings, dict):
        _bad(label, "provenance.settings", settings, "an object with positions, max_new_tokens, max_prompt_tokens")
    positions = settings.get("positions", _MISSING)
    if not isinstance(positions, str) or not positions:
        _bad(label, "provenance.settings.positions", positions, "a position mode (a string)")
    for key in ("max_new_tokens", "max_prompt_tokens"):
        v = settings.get(key, _MISSING)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _bad(label, f"provenance.settings.{key}", v, "a whole number >= 1")


def _claim(claim: Any, where: str, ids: set[str], label: str) -> int:
    """Check one claim; returns how many of its checks carry a finite value."""
    if not isinstance(claim, dict):
        _bad(label, where, claim, "a claim object with id, status and checks")
    cid = claim.get("id", _MISSING)
    if not isinstance(cid, str) or not cid:
        _bad(label, f"{where}.id", cid, "the claim ID as a non-empty string (e.g. \"C3\")")
    if cid in ids:
        _bad(label, f"{where}.id", cid, "an ID that appears once (the report lists each claim once)")
    ids.add(cid)
    status = claim.get("status", _MISSING)
    if not isinstance(status, str) or not status:
        _bad(label, f"{where}.status", status, "the claim's status as a string (pass, fail, skip, ...)")
    checks = claim.get("checks", _MISSING)
    if not isinstance(checks, list):
        _bad(label, f"{where}.checks", checks, "a list of check objects")
    if not checks and status in _RAN:
        _bad(label, f"{where}.checks", checks, f"at least one check: claim {cid} has status {status!r}, so it "
                                               "was computed and its report lists its checks")
    names: set[str] = set()
    finite = 0
    for j, check in enumerate(checks):
        at = f"{where}.checks[{j}]"
        if not isinstance(check, dict):
            _bad(label, at, check, "a check object with name and value")
        name = check.get("name", _MISSING)
        if not isinstance(name, str) or not name:
            _bad(label, f"{at}.name", name, "the check's name as a non-empty string")
        if name in names:
            _bad(label, f"{at}.name", name, f"a check name that appears once in claim {cid}")
        names.add(name)
        value = check.get("value", _MISSING)
        if value is None and status != "pass":
            continue  # not computed (skipped) or not finite: written as null, not compared
        if not _finite_number(value):
            expected = "a finite number" + ("" if status == "pass" else " (or null)")
            _bad(label, f"{at}.value", value, expected)
        finite += 1
    return finite


def _no_nonfinite(doc: Any, label: str) -> None:
    """NaN/Infinity anywhere (``json.loads`` accepts the literals; the report never writes them).
    Iterative: a document the JSON reader accepted may still be deeper than Python's stack allows
    a recursive walk."""
    stack = [(doc, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            _bad(label, path or "the document", node, "a finite number (claims.json writes no NaN or Infinity; "
                                                      "a value that was not finite is written as null)")
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))


def _finite_number(x: Any) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an integer literal beyond float range
        return False


def _describe(x: Any) -> str:
    if x is _MISSING:
        return "missing"
    if x is None:
        return "null"
    if isinstance(x, bool):
        return f"{str(x).lower()} (a boolean)"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x).replace("nan", "NaN").replace("inf", "Infinity")
    if isinstance(x, str):
        return f"the string {x[:40]!r}" + ("..." if len(x) > 40 else "")
    if isinstance(x, dict):
        return f"an object with keys {sorted(map(str, x))[:6]}" if x else "an empty object"
    if isinstance(x, list):
        return f"a list of {len(x)} item(s)" if x else "an empty list"
    return repr(x)[:60]


def _bad(label: str, path: str, got: Any, expected: str) -> None:
    raise ConfigError(f"{label}: {path} is {_describe(got)}; expected {expected}. {_FIX}")


__all__ = ["CLAIMS_SCHEMA", "READABLE", "read_claims_json", "validate_claims_json"]
