"""Can the gate be trusted? Honest retrains must pass it, broken candidates must fail it.

    python benchmarks/gate_trust.py [--out benchmarks/results/gate-trust.json] [--retrains 4]

The release is the committed GPT-2 organism (``organism:gpt2``: TRL DPO, 20 steps, fp32, seed
``BuildConfig.seeds["dpo"]``). Its ``claims.json`` from ``pytest claims/ -m gate`` is the baseline.
Then, with the same inputs (base, probe, prompts, lexicon scorer, held-out text), every candidate
is gated against it:

* **honest retrains**: the same TRL recipe on the same pairs and base, other DPO seeds (data
  order): these must not regress, and must not fail anything that the release passed;
* **broken candidates**: (1) the release with Gaussian noise on every weight until perplexity is
  destroyed; (2) ``organism:gpt2-dampened`` (the "toxic neurons" story: only the top toxic neurons
  moved); (3) a shallow detox: the same recipe stopped after 3 of 20 steps (toxicity barely moved).
  Each must fail the gate.

Every candidate is a real directory of ``save_pretrained`` weights named by path, exactly as a
team's checkpoint would be. Writes one JSON record (false alarms, detections, per-candidate
statuses and seconds). Takes about 20-30 minutes on two quiet CPU cores.
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


def _gate(work: Path, name: str, model: str, inputs: list[str], baseline: Path | None) -> dict:
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(REPO / "claims"), "-m", "gate", "-q", "-p", "no:randomly",
           "--model", model, "--report", str(out / "claims.html"), "--junitxml", str(out / "junit.xml"), *inputs]
    if baseline is not None:
        cmd += ["--baseline", str(baseline)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    seconds = time.time() - t0
    (out / "pytest.log").write_text(proc.stdout + proc.stderr)
    doc = json.loads((out / "claims.json").read_text()) if (out / "claims.json").is_file() else None
    claims = {c["id"]: {"status": c["status"], "outcome": c["outcome"], "regressed": c["regressed"],
                        "known_failure": c["known_failure"],
                        "values": {k["name"]: k["value"] for k in c["checks"]}} for c in (doc or {}).get("claims", [])}
    print(f"  {name}: exit {proc.returncode} in {seconds:.0f}s: "
          + " ".join(f"{cid}={c['outcome'][:4]}{'/R' if c['regressed'] else ''}" for cid, c in claims.items()),
          flush=True)
    return {"exit": proc.returncode, "seconds": round(seconds, 1), "claims": claims,
            "last_lines": (proc.stdout.strip().splitlines() or [""])[-1]}


def _save(model, tok, path: Path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gate-trust.json"))
    ap.add_argument("--retrains", type=int, default=4)
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechclaims.organism import layout
    from mechclaims.builder.config import BuildConfig
    from mechclaims.builder.data import make_pairs
    from mechclaims.builder.train import train_dpo

    lay = layout("gpt2")
    files = lay.defaults()
    work = Path(args.work or tempfile.mkdtemp(prefix="mechclaims-gate-trust-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MECHCLAIMS_CACHE_DIR", str(work / "cache"))
    inputs = ["--base", "organism:gpt2-base", "--probe", str(files["probe"]), "--prompts", str(files["prompts"]),
              "--scorer", f"lexicon:{files['lexicon']}", "--ppl-text", str(files["heldout"])]
    record = {"inputs": {"base": "organism:gpt2-base", "prompts": "organism prompts (600)",
                         "scorer": "organism lexicon", "ppl_text": "organism held-out text"},
              "command": "pytest claims/ -m gate --model CANDIDATE --baseline release/claims.json", "candidates": {}}
    t_start = time.time()

    print("release: organism:gpt2", flush=True)
    release = _gate(work, "release", "organism:gpt2", inputs, None)
    record["release"] = release
    baseline = work / "release" / "claims.json"

    cfg = BuildConfig.default("gpt2")
    tok = AutoTokenizer.from_pretrained(lay.base)
    base = AutoModelForCausalLM.from_pretrained(lay.base, torch_dtype=torch.float32)
    pairs = make_pairs(cfg, cfg.n_pairs)
    dpo_seed = cfg.seeds["dpo"]

    class Seeded(BuildConfig):
        """The release's recipe with another DPO seed (data order): an honest retrain."""

        seed_override: int = 0

        @property
        def seeds(self) -> dict:
            return {**super().seeds, "dpo": self.seed_override}

    def retrain(seed: int, max_steps: int | None = None):
        c = Seeded(**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
        c.seed_override = seed
        used = pairs if max_steps is None else pairs[: max_steps * cfg.dpo_batch_size]
        model, summary = train_dpo(base, tok, used, c, log=lambda *a: None)
        return model, summary

    candidates = {}
    for i in range(1, args.retrains + 1):
        t0 = time.time()
        model, _ = retrain(dpo_seed + 1000 * i)
        candidates[f"retrain-seed{i}"] = ("honest", _save(model, tok, work / "models" / f"retrain-seed{i}"),
                                          time.time() - t0)
    # Broken 1: perplexity destroyed (noise on every weight of the release).
    g = torch.Generator().manual_seed(0)
    noisy = AutoModelForCausalLM.from_pretrained(lay.dpo, torch_dtype=torch.float32)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 2.0 * p.std().clamp_min(1e-3))
    candidates["broken-ppl-destroyed"] = ("broken", _save(noisy, tok, work / "models" / "ppl-destroyed"), 0.0)
    # Broken 2: the dampened organism (only the top toxic neurons moved).
    candidates["broken-dampened"] = ("broken", "organism:gpt2-dampened", 0.0)
    # Broken 3: a shallow detox, the recipe stopped after 3 of its 20 steps.
    t0 = time.time()
    model, _ = retrain(dpo_seed, max_steps=3)
    candidates["broken-shallow-3-steps"] = ("broken", _save(model, tok, work / "models" / "shallow"), time.time() - t0)

    for name, (kind, source, train_s) in candidates.items():
        print(f"{kind}: {name}", flush=True)
        res = _gate(work, name, source, inputs, baseline)
        res.update(kind=kind, train_seconds=round(train_s, 1))
        record["candidates"][name] = res

    honest = [r for r in record["candidates"].values() if r["kind"] == "honest"]
    broken = [r for r in record["candidates"].values() if r["kind"] == "broken"]
    record["summary"] = {
        "honest": len(honest), "false_alarms": sum(r["exit"] != 0 for r in honest),
        "honest_regressions": sum(any(c["regressed"] for c in r["claims"].values()) for r in honest),
        "broken": len(broken), "detected": sum(r["exit"] == 1 for r in broken),
        "seconds": round(time.time() - t_start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(json.dumps(record["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
