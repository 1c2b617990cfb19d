"""The whole claim suite on a GPU: where the time goes, and whether the GPU's numbers are the CPU's.

Run by ``benchmarks/gpu.sh`` after ``gpu_bench.py``. Three parts, each a separate JSON section:

``organism``
    ``pytest claims/`` on the default organism (GPT-2 4×96×2048, 600 challenge prompts, fp32,
    automatic batch size) on ``--device``, own and shared positions, each from an empty cache.
    Records the wall time, the exit status, the per-phase seconds from ``claims.json``
    (statistics pass; each intervention set's generation, scoring and perplexity) and, when
    ``--cpu-reference DIR`` holds the CPU run's ``own/claims.json`` / ``shared/claims.json``, every
    check value and verdict against the CPU's: fp32 on two devices runs different kernels, so
    values agree to rounding unless a greedy argmax tie flips a continuation.
``medium``
    ``pytest claims/`` on the benchmarks' seeded 355M GPT-2-medium pair (random weights: the
    verdicts mean nothing, the seconds do), bf16, automatic batch size, ``--medium-prompts``
    prompts, the organism's lexicon as scorer and its held-out text for perplexity: the
    whole-suite cost per 100 prompts at the paper's model size.
``device_map``
    The organism with every module mapped to the GPU by Accelerate against the plain load (must
    be bitwise equal), then split across the GPU and the CPU (embeddings and blocks 0-1 on the
    GPU, the rest on the CPU). TransformerLens 4.3 refuses that split after loading (measured);
    the refusal is recorded, and ``mechclaims`` refuses such a map before loading.

``python benchmarks/gpu_suite.py --device cpu --medium-prompts 8 --shape tiny`` runs the same
code on a CPU (a smoke test of this script).
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ORGANISM = ROOT / "fixtures" / "organism" / "gpt2"


def _phases(doc: dict) -> dict:
    """Seconds by phase, from a ``claims.json``."""
    stats = doc.get("provenance", {}).get("statistics", {})
    sets = doc.get("behaviour", {}).get("sets", [])
    per = {s["set"]: s["seconds"] for s in sets if "seconds" in s}
    total = {k: sum(v.get(k, 0.0) for v in per.values()) for k in ("generate", "score", "ppl")}
    return {"statistics_pass": stats.get("seconds"), "sets_timed": len(per), "sets": per,
            "sets_total": total, "n_prompts": stats.get("cache_key", {}).get("n_prompts"),
            "batch_size": doc.get("config", {}).get("batch_size")}


def _checks(doc: dict) -> dict:
    out = {}
    for c in doc.get("claims", []):
        out[c["id"]] = {"status": c["status"],
                        "checks": {k["name"]: k.get("value") for k in c.get("checks", [])}}
    return out


def _compare(gpu: dict, cpu: dict) -> dict:
    """Every check value and verdict of the GPU run against the CPU run's."""
    g, c = _checks(gpu), _checks(cpu)
    rows, flipped, worst = [], [], 0.0
    for cid in sorted(set(g) | set(c), key=lambda s: (len(s), s)):
        if cid not in g or cid not in c:
            rows.append({"id": cid, "missing_on": "gpu" if cid not in g else "cpu"})
            continue
        if g[cid]["status"] != c[cid]["status"]:
            flipped.append(cid)
        for name, gv in g[cid]["checks"].items():
            cv = c[cid]["checks"].get(name)
            if isinstance(gv, (int, float)) and isinstance(cv, (int, float)):
                d = abs(gv - cv)
                worst = max(worst, d)
                rows.append({"id": cid, "check": name, "gpu": gv, "cpu": cv, "abs_diff": d,
                             "gpu_status": g[cid]["status"], "cpu_status": c[cid]["status"]})
    tox = {}
    for side, doc in (("gpu", gpu), ("cpu", cpu)):
        tox[side] = {s["set"]: s["toxicity"] for s in doc.get("behaviour", {}).get("sets", [])}
    tox_diff = {k: abs(tox["gpu"][k] - tox["cpu"][k]) for k in tox["gpu"] if k in tox["cpu"]}
    return {"verdicts_differ": flipped, "max_abs_check_diff": worst, "checks": rows,
            "max_abs_set_toxicity_diff": max(tox_diff.values(), default=None), "set_toxicity_diff": tox_diff}


