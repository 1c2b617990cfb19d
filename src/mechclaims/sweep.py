"""Many checkpoints, one run: the claims on every checkpoint of a training run, one report.

    mechclaims sweep --base gpt2-medium runs/dpo/          # its checkpoint-* folders, in step order
    mechclaims sweep --base B ckpt-a ckpt-b 'runs/*/checkpoint-*'
    mechclaims sweep runs/dpo/ --select gate --baseline release/claims.json --junitxml reports/sweep.xml
    mechclaims sweep runs/dpo/ -k "C0 or net-reduction and not C3"

Each checkpoint runs the same pipeline as ``pytest claims/`` (``runspec`` -> ``suite``) on one
base, prompts and probe. In ``own`` position mode the base's statistics do not depend on the
checkpoint and are computed once (``stats.base_stats_key``). The report is a table of verdicts
per checkpoint and, for every check, its value with its 95% interval against training step.
The exit status is 1 when the *last* checkpoint fails a ``gate`` claim (the one that would ship):
its outcome is ``failed`` as in ``pytest claims/ -m gate`` (``--baseline``, ``--strict`` and the
interval reading as there; ``--select gate`` reads with the interval, the gate's reading).
Claims are chosen with ``--select`` (``all``, ``gate`` or claim IDs) and ``-k`` (a keyword
expression, ``select_claims``). One plain line per checkpoint goes to stderr before and after
it runs; ``--junitxml`` writes one JUnit testsuite per checkpoint (``write_junit``).
A checkpoint of another architecture than the base is left out, named with the reason in the
report and in a setup error (exit status 4); the other checkpoints are computed and reported.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError, IncompatibleCheckpoints
from .provenance import display_path, now_utc

_STEP = re.compile(r"checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    label: str
    step: int
    source: str


def expand(targets: list[str]) -> list[Checkpoint]:
    """Checkpoint sources from paths, globs and trainer output directories (which expand to
    their ``checkpoint-N`` folders), in step order; duplicates removed."""
    paths: list[str] = []
    for t in targets:
        p = Path(t).expanduser()
        if p.is_dir() and not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            found = [str(c) for c in p.iterdir() if c.is_dir() and _STEP.search(c.name)]
            if not found:
                raise ConfigError(f"{t!r} is a directory with no config.json, adapter_config.json or "
                                  "checkpoint-N folders; expected a checkpoint or a trainer output directory.")
            paths += found
        elif any(ch in t for ch in "*?["):
            found = sorted(glob.glob(str(p)))
            if not found:
                raise ConfigError(f"{t!r} matches no path; check the pattern (quote it so the shell leaves it).")
            paths += found
        else:
            paths.append(t)
    out, seen = [], set()
    for i, s in enumerate(paths):
        key = str(Path(s).resolve()) if Path(s).exists() else s
        if key in seen:
            continue
        seen.add(key)
        m = _STEP.search(Path(s).name)
        out.append(Checkpoint(Path(s).name or s, int(m.group(1)) if m else i, s))
    if any(_STEP.search(Path(c.source).name) for c in out):
        out.sort(key=lambda c: c.step)
    if not out:
        raise ConfigError("no checkpoints given; pass checkpoint paths, globs or a trainer output directory.")
    return out


def load_claims(claims_dir: str | Path | None = None) -> dict:
    """The claim specs declared with ``@claim`` in ``claims_dir``'s ``test_*.py`` files (its
    subdirectories too), loaded as pytest would. Default: the built-in claims
    (``mechclaims.claims_dir()``, inside the installed package)."""
    if claims_dir is None:
        from . import claims_dir as builtin

        claims_dir = builtin()
    d = Path(claims_dir)
    if not d.is_dir():
        raise ConfigError(f"claims directory {str(claims_dir)!r} {'is a file' if d.exists() else 'does not exist'}; "
                          "pass --claims-dir (the "
                          "directory of claim tests), or leave it out for the built-in claims.")
    specs = {}
    for f in sorted(d.rglob("test_*.py")):
        parts = f.relative_to(d).with_suffix("").parts
        # A pack's directory declares its PACK in __init__.py: load it first, under the name its
        # claim modules' package will have, so that @claim finds the pack (claim._pack_of).
        for i in range(1, len(parts)):
            init = d.joinpath(*parts[:i], "__init__.py")
            pkg = ".".join(("mechclaims_sweep_claims",) + parts[:i])
            if init.is_file() and pkg not in sys.modules:
                pspec = importlib.util.spec_from_file_location(pkg, init, submodule_search_locations=[str(init.parent)])
                pmod = importlib.util.module_from_spec(pspec)
                sys.modules[pkg] = pmod
                pspec.loader.exec_module(pmod)
        spec = importlib.util.spec_from_file_location("mechclaims_sweep_claims." + ".".join(parts), f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for obj in vars(mod).values():
            s = getattr(obj, "mechclaims_spec", None)
            if s is not None:
                specs[s.id] = s
    if not specs:
        raise ConfigError(f"no @claim tests found in {d}/**/test_*.py.")
    return specs


@dataclass
class SweepRow:
    checkpoint: Checkpoint
    result: object          # suite.SuiteResult
    document: dict          # its claims.json document
    seconds: float = 0.0    # wall time of this checkpoint's claims (statistics, behaviour, bootstrap)


@dataclass
class SweepResult:
    rows: list[SweepRow] = field(default_factory=list)
    gate: list[str] = field(default_factory=list)
    # Checkpoints of another architecture than the base, with the reason: the others are computed
    # and reported, and the sweep ends with a setup error naming these.
    skipped: list[tuple[Checkpoint, str]] = field(default_factory=list)
    reading: str = "point"  # verdicts.READINGS, resolved
    baseline: str | None = None  # the --baseline as shown in reports

    def last_fails_gate(self) -> list[str]:
        last = self.rows[-1].result
        return [r.spec.id for r in last.claims if r.spec.id in self.gate and r.outcome == "failed"]


def run_sweep(config, checkpoints: list[Checkpoint], specs: dict, *, select: str = "all",
              keyword: str | None = None, progress: bool | None = None, say=None) -> SweepResult:
    """Run the claims on every checkpoint. ``config``: a ClaimsConfig whose ``model`` is replaced
    by each checkpoint in turn (its ``baseline``, ``strict`` and ``reading`` apply to each);
    ``select``/``keyword``: which claims (``select_claims``); ``select="gate"`` with the reading
    ``auto`` reads with the interval, as ``pytest claims/ -m gate``. ``say``: where the plain
    per-checkpoint lines go (default: stderr, on the writing rank only)."""
    from .distributed import world
    from .report import build_document
    from .runspec import resolve_run
    from .suite import ClaimSuite
    from .verdicts import resolve_reading

    specs = select_claims(specs, select, keyword)
    if config.reading == "auto":
        config = replace(config, reading=resolve_reading("auto", strict=config.strict, gate_selected=select == "gate"))
    if say is None:
        say = _say_stderr if world().is_writer else (lambda line: None)
    gate = sorted(k for k, s in specs.items() if "gate" in s.tags)
    out = SweepResult(gate=gate, reading=resolve_reading(config.reading, strict=config.strict))
    runs = []
    for c in checkpoints:  # every input checked first, before any model work
        try:
            runs.append((c, resolve_run(replace(config, model=c.source))))
        except IncompatibleCheckpoints as exc:  # another architecture: the other checkpoints still run
            out.skipped.append((c, str(exc)))
    if runs:
        out.baseline = runs[0][1].baseline_label
    for i, (c, run) in enumerate(runs, 1):
        say(f"[{i}/{len(runs)}] {c.label} (step {c.step})")
        t0 = time.perf_counter()
        suite = ClaimSuite(run, specs)
        try:
            suite.compute(progress=progress)
        except IncompatibleCheckpoints as exc:  # found only once loaded (no local config.json to read)
            out.skipped.append((c, str(exc)))
            say(f"[{i}/{len(runs)}] {c.label}: left out, not comparable with the base")
            continue
        for cid in specs:
            suite.result(cid)
        result = suite.suite_result()
        seconds = time.perf_counter() - t0
        out.rows.append(SweepRow(c, result, build_document(result), seconds))
        say(f"[{i}/{len(runs)}] {c.label} (step {c.step}): {outcome_counts(result)} ({seconds:.1f} s)")
    if not out.rows:
        raise ConfigError("no checkpoint of the sweep can be compared with the base: " + skipped_text(out))
    return out


def _say_stderr(line: str) -> None:
    # One whole line at a time, flushed: progress bars (tqdm, leave=False) clear their own line
    # on stderr, so a line printed between two bars is never overwritten or split by a '\r'.
    print(line, file=sys.stderr, flush=True)


def outcome_counts(result) -> str:
    """``2 passed, 1 failed (C3 inconclusive), 1 skipped``: a checkpoint's claims as pytest
    would count them, the failures named with their status."""
    words = ("passed", "failed", "xfailed", "skipped")
    parts = []
    for w in words:
        rs = [r for r in result.claims if r.outcome == w]
        if not rs:
            continue
        text = f"{len(rs)} {w}"
        if w == "failed":
            text += " (" + ", ".join(f"{r.spec.id} {r.status.replace('_', ' ')}" for r in rs) + ")"
        parts.append(text)
    return ", ".join(parts) or "no claims"


def select_claims(specs: dict, select: str | None = "all", keyword: str | None = None) -> dict:
    """The claims to run, in ID order. ``select``: ``all``, ``gate`` (the gating claims) or
    claim IDs (``"C0,C3"``); ``keyword``: a ``-k`` expression (``keyword_matcher``) applied to
    what ``select`` chose. An unknown ID, a malformed expression or an empty selection is a
    ConfigError (a setup error: nothing runs)."""
    from .suite import id_key

    known = ", ".join(sorted(specs, key=id_key))
    if select in (None, "", "all"):
        chosen = dict(specs)
    elif select == "gate":
        chosen = {k: s for k, s in specs.items() if "gate" in s.tags}
    else:
        by_upper = {k.upper(): k for k in specs}
        ids = [x for x in re.split(r"[,\s]+", select) if x]
        unknown = [x for x in ids if x.upper() not in by_upper]
        if unknown:
            raise ConfigError(f"--select {select!r} names unknown claims {unknown}; expected all, gate, or claim "
                              f"IDs separated by commas (e.g. C0,C3). Known claims: {known}.")
        chosen = {by_upper[x.upper()]: specs[by_upper[x.upper()]] for x in ids}
    if keyword:
        match = keyword_matcher(keyword, specs)
        chosen = {k: s for k, s in chosen.items() if match(s)}
    if not chosen:
        raise ConfigError(f"no claim is selected by --select {select or 'all'!r}"
                          f"{f' and -k {keyword!r}' if keyword else ''}; known claims: {known}.")
    return dict(sorted(chosen.items(), key=lambda kv: id_key(kv[0])))


_KW_TOKEN = re.compile(r"[()]|[^\s()]+")


def keyword_matcher(expr: str, specs: dict):
    """``-k EXPR`` as pytest reads it: names combined with ``and``, ``or``, ``not`` and
    parentheses (``not`` binds tightest, then ``and``, then ``or``). A name matches a claim when
    it is a case-insensitive substring of the claim's slug, test function name, file name
    (``test_reduction.py``) or tags (``gate``), as pytest matches its keywords, so
    ``pytest claims/ -k EXPR`` and ``mechclaims sweep -k EXPR`` select the same claims; except that
    a name that *is* a claim ID means that claim alone (pytest's substring rule would make ``C1``
    select C10-C19 as well). Returns ``spec -> bool``; a malformed expression is a ConfigError."""
    tokens = _KW_TOKEN.findall(expr)
    ids = {k.upper(): k for k in specs}
    pos = 0

    def fail(what: str):
        raise ConfigError(f"-k {expr!r}: {what}; expected claim IDs or keywords combined with and, or, not "
                          "and parentheses, e.g. \"C0 or C3 and not exploratory\".")

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def either(a, b):
        return lambda s: a(s) or b(s)

    def both(a, b):
        return lambda s: a(s) and b(s)

    def name(word: str):
        if word.upper() in ids:
            cid = ids[word.upper()]
            return lambda s: s.id == cid
        sub = word.lower()
        return lambda s: any(sub in n for n in _keywords(s))

    def or_expr():
        nonlocal pos
        left = and_expr()
        while peek() == "or":
            pos += 1
            left = either(left, and_expr())
        return left

    def and_expr():
        nonlocal pos
        left = not_expr()
        while peek() == "and":
            pos += 1
            left = both(left, not_expr())
        return left

    def not_expr():
        nonlocal pos
        t = peek()
        if t is None:
            fail("it ends where a name was expected")
        pos += 1
        if t == "not":
            inner = not_expr()
            return lambda s: not inner(s)
        if t == "(":
            inner = or_expr()
            if peek() != ")":
                fail("a '(' is not closed")
            pos += 1
            return inner
        if t in (")", "and", "or"):
            fail(f"{t!r} where a name was expected")
        return name(t)

    if not tokens:
        fail("it is empty")
    match = or_expr()
    if pos < len(tokens):
        fail(f"{tokens[pos]!r} follows a complete expression (join names with and / or)")
    return match


def _keywords(spec) -> tuple[str, ...]:
    """What ``-k`` matches for a claim, lower case (pytest's keywords of its test item)."""
    fn = getattr(spec.metric, "__name__", "")
    return tuple(x.lower() for x in (spec.id, spec.slug, fn, f"{spec.family}.py", *spec.tags) if x)


def skipped_text(sweep: SweepResult) -> str:
    """One line per checkpoint left out of a sweep: its label, path and why."""
    return "; ".join(f"checkpoint {c.label} ({display_path(c.source)}, step {c.step}): {why}"
                     for c, why in sweep.skipped)


def sweep_document(sweep: SweepResult) -> dict:
    """The sweep as JSON (``sweep.json``): per checkpoint, its counts and each claim's status,
    outcome and checks (value, interval, verdict). Sources and paths are shown as the user gave
    them, an absolute path as ``provenance.display_path`` shows it (never this machine's layout)."""
    from .provenance import display_paths, display_text

    first = sweep.rows[0]
    run = first.result.run
    base_prov = first.document["provenance"]["base"]
    # the model varies per checkpoint; the sweep writes no per-checkpoint claims.html
    config = {k: v for k, v in first.document["config"].items() if k not in ("model", "report")}
    config["base"] = display_text(run.config.base) if run.config.base else run.base.label
    doc = {
        "schema": "mechclaims.sweep/1", "created": now_utc(), "gate": sweep.gate, "reading": sweep.reading,
        "baseline": sweep.baseline,
        "base": {"source": config["base"], "from": run.base_from, "kind": run.base.kind,
                 "sha256": base_prov.get("sha256") or run.base.sha256},
        "config": config,
        "last_fails_gate": sweep.last_fails_gate(),
        "skipped": [{"label": c.label, "step": c.step, "source": display_path(c.source), "reason": why}
                    for c, why in sweep.skipped],
        "checkpoints": [_checkpoint_entry(r) for r in sweep.rows],
    }
    return display_paths(doc)


def _checkpoint_entry(row: SweepRow) -> dict:
    from .provenance import display_text

    d, model = row.document, row.document["provenance"]["model"]
    return {"label": row.checkpoint.label, "step": row.checkpoint.step, "source": display_text(row.checkpoint.source),
            "seconds": round(row.seconds, 3), "counts": d["counts"],
            "model": {"source": display_text(row.checkpoint.source), "kind": row.result.run.model.kind,
                      "sha256": model.get("sha256") or row.result.run.model.sha256},
            "claims": [{"id": c["id"], "slug": c["slug"], "tags": c["tags"], "status": c["status"],
                        "outcome": c["outcome"], "reason": c["reason"], "known_failure": c["known_failure"],
                        "regressed": c["regressed"], "flags": c["flags"],
                        "checks": [{"name": k["name"], "label": k["label"], "value": k["value"], "ci": k["ci"],
                                    "op": k["op"], "threshold": k["threshold"], "verdict": k["verdict"]}
                                   for k in c["checks"]]}
                       for c in d["claims"]]}


#: A point's colour: its check's verdict at that checkpoint (the caption in sweep.html.j2 says so).
VERDICT_COLOURS = {"pass": "#1e8449", "fail": "#c0392b", "inconclusive": "#d68910"}
NO_VERDICT_COLOUR = "#95a5a6"  # the claim was skipped or not checked there


def figure(doc: dict) -> str:
    """``sweep_figure`` as a base64 PNG, for the HTML report."""
    import base64
    import io

    import matplotlib.pyplot as plt

    fig = sweep_figure(doc)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def sweep_figure(doc: dict):
    """Each check's value (95% interval) against training step, with its threshold; each point
    coloured by that checkpoint's verdict on the check. Steps are whole numbers on the axis."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series: dict[tuple[str, str], list] = {}
    for ck in doc["checkpoints"]:
        for c in ck["claims"]:
            for k in c["checks"]:
                series.setdefault((c["id"], k["name"]), []).append((ck["step"], k))
    keys = sorted(series, key=lambda k: (int(re.sub(r"\D", "", k[0]) or 0), k[1]))
    cols = 4
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        pts = series[key]
        x = [s for s, _ in pts]
        y = [k["value"] if k["value"] is not None else float("nan") for _, k in pts]
        ci = [k["ci"] if k["ci"] is not None else [None, None] for _, k in pts]  # null: no interval
        lo = [v - c[0] if c[0] is not None else 0.0 for v, c in zip(y, ci)]
        hi = [c[1] - v if c[1] is not None else 0.0 for v, c in zip(y, ci)]
        ax.errorbar(x, y, yerr=[lo, hi], fmt="-", capsize=3, color="#7f8c8d", lw=1, zorder=1)
        ax.scatter(x, y, c=[VERDICT_COLOURS.get(k.get("verdict"), NO_VERDICT_COLOUR) for _, k in pts],
                   s=28, zorder=3, edgecolors="white", linewidths=0.5)
        k0 = pts[0][1]
        ax.axhline(k0["threshold"], color="#c0392b", lw=0.8, ls="--")
        ax.set_title(f"{key[0]} {key[1]} ({k0['op']} {k0['threshold']:g})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # training steps are whole numbers
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def write_sweep_report(sweep: SweepResult, html_path: str | Path) -> tuple[Path, Path]:
    """``sweep.html`` (verdict table + figure) and ``sweep.json`` beside it, atomically."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from .cache import atomic_write_text
    from .report import _clean

    from .distributed import world

    html_path = Path(html_path)
    json_path = html_path.with_suffix(".json")
    if not world().is_writer:  # data parallel: rank 0 writes
        return html_path, json_path
    doc = _clean(json.loads(json.dumps(sweep_document(sweep), default=str)))
    env = Environment(loader=PackageLoader("mechclaims", "templates"), autoescape=select_autoescape(["html", "j2"]))
    ids = sorted({c["id"] for ck in doc["checkpoints"] for c in ck["claims"]},
                 key=lambda c: int(re.sub(r"\D", "", c) or 0))
    html = env.get_template("sweep.html.j2").render(doc=doc, ids=ids, fig=figure(doc))
    from .outputs import writing  # a full disk: OutputPathError naming the path and the reason

    with writing("the JSON beside --report", json_path):
        atomic_write_text(json_path, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False))
    with writing("--report", html_path):
        atomic_write_text(html_path, html)
    return html_path, json_path


