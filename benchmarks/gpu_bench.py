"""The statistics pass against plain HF ``generate`` on a GPU, in bf16 and fp32; figures as JSON.

Run by ``benchmarks/gpu.sh`` (which checks for CUDA first). The models are the benchmarks'
seeded random GPT-2-shaped pairs (``conftest.py``; default the 355M GPT-2 medium shape), the
prompts the benchmarks' prompts, T = 20 greedy tokens, no early stop. Per dtype it records, in
seconds, the min and median over ``--rounds`` timed rounds (after one warm-up) of

- ``pass``: ``mechclaims.stats.collect_pair(positions="own")``, both models;
- ``generate``: plain ``transformers`` ``generate`` of both models on the same padded batches;

their ratio, the agreement of the continuations (reported, not asserted: in bf16 two kernels
may break an argmax tie differently), one batch-1 decode step of the plain model (median over
``--decode-steps`` cached steps), the weight bytes one decode step must read, the device's
measured copy bandwidth and the physical floor ``weight bytes / bandwidth`` per decode step.

``--device cpu --shape tiny`` runs the same code on a CPU (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

T = 20


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed(fn, device: str, rounds: int, warmup: int = 1) -> tuple[dict, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"min": min(times), "median": statistics.median(times), "rounds": rounds, "all": times}, out


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Device memory bandwidth in bytes/s from a large on-device copy (reads + writes)."""
    import torch

    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    stats, _ = _timed(lambda: y.copy_(x), device, rounds=10, warmup=2)
    return 2 * nbytes / stats["min"]  # x and y are freed on return


