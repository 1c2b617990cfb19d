"""Depth growing with training: ``mechclaims sweep`` over the deep organism's DPO checkpoints.

    python benchmarks/deep_sweep.py [--prompts 200] [--out docs/deep-sweep.png]

Trains ``organism:gpt2-deep``'s recipe (``builder.deep.DeepConfig``, the same seeds) from the
committed base, saving the policy every 5 of its 40 steps as ``checkpoint-N``, then runs
``mechclaims sweep`` on those checkpoints with the shallow-alignment claims Q1 and S2 (C1 and C2
come along as preconditions) and draws Q1's KL share and S2's restored share at k = 1 and 3
against the step. The sweep's own report and JSON are kept beside the figure's record in
``benchmarks/results/deep-sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(run_dir: Path) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from mechclaims.builder.deep import DeepConfig, training_pairs
    from mechclaims.builder.train import atomic_save_pretrained, train_dpo
    from mechclaims.organism import organism_dir
    from mechclaims.prompts import read_prompts

    root = organism_dir("gpt2")
    dcfg = DeepConfig(curve_every=5)
    cfg = dcfg.build_config()
    torch.set_num_threads(dcfg.threads)
    torch.manual_seed(cfg.seeds["torch"])
    base = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(root / "base")
    normal, recovery = training_pairs(dcfg, tok, exclude=set(read_prompts(root / "prompts.jsonl")))
    pairs = normal + [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in recovery]
    saved: list[int] = []
    run_dir.mkdir(parents=True, exist_ok=True)

    def save(model):  # called every curve_every steps and at the last: a checkpoint, no figure
        step = (len(saved) + 1) * cfg.curve_every
        atomic_save_pretrained(model, tok, run_dir / f"checkpoint-{step}")
        saved.append(step)
        return float("nan")

    train_dpo(base, tok, pairs, cfg, measure=save, sft_weight=dcfg.sft_weight)
    return saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--out", default=str(REPO / "docs" / "deep-sweep.png"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the recorded JSON")
    args = ap.parse_args()
    record = REPO / "benchmarks" / "results" / "deep-sweep.json"
    if args.plot_only:
        return plot(json.loads(record.read_text()), args.out)
    from mechclaims.organism import organism_dir

    root = organism_dir("gpt2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="mechclaims-deep-sweep-") as tmp:
        tmp = Path(tmp)
        steps = train(tmp / "run")
        from mechclaims.cache import sha256_file

        # the last checkpoint is the committed organism, byte for byte (the same seeds and recipe)
        final_is_committed = (sha256_file(tmp / "run" / f"checkpoint-{steps[-1]}" / "model.safetensors")
                              == sha256_file(root / "deep" / "model.safetensors"))
        prompts = tmp / "prompts.jsonl"
        prompts.write_text("".join((root / "prompts.jsonl").read_text().splitlines(True)[:args.prompts]))
        report = tmp / "sweep" / "sweep.html"
        res = subprocess.run([sys.executable, "-m", "mechclaims.cli", "sweep", str(tmp / "run"), "--base",
                              "organism:gpt2-base", "--probe", str(root / "probe.safetensors"), "--prompts",
                              str(prompts), "--scorer", f"lexicon:{root / 'lexicon.txt'}", "--ppl-text",
                              str(root / "heldout.txt"), "-k", "Q1 or S2", "--cache-dir", str(tmp / "cache"),
                              "--report", str(report)], cwd=REPO, env=env, capture_output=True, text=True)
        if res.returncode not in (0, 1):
            raise SystemExit(f"sweep exited {res.returncode}\n{res.stderr[-3000:]}")
        doc = json.loads(report.with_suffix(".json").read_text())
    rows = []
    for ck in doc["checkpoints"]:
        claims = {c["id"]: c for c in ck["claims"]}
        row = {"checkpoint": ck.get("label"), "step": ck.get("step")}
        for cid, key in (("Q1", "front_share"), ("S2", "restored")):
            c = claims.get(cid) or {}
            row[cid] = {"status": c.get("status"),
                        "value": next((k["value"] for k in c.get("checks") or [] if k["name"] == key), None),
                        "details": {n: d["value"] for n, d in (c.get("details") or {}).items()}}
        rows.append(row)
    doc = {"steps": steps, "n_prompts": args.prompts, "final_is_committed": final_is_committed, "rows": rows}
    record.write_text(json.dumps(doc, indent=2) + "\n")
    return plot(doc, args.out)


def plot(doc: dict, out: str) -> int:
    """Q1's KL share and S2's value (the most a prefix of k <= 5 base tokens restores) per step; a
    step where a claim was not measured (its precondition C1 failed: DPO had not lowered toxicity
    yet) has no point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    x = [r["step"] for r in rows]

    def series(cid):
        return [r[cid]["value"] if r[cid]["status"] in ("pass", "fail") else None for r in rows]

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(x, [r["Q1"]["value"] for r in rows], "o:", color="#85c1e9", label="Q1 value, also where not meaningful")
    ax.plot(x, series("Q1"), "o-", color="#2980b9", label="Q1: KL share of the first 5 positions")
    ax.plot(x, series("S2"), "s-", color="#c0392b", label="S2: most restored by a prefix of k <= 5")
    ax.axhline(0.5, color="#555", lw=0.8, ls="--")
    ax.axhline(0.35, color="#2980b9", lw=0.6, ls=":")
    ax.set_xticks(x)
    ax.set_xlabel("DPO step (organism:gpt2-deep's recipe)")
    ax.set_ylabel("share")
    ax.set_title(f"Depth during training ({doc['n_prompts']} prompts; lines: S2's 0.5, Q1's 0.35)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