# --------------------------------------------------------------------------------------------
# JUnit and output paths

#: Characters XML 1.0 cannot hold (a metric's reason quoting raw model text could carry them).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _num(x) -> str:
    """A plain number for dashboards: repr of the float; NaN/inf as the words JUnit readers take."""
    import math

    x = float(x)
    return repr(x) if math.isfinite(x) else str(x).lower()


def junit_document(sweep: SweepResult) -> str:
    """The sweep as JUnit XML: one ``<testsuite>`` per checkpoint (its label, with the step,
    source and model sha256 as properties) and one ``<testcase>`` per claim, named as
    ``pytest claims/ --junitxml`` names it (the claim's test function), with the same outcome
    (failure, skipped, ``pytest.xfail``) and the claim's numbers as properties."""
    import xml.etree.ElementTree as ET

    from .provenance import display_text

    def text(s) -> str:
        return _XML_INVALID.sub("?", str(s))

    def props(parent, items):
        el = ET.SubElement(parent, "properties")
        for k, v in items:
            ET.SubElement(el, "property", name=text(k), value=text(v))

    root = ET.Element("testsuites", name="mechclaims sweep")
    totals = {"tests": 0, "failures": 0, "skipped": 0, "errors": 0}
    seconds = 0.0
    for row in sweep.rows:
        claims = row.result.claims
        n = {"tests": len(claims), "failures": sum(r.outcome == "failed" for r in claims),
             "skipped": sum(r.outcome in ("skipped", "xfailed") for r in claims), "errors": 0}
        suite = ET.SubElement(root, "testsuite", name=text(row.checkpoint.label),
                              **{k: str(v) for k, v in n.items()}, time=f"{row.seconds:.3f}")
        model = row.document["provenance"]["model"]
        props(suite, [("step", row.checkpoint.step), ("source", display_text(row.checkpoint.source)),
                      ("model_sha256", model.get("sha256", "")), ("reading", sweep.reading),
                      ("baseline", sweep.baseline or "none"), ("last", str(row is sweep.rows[-1]).lower())])
        for r in claims:
            case = ET.SubElement(suite, "testcase", classname=text(row.checkpoint.label),
                                 name=text(getattr(r.spec.metric, "__name__", r.spec.id)), time="0")
            items = [("claim_id", r.spec.id), ("verdict", r.status), ("outcome", r.outcome),
                     ("regressed", str(r.regressed).lower()), ("known_failure", r.known_failure),
                     ("gate", str(r.spec.is_gate).lower())]
            for c in r.checks:
                k = c.check.name
                lo, hi = (_num(c.lo), _num(c.hi)) if c.has_interval else ("none", "none")
                items += [(f"{k}.value", _num(c.value)), (f"{k}.ci_low", lo), (f"{k}.ci_high", hi),
                          (f"{k}.op", c.check.op), (f"{k}.threshold", _num(c.check.threshold)),
                          (f"{k}.verdict", c.verdict)]
            props(case, items)
            message = text(r.message() + (f" — {r.reason}" if r.reason and r.checks else "")
                           + "".join(f" [{f}]" for f in r.flags))
            if r.outcome == "failed":
                ET.SubElement(case, "failure", message=message).text = message
            elif r.outcome == "xfailed":
                ET.SubElement(case, "skipped", type="pytest.xfail", message=text(r.known_failure)).text = message
            elif r.outcome == "skipped":
                ET.SubElement(case, "skipped", type="pytest.skip", message=message).text = message
        for k in totals:
            totals[k] += n[k]
        seconds += row.seconds
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(sweep: SweepResult, path: str | Path) -> Path:
    """Write ``junit_document`` to ``path`` atomically (rank 0 only under torchrun)."""
    from .cache import atomic_write_text
    from .distributed import world

    path = Path(path)
    if world().is_writer:
        from .outputs import writing

        with writing("--junitxml", path):
            atomic_write_text(path, junit_document(sweep))
    return path