def run_dtype(dirs, dtype: str, device: str, prompts, batch_size: int, rounds: int, decode_steps: int,
              protocol_prompts=None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from mechclaims.loading import load_pair
    from mechclaims.probe import Probe
    from mechclaims.prompts import encode_prompts, pad_left
    from mechclaims.stats import StatsSettings, collect_pair, greedy_generate

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base, model = load_pair(*dirs, device=device, dtype=dtype)
    hf = [AutoModelForCausalLM.from_pretrained(d, dtype=getattr(torch, dtype)).to(device).eval() for d in dirs]
    for m in hf:
        m.generation_config.eos_token_id = None  # exactly T tokens, EOS like any token (as mechclaims)
    tok = base.tokenizer
    probe = Probe(torch.randn(base.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))

    def measure(prompts, batch_size, rounds):
        settings = StatsSettings(positions="own", max_new_tokens=T, batch_size=batch_size)
        shared = StatsSettings(positions="shared", max_new_tokens=T, batch_size=batch_size)
        seqs = encode_prompts(tok, prompts, max_prompt_tokens=32,
                              prepend_bos=bool(base.bridge.cfg.default_prepend_bos))
        batches = [pad_left(seqs[i:i + batch_size], tok.pad_token_id, device=device)
                   for i in range(0, len(seqs), batch_size)]

        def mech():
            return collect_pair(base, model, prompts, probe, settings, progress=False)

        def generate():
            out = [[], []]
            with torch.no_grad():
                for b in batches:
                    for k, m in enumerate(hf):
                        g = m.generate(b.tokens, attention_mask=b.attention_mask, do_sample=False,
                                       max_new_tokens=T, min_new_tokens=T, pad_token_id=m.config.pad_token_id)
                        out[k].append(g[:, b.tokens.shape[1]:].cpu())
            return [torch.cat(o).numpy() for o in out]

        def mech_shared():  # one generation, both models read it in one parallel forward each
            return collect_pair(base, model, prompts, probe, shared, progress=False)

        pass_t, stats = _timed(mech, device, rounds)
        shared_t, _ = _timed(mech_shared, device, rounds)
        gen_t, conts = _timed(generate, device, rounds)
        agree = [float((s.continuations == c).all(axis=1).mean()) for s, c in ((stats.base, conts[0]),
                                                                                 (stats.model, conts[1]))]
        return {
            "n_prompts": len(prompts), "batch_size": batch_size,
            "pass_s": pass_t, "shared_pass_s": shared_t, "generate_s": gen_t,
            "shared_over_own_median": shared_t["median"] / pass_t["median"],
            "ratio_min": pass_t["min"] / gen_t["min"], "ratio_median": pass_t["median"] / gen_t["median"],
            "continuations_equal_to_generate": {"base": agree[0], "model": agree[1]},
        }, seqs

    res, seqs = measure(prompts, batch_size, rounds)
    # One batch-1 decode step of the plain model: a cached generation of decode_steps tokens,
    # minus its prefill, per step.
    one = pad_left(seqs[:1], tok.pad_token_id, device=device)
    prefill_t, _ = _timed(lambda: greedy_generate(hf[0], one, 1), device, rounds=5)
    long_t, _ = _timed(lambda: greedy_generate(hf[0], one, decode_steps + 1), device, rounds=5)
    step_s = max(long_t["median"] - prefill_t["median"], 0.0) / decode_steps
    n_params = sum(p.numel() for p in hf[0].parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in hf[0].parameters())
    res.update({
        "decode_step_batch1_ms": 1e3 * step_s,
        "params": n_params, "weight_bytes_per_step": weight_bytes,
    })
    if device.startswith("cuda"):
        from mechclaims.devices import RowShape, resolve_batch_size

        res["auto_batch_size"] = resolve_batch_size(None, device, RowShape.of(base), 33, T)
        res["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    if protocol_prompts:  # the paper's protocol size at the batch size mechclaims would pick
        auto = res.get("auto_batch_size", batch_size)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        res["protocol"], _ = measure(protocol_prompts, auto, rounds=2)
        if device.startswith("cuda"):
            res["protocol"]["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return res  # the models are freed on return


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="statistics pass vs plain generate on a GPU")
    ap.add_argument("--out", default=str(HERE / "gpu-results.json"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default=os.environ.get("MECHCLAIMS_BENCH_SHAPES", "medium").split(",")[0])
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--protocol-prompts", type=int, default=0,
                    help="also time N prompts (the paper: 1199) at the automatic batch size, 2 rounds")
    args = ap.parse_args(argv)

    import torch

    import conftest as bench  # the benchmarks' seeded shapes, tokenizer and prompts

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; nothing measured.")
        return 0
    shape = bench.SHAPES[args.shape]
    prompts = bench.make_prompts(args.prompts)
    out = {"shape": shape.name, "config": shape.config, "n_prompts": len(prompts), "new_tokens": T,
           "batch_size": args.batch_size, "device": args.device, "torch": torch.__version__,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": {}}
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(args.device)
        out["gpu"] = {"name": props.name, "total_memory_bytes": props.total_memory}
        out["copy_bandwidth_bytes_per_s"] = copy_bandwidth(args.device)
    with tempfile.TemporaryDirectory(prefix="mechclaims-gpu-bench-") as tmp:
        dirs = bench.build_pair(Path(tmp), shape, bench.build_tokenizer())
        for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
            print(f"gpu_bench: {shape.name} {dtype} on {args.device} ...", flush=True)
            r = run_dtype(dirs, dtype, args.device, prompts, args.batch_size, args.rounds, args.decode_steps,
                          bench.make_prompts(args.protocol_prompts) if args.protocol_prompts else None)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if "copy_bandwidth_bytes_per_s" in out:
                r["floor_decode_step_ms"] = 1e3 * r["weight_bytes_per_step"] / out["copy_bandwidth_bytes_per_s"]
            out["results"][dtype] = r
            print(f"  pass {r['pass_s']['min']:.3f}s  generate {r['generate_s']['min']:.3f}s  "
                  f"ratio {r['ratio_min']:.2f}  batch-1 decode step {r['decode_step_batch1_ms']:.2f} ms"
                  + (f" (floor {r['floor_decode_step_ms']:.3f} ms)" if "floor_decode_step_ms" in r else ""),
                  flush=True)
            if "protocol" in r:
                p = r["protocol"]
                print(f"  {p['n_prompts']} prompts, batch {p['batch_size']}: pass {p['pass_s']['min']:.3f}s  "
                      f"shared {p['shared_pass_s']['min']:.3f}s  generate {p['generate_s']['min']:.3f}s  "
                      f"ratio {p['ratio_min']:.2f}", flush=True)
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")  # after each dtype: a timeout keeps it
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"gpu_bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