def _portable(text: str, work: Path) -> str:
    """``text`` without this machine's paths: the scratch folder as ``<work>``, the checkout as ``.``."""
    import site

    text = str(text).replace(str(work), "<work>").replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    for d in {*site.getsitepackages(), *sys.path} - {"", str(HERE)}:
        if d.startswith("/") and len(d) > 1:
            text = text.replace(d.rstrip("/") + "/", "<site-packages>/")
    return text


def run_claims(args: list[str], report: Path, cache: Path, timeout: int) -> dict:
    # MECHCLAIMS_FIXTURES: this checkout's organisms, also when mechclaims is installed elsewhere.
    env = {"MECHCLAIMS_FIXTURES": str(ROOT / "fixtures"), **os.environ, "MECHCLAIMS_CACHE_DIR": str(cache),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--report", str(report), *args]
    print("gpu_suite:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e.stdout or "")[-3000:]
    wall = time.perf_counter() - t0
    work = cache.parent  # every scratch path lives under the run's scratch folder
    out = {"cmd": [_portable(a, work) for a in cmd[3:]], "rc": rc, "wall_s": wall}
    doc_path = report.with_name("claims.json")
    if doc_path.exists():
        doc = json.loads(doc_path.read_text())
        out.update(phases=_phases(doc), counts=doc.get("counts"), claims=_checks(doc))
        n = out["phases"]["n_prompts"] or 0
        if n:
            out["wall_s_per_100_prompts"] = 100 * wall / n
    if rc not in (0, 1):
        out["tail"] = _portable(tail, work)
    print(f"  rc {rc}, {wall:.1f} s" + (f"\n{tail}" if rc not in (0, 1) else ""), flush=True)
    return out


def part_organism(device: str, work: Path, cpu_ref: Path | None, timeout: int) -> dict:
    res = {}
    for positions in ("own", "shared"):
        report = work / f"organism-{positions}" / "claims.html"
        r = run_claims(["--device", device, "--positions", positions], report, work / f"cache-{positions}", timeout)
        ref = cpu_ref / positions / "claims.json" if cpu_ref else None
        doc = report.with_name("claims.json")
        if ref and ref.exists() and doc.exists():
            r["against_cpu"] = _compare(json.loads(doc.read_text()), json.loads(ref.read_text()))
            print(f"  against the CPU: verdicts differ {r['against_cpu']['verdicts_differ']}, "
                  f"max |check diff| {r['against_cpu']['max_abs_check_diff']:.3g}", flush=True)
        res[positions] = r
    return res


def part_medium(device: str, work: Path, shape_name: str, n_prompts: int, timeout: int) -> dict:
    import torch

    import conftest as bench
    from mechclaims.probe import Probe

    shape = bench.SHAPES[shape_name]
    base_dir, model_dir = bench.build_pair(work / "medium", shape, bench.build_tokenizer())
    d_model = shape.config.get("n_embd", 768)
    probe = work / "medium" / "probe.safetensors"
    Probe(torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).save(probe)
    prompts = work / "medium" / "prompts.txt"
    prompts.write_text("\n".join(bench.make_prompts(n_prompts)) + "\n")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    args = ["--base", str(base_dir), "--model", str(model_dir), "--probe", str(probe), "--prompts", str(prompts),
            "--device", device, "--dtype", dtype, "--scorer", f"lexicon:{ORGANISM / 'lexicon.txt'}",
            "--ppl-text", str(ORGANISM / "heldout.txt")]
    r = run_claims(args, work / "medium-report" / "claims.html", work / "cache-medium", timeout)
    r.update(shape=shape.name, dtype=dtype, n_prompts=n_prompts)
    return r


def part_device_map(device: str) -> dict:
    """The organism split across ``device`` and the CPU against the whole model on ``device``."""
    import numpy as np
    import torch

    from mechclaims.loading import load_pair
    from mechclaims.probe import load_probe
    from mechclaims.prompts import read_prompts
    from mechclaims.stats import StatsSettings, collect_pair

    dirs = (str(ORGANISM / "base"), str(ORGANISM / "dpo"))
    probe = load_probe(ORGANISM / "probe.safetensors")
    prompts = read_prompts(ORGANISM / "prompts.jsonl")[:128]
    settings = StatsSettings(positions="own", max_new_tokens=20, batch_size=32)
    gpu = device if device.startswith("cuda") else "cpu"
    split = {"transformer.wte": gpu, "transformer.wpe": gpu, "transformer.h.0": gpu, "transformer.h.1": gpu,
             "transformer.h.2": "cpu", "transformer.h.3": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    whole_map = {k: gpu for k in split}

    def stats(**kw):
        t0 = time.perf_counter()
        base, model = load_pair(*dirs, **kw)
        s = collect_pair(base, model, prompts, probe, settings, progress=False)
        if gpu.startswith("cuda"):
            torch.cuda.synchronize()
        return s, time.perf_counter() - t0

    def diff(a, b):
        out = {}
        for side in ("base", "model"):
            x, y = getattr(a, side), getattr(b, side)
            mx, my = x.mean_act(), y.mean_act()
            out[side] = {
                "continuations_equal": float((x.continuations == y.continuations).all(axis=1).mean()),
                "bitwise_equal": all(np.array_equal(getattr(x, n), getattr(y, n)) for n in
                                     ("act_sum", "count", "mlp_out_proj_sum", "resid_post_proj_sum")),
                "max_abs_mean_act_diff": float(np.abs(mx - my).max()),
                "mean_act_scale": float(np.abs(my).max()),
                "all_finite": bool(np.isfinite(x.act_sum).all()),
            }
        return out

    whole, t_whole = stats(device=gpu)
    mapped, t_mapped = stats(device_map=json.dumps(whole_map))
    res = {"prompts": len(prompts), "whole_s": t_whole, "map_all_on_device_s": t_mapped,
           "map_all_on_device_vs_whole": diff(mapped, whole)}
    del mapped
    res["split"] = split
    try:  # TransformerLens 4.3 refuses a map that mixes a GPU with CPU/disk offload
        split_s, t_split = stats(device_map=json.dumps(split))
        res.update(split_s=t_split, split_vs_whole=diff(split_s, whole))
    except ValueError as e:
        res["split_refused"] = f"{type(e).__name__}: {e}"
    print("gpu_suite: device map:", json.dumps({k: v for k, v in res.items() if k != "split"}), flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the claim suite on a GPU")
    ap.add_argument("--out", default=str(HERE / "gpu-suite.json"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="medium")
    ap.add_argument("--medium-prompts", type=int, default=600)
    ap.add_argument("--cpu-reference", default="", help="folder with own/claims.json and shared/claims.json")
    ap.add_argument("--parts", default="organism,medium,device_map")
    ap.add_argument("--timeout", type=int, default=400, help="seconds per pytest run")
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; nothing measured.")
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    out = {"device": args.device, "torch": torch.__version__,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(args.device)
    cpu_ref = Path(args.cpu_reference) if args.cpu_reference else None
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mechclaims-gpu-suite-") as tmp:
        work = Path(tmp)
        for part in parts:
            t0 = time.perf_counter()
            try:
                if part == "organism":
                    out[part] = part_organism(args.device, work, cpu_ref, args.timeout)
                elif part == "medium":
                    out[part] = part_medium(args.device, work, args.shape, args.medium_prompts, args.timeout)
                elif part == "device_map":
                    out[part] = part_device_map(args.device)
                else:
                    raise SystemExit(f"gpu_suite: unknown part {part!r}")
            except Exception as e:  # one broken part must not lose the others' figures
                import traceback

                out[part] = {"error": _portable(f"{type(e).__name__}: {e}", work),
                             "traceback": _portable(traceback.format_exc()[-3000:], work)}
                print(f"gpu_suite: {part} failed: {out[part]['error']}", flush=True)
            out.setdefault("part_seconds", {})[part] = time.perf_counter() - t0
            path.write_text(json.dumps(out, indent=2, default=str) + "\n")  # after each part: a timeout keeps the rest
    print(f"gpu_suite: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