def check_outputs(outputs: dict[str, list], inputs: dict[str, str | None]) -> None:
    """Before any model work: no output (``{option: [paths it writes]}``; the first is the
    option's own file, the others lie beside it) may overwrite an input (``{what it is: path}``;
    ``--cache-dir``: the result cache), lie inside an input directory (a checkpoint), share a
    path with another output, be a directory or a device, or sit where no file can be created.
    OutputPathError else. The rules are ``mechclaims.outputs``'s, as for ``pytest claims/``."""
    from .outputs import CACHE, FILE, TREE, Input, Output, check, source_inputs
    from .sources import ORGANISM_PREFIX, parse_source

    ins = []
    for what, p in inputs.items():
        if not p:
            continue
        if what == "--cache-dir":
            ins.append(Input(what, p, CACHE))
        elif str(p).startswith(ORGANISM_PREFIX):
            try:
                ins += source_inputs(what, parse_source(str(p)))
            except ValueError:
                pass  # an unknown organism: resolve_run says so
        else:
            ins.append(Input(what, p, TREE if Path(p).expanduser().is_dir() else FILE))
    outs = [Output(opt if k == 0 else f"the {Path(out).suffix.lstrip('.').upper() or 'file'} beside {opt}", out)
            for opt, paths in outputs.items() for k, out in enumerate(paths)]
    check(outs, ins)
