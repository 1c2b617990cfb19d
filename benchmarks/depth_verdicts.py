"""Both packs' verdicts on the committed organisms, and what the shallow-alignment pack costs.

    python benchmarks/depth_verdicts.py [--models organism:gpt2,organism:gpt2-deep,organism:llama]

For each model: ``pytest claims/`` (both packs) on all its organism's challenge prompts, cold
cache, as a user runs it. The raw claims, the depth table and the seconds go to
``benchmarks/results/depth-verdicts.json``; the verdict tables replace what follows the
``<!-- depth-verdicts -->`` marker in ``docs/shallow-alignment.md``. The cost of the depth
pack is the seconds its two parts took (KL, prefilled generations) over the rest of the run.
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
IDS = ("C1", "C2", "Q1", "Q2", "Q3", "Q4", "S2")  # the depth table; every claim goes to the JSON


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
    out = {"model": model, "n_prompts": doc["provenance"]["prompts"]["n"], "claims": {},
           "packs": {c["id"]: c["pack"] for c in doc["claims"]}}
    for cid, c in claims.items():
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
    first = ["", "The dpo-toxicity pack on the same runs (claims that fail; the rest pass or skip):", "",
             "| model | failed | passed | skipped, not meaningful or not checked |", "|---|---|---|---|"]
    for r in rows:
        mine = {cid: c for cid, c in r["claims"].items() if r["packs"].get(cid) == "dpo-toxicity"}
        cols = [_ids(mine, "fail"), _ids(mine, "pass"), _ids(mine, "skip", "not_meaningful", "not_checked")]
        first.append(f"| `{r['model']}` | " + " | ".join(cols) + " |")
    lines += first
    curves = ["", "Restored share by prefix length k (Q2/S2's curve; — where the window holds too little "
              "of DPO's drop to measure: `DepthView.measurable` in mechclaims.depth):", "",
              "| model | k = 1 | k = 3 | k = 5 | k = 10 |", "|---|---|---|---|---|"]
    for r in rows:  # S2's details: the shares at each k, null where the window is not measurable
        det = (r["claims"].get("S2") or {}).get("details") or {}
        fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
        shares = [fmt(det.get(f"restored_k{k}")) for k in (1, 3, 5, 10)]
        curves.append(f"| `{r['model']}` | " + " | ".join(shares) + " |")
    cost = ["", "Cost (cold `pytest claims/`, both packs, one run at a time on 2 cores; the depth pack's two "
            "parts against the rest of the run):", "",
            "| model | run, s | depth, s | depth / rest |", "|---|---|---|---|"]
    for r in rows:
        sec = r.get("seconds") or {}
        if sec:
            cost.append(f"| `{r['model']}` | {sec['run']:.0f} | {sec['depth']:.0f} | "
                        f"{100 * sec['depth_over_the_rest']:.0f}% |")
    return "\n".join(lines + curves + cost) + "\n"


def _ids(claims: dict, *statuses: str) -> str:
    return ", ".join(sorted((c for c, v in claims.items() if v["status"] in statuses), key=_key)) or "—"


def _key(cid: str):
    return (cid[0], int(cid[1:]) if cid[1:].isdigit() else 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="organism:gpt2,organism:gpt2-deep,organism:llama")
    args = ap.parse_args()
    # Models measured earlier stay in the record (one model can be re-measured on its own).
    record = json.loads(OUT.read_text()) if OUT.is_file() else {"models": {}}
    record["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="mechclaims-depth-") as tmp:
        for model in filter(None, args.models.split(",")):  # --models "": re-render the recorded runs
            work = Path(tmp) / model.replace(":", "_")
            work.mkdir()
            doc, seconds = run(model, "claims/", work)
            r = row(model, doc)
            r["measured"] = record["created"]
            depth_s = sum(((doc.get("depth") or {}).get("seconds") or {}).values())
            r["seconds"] = {"run": round(seconds, 1), "depth": round(depth_s, 1),
                            "depth_over_the_rest": round(depth_s / (seconds - depth_s), 3)}
            record["models"][model] = r
            print(f"{model}: " + ", ".join(f"{cid} {c['status']}" for cid, c in r["claims"].items()), flush=True)
    order = ["organism:gpt2", "organism:gpt2-deep", "organism:llama"]
    rows = sorted(record["models"].values(), key=lambda r: order.index(r["model"]) if r["model"] in order else 9)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    text = DOC.read_text()
    DOC.write_text(text[:text.index(MARK) + len(MARK)] + "\n\n" + table(rows))
    print(f"wrote {OUT} and {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
