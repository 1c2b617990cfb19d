"""Many checkpoints, one run: the claims on every checkpoint of a training run, one report.

    mechclaims sweep --base gpt2-medium runs/dpo/          # its checkpoint-* folders, in step order
    mechclaims sweep --base B ckpt-a ckpt-b 'runs/*/checkpoint-*'

Each checkpoint runs the same pipeline as ``pytest claims/`` (``runspec`` -> ``suite``) on one
base, prompts and probe. In ``own`` position mode the base's statistics do not depend on the
checkpoint and are computed once (``stats.base_stats_key``). The report is a table of verdicts
per checkpoint and, for every check, its value with its 95% interval against training step.
The exit status is 1 when the *last* checkpoint fails a ``gate`` claim (the one that would ship).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError
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


def load_claims(claims_dir: str | Path) -> dict:
    """The claim specs declared with ``@claim`` in ``claims_dir/test_*.py``, loaded as pytest would."""
    d = Path(claims_dir)
    if not d.is_dir():
        raise ConfigError(f"claims directory {str(claims_dir)!r} does not exist; pass --claims-dir (the "
                          "directory of claim tests, e.g. mechclaims's claims/).")
    specs = {}
    for f in sorted(d.glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"mechclaims_sweep_claims.{f.stem}", f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for obj in vars(mod).values():
            s = getattr(obj, "mechclaims_spec", None)
            if s is not None:
                specs[s.id] = s
    if not specs:
        raise ConfigError(f"no @claim tests found in {d}/test_*.py.")
    return specs


@dataclass
class SweepRow:
    checkpoint: Checkpoint
    result: object          # suite.SuiteResult
    document: dict          # its claims.json document


@dataclass
class SweepResult:
    rows: list[SweepRow] = field(default_factory=list)
    gate: list[str] = field(default_factory=list)

    def last_fails_gate(self) -> list[str]:
        last = self.rows[-1].result
        return [r.spec.id for r in last.claims if r.spec.id in self.gate and r.status == "fail"]


def run_sweep(config, checkpoints: list[Checkpoint], specs: dict, *, select: str = "all",
              progress: bool | None = None) -> SweepResult:
    """Run the claims on every checkpoint. ``config``: a ClaimsConfig whose ``model`` is replaced
    by each checkpoint in turn; ``select``: ``all`` or ``gate`` (only the gating claims)."""
    from .report import build_document
    from .runspec import resolve_run
    from .suite import ClaimSuite

    if select == "gate":
        specs = {k: s for k, s in specs.items() if "gate" in s.tags}
    gate = sorted(k for k, s in specs.items() if "gate" in s.tags)
    runs = [resolve_run(replace(config, model=c.source)) for c in checkpoints]  # every input checked first
    out = SweepResult(gate=gate)
    for c, run in zip(checkpoints, runs):
        suite = ClaimSuite(run, specs)
        suite.compute(progress=progress)
        for cid in specs:
            suite.result(cid)
        result = suite.suite_result()
        out.rows.append(SweepRow(c, result, build_document(result)))
    return out


def sweep_document(sweep: SweepResult) -> dict:
    first = sweep.rows[0].document
    return {
        "schema": "mechclaims.sweep/1", "created": now_utc(), "gate": sweep.gate,
        "base": first["provenance"]["base"], "config": first["config"],
        "last_fails_gate": sweep.last_fails_gate(),
        "checkpoints": [{"label": r.checkpoint.label, "step": r.checkpoint.step,
                         "source": display_path(r.checkpoint.source), "counts": r.document["counts"],
                         "model": r.document["provenance"]["model"],
                         "claims": [{"id": c["id"], "status": c["status"], "reason": c["reason"],
                                     "checks": [{"name": k["name"], "value": k["value"], "ci": k["ci"],
                                                 "op": k["op"], "threshold": k["threshold"]} for k in c["checks"]]}
                                    for c in r.document["claims"]]}
                        for r in sweep.rows],
    }


def figure(doc: dict) -> str:
    """Each check's value (95% interval) against training step, with its threshold."""
    import base64
    import io
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], list] = {}
    for ck in doc["checkpoints"]:
        for c in ck["claims"]:
            for k in c["checks"]:
                series.setdefault((c["id"], k["name"]), []).append((ck["step"], k, c["status"]))
    keys = sorted(series, key=lambda k: (int(re.sub(r"\D", "", k[0]) or 0), k[1]))
    cols = 4
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        pts = series[key]
        x = [s for s, _, _ in pts]
        y = [k["value"] if k["value"] is not None else float("nan") for _, k, _ in pts]
        lo = [v - (k["ci"][0] if k["ci"][0] is not None else v) for v, (_, k, _) in zip(y, pts)]
        hi = [(k["ci"][1] if k["ci"][1] is not None else v) - v for v, (_, k, _) in zip(y, pts)]
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", capsize=3, color="#2c3e50")
        for xi, yi, (_, _, st) in zip(x, y, pts):
            ax.plot([xi], [yi], "o", color="#c0392b" if st == "fail" else "#1e8449")
        k0 = pts[0][1]
        ax.axhline(k0["threshold"], color="#c0392b", lw=0.8, ls="--")
        ax.set_title(f"{key[0]} {key[1]} ({k0['op']} {k0['threshold']:g})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


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
    atomic_write_text(json_path, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False))
    atomic_write_text(html_path, html)
    return html_path, json_path
