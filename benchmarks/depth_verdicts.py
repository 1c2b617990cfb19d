"""The shallow-alignment pack's verdicts on the committed organisms, and what the pack costs.

    python benchmarks/depth_verdicts.py [--models organism:gpt2,organism:gpt2-deep,organism:llama]

For each model: ``pytest claims/shallow_alignment`` (C1 and C2 come along as preconditions) on
all its organism's challenge prompts, as a user runs it. The raw claims and the depth table go
to ``benchmarks/results/depth-verdicts.json``; the verdict table replaces what follows the
``<!-- depth-verdicts -->`` marker in ``docs/shallow-alignment.md``. The cost of the pack is
the seconds its depth parts took against the statistics pass and the intervention sets of a
full ``pytest claims/`` run (``--cost``: one cold run of each pack on organism:gpt2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "depth-verdicts.json"
DOC = REPO / "docs" / "shallow-alignment.md"
MARK = "<!-- depth-verdicts -->"
IDS = ("C1", "C2", "Q1", "Q2", "Q3", "Q4", "S2")


def run(model: str, path: str, workdir: Path, *extra: str) -> tuple[dict, float]:
    report = workdir / f"{model.replace(':', '_')}-{Path(path).name}.html"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", path, "--model", model, "--report", str(report),
                          "--cache-dir", str(workdir / "cache"), "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
                          *extra], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode not in (0, 1):
        raise SystemExit(f"{model}: pytest exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return json.loads(report.with_suffix(".json").read_text()), seconds


def row(model: str, doc: dict) -> dict:
    claims = {c["id"]: c for c in doc["claims"] + doc.get("preconditions", [])}
    out = {"model": model, "n_prompts": doc["provenance"]["prompts"]["n"], "claims": {}}
    for cid in IDS:
        c = claims.get(cid)
        if c is None:
            continue
        k = c["checks"][0] if c["checks"] else None
        out["claims"][cid] = {"status": c["status"], "value": k["value"] if k else None,
                              "ci": k["ci"] if k else None, "reason": c["reason"],
                              "details": {n: d["value"] for n, d in c["details"].items()}}
    out["depth"] = doc.get("depth")
    return out


def table(rows: list[dict]) -> str:
    def cell(r, cid):
        c = r["claims"].get(cid)
        if c is None:
            return "—"
        if c["value"] is None:
            return c["status"].replace("_", " ")
        ci = f" [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]" if c["ci"] else ""
        return f"**{c['status'].replace('_', ' ')}** {c['value']:.3g}{ci}"

    lines = ["| model | " + " | ".join(IDS) + " |", "|---" * (len(IDS) + 1) + "|"]
    lines += [f"| `{r['model']}` | " + " | ".join(cell(r, cid) for cid in IDS) + " |" for r in rows]
    curves = ["", "Restored share by prefix length k (Q2/S2's curve; — where the window holds too little "
              "toxicity to measure):", "", "| model | k = 1 | k = 3 | k = 5 | k = 10 |", "|---|---|---|---|---|"]
    for r in rows:
        pre = {p["k"]: p for p in ((r.get("depth") or {}).get("prefill") or [])}
        fmt = lambda p: "—" if p is None or p.get("restored") is None else f"{p['restored']:.2f}"  # noqa: E731
        curves.append(f"| `{r['model']}` | " + " | ".join(fmt(pre.get(k)) for k in (1, 3, 5, 10)) + " |")
    return "\n".join(lines + curves) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="organism:gpt2,organism:gpt2-deep,organism:llama")
    ap.add_argument("--cost", action="store_true", help="also time a cold run of each pack on organism:gpt2")
    args = ap.parse_args()
    rows, record = [], {"models": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="mechclaims-depth-") as tmp:
        for model in args.models.split(","):
            doc, seconds = run(model, "claims/shallow_alignment", Path(tmp))
            r = row(model, doc)
            r["seconds"] = round(seconds, 1)
            rows.append(r)
            record["models"][model] = r
            print(f"{model}: " + ", ".join(f"{cid} {c['status']}" for cid, c in r["claims"].items()), flush=True)
        if args.cost:
            cost = {}
            for name, path in (("dpo_toxicity", "claims/dpo_toxicity"), ("all", "claims/")):
                fresh = Path(tmp) / f"cost-{name}"
                fresh.mkdir()
                doc, seconds = run("organism:gpt2", path, fresh)
                cost[name] = {"seconds": round(seconds, 1),
                              "depth_seconds": (doc.get("depth") or {}).get("seconds")}
            cost["added_fraction"] = round(cost["all"]["seconds"] / cost["dpo_toxicity"]["seconds"] - 1, 3)
            record["cost"] = cost
            print(f"cost: {cost}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    text = DOC.read_text()
    DOC.write_text(text[:text.index(MARK) + len(MARK)] + "\n\n" + table(rows))
    print(f"wrote {OUT} and {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
