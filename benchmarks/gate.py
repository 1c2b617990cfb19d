"""Regression gate for the statistics pass: mechclaims time / plain generate time, same session.

    pytest benchmarks --benchmark-enable --benchmark-json=bench.json
    python benchmarks/gate.py bench.json                 # exit 1 when the pass got slower
    python benchmarks/gate.py bench.json --write-baseline  # re-measure the committed baseline

It reads the pytest-benchmark JSON, pairs ``test_mechclaims_pass[X]`` with
``test_hf_generate[X]`` for every benchmarked variant X, and computes

    ratio = stat(mechclaims pass) / stat(plain HF generate)      (stat: "min" by default)

Both are measured in the same session on the same machine, so a slow or busy machine scales
both and leaves the ratio alone; absolute seconds are printed but never gate. A variant fails
when

    ratio > min(baseline_ratio * (1 + tolerance), cap)

with ``baseline_ratio`` and ``cap`` for its shape and ``tolerance`` from ``baseline.json``
(committed next to this file). A shape without a baseline is reported, not gated. Exit status:
0 all gated variants pass, 1 at least one failed, 2 nothing could be gated (no pair of
benchmarks with a baseline in the JSON: a misconfigured run must not pass silently).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BASELINE = HERE / "baseline.json"
PASS_TEST, FLOOR_TEST = "test_mechclaims_pass", "test_hf_generate"


@dataclass(frozen=True)
class Verdict:
    variant: str            # the benchmark parameter: "tiny", "gpt2", "tiny-slowed", ...
    shape: str              # the model shape (baseline key): "tiny-2x128", ...
    stat: str
    pass_s: float           # mechclaims pass, seconds (stat)
    generate_s: float       # plain HF generate, seconds (stat)
    ratio: float
    baseline_ratio: float | None
    limit: float | None     # None: no baseline for this shape, not gated
    extra: dict

    @property
    def gated(self) -> bool:
        return self.limit is not None

    @property
    def ok(self) -> bool:
        return not self.gated or self.ratio <= self.limit

    @property
    def status(self) -> str:
        return "no baseline" if not self.gated else ("ok" if self.ok else "FAIL")


def _test_name(bench: dict) -> str:
    return bench["name"].split("[", 1)[0]


def _variant(bench: dict) -> str:
    if bench.get("param") is not None:
        return str(bench["param"])
    name = bench["name"]
    return name[name.index("[") + 1:-1] if "[" in name else ""


def pairs(results: dict) -> dict[str, dict[str, dict]]:
    """{variant: {test name: benchmark entry}} for the pass and the floor."""
    out: dict[str, dict[str, dict]] = {}
    for bench in results.get("benchmarks", []):
        test = _test_name(bench)
        if test in (PASS_TEST, FLOOR_TEST):
            out.setdefault(_variant(bench), {})[test] = bench
    return out


def evaluate(results: dict, baseline: dict) -> list[Verdict]:
    stat = baseline.get("stat", "min")
    tol = float(baseline["tolerance"])
    verdicts = []
    for variant, tests in sorted(pairs(results).items()):
        if PASS_TEST not in tests or FLOOR_TEST not in tests:
            continue
        mech, floor = tests[PASS_TEST], tests[FLOOR_TEST]
        pass_s, gen_s = float(mech["stats"][stat]), float(floor["stats"][stat])
        shape = mech.get("extra_info", {}).get("shape", variant)
        ratio = pass_s / gen_s if gen_s > 0 else math.inf
        ref = baseline.get("shapes", {}).get(shape)
        base_ratio = limit = None
        if ref is not None:
            base_ratio = float(ref["ratio"])
            limit = min(base_ratio * (1.0 + tol), float(ref.get("cap", math.inf)))
        extra = {k: mech.get("extra_info", {}).get(k) for k in ("threads", "n_prompts", "batch_size", "slow_ms")}
        extra["rounds"] = mech["stats"].get("rounds")
        verdicts.append(Verdict(variant, shape, stat, pass_s, gen_s, ratio, base_ratio, limit, extra))
    return verdicts


def exit_status(verdicts: list[Verdict]) -> int:
    if not any(v.gated for v in verdicts):
        return 2
    return 0 if all(v.ok for v in verdicts) else 1


def table(verdicts: list[Verdict], baseline: dict) -> str:
    stat = baseline.get("stat", "min")
    lines = [f"statistics-pass regression gate: ratio = {stat}(mechclaims pass) / {stat}(plain generate), "
             f"same session; fails above min(baseline x {1 + float(baseline['tolerance']):.2f}, cap)",
             f"{'variant':<16} {'shape':<18} {'pass s':>9} {'generate s':>11} {'ratio':>7} {'baseline':>9} "
             f"{'limit':>7}  status"]
    for v in verdicts:
        fmt = (lambda x: "-" if x is None else f"{x:.3f}")  # noqa: E731
        lines.append(f"{v.variant:<16} {v.shape:<18} {v.pass_s:>9.3f} {v.generate_s:>11.3f} {v.ratio:>7.3f} "
                     f"{fmt(v.baseline_ratio):>9} {fmt(v.limit):>7}  {v.status}")
    threads = {v.extra.get("threads") for v in verdicts}
    want = {s.get("threads") for s in baseline.get("shapes", {}).values() if s.get("threads")}
    if want and threads and not threads <= want:
        lines.append(f"note: measured with {sorted(threads, key=str)} torch thread(s), the baseline with "
                     f"{sorted(want)}; the ratio moves little with threads, the tolerance covers it.")
    if not verdicts:
        lines.append("no (test_mechclaims_pass, test_hf_generate) pair in the JSON: was benchmarking enabled?")
    elif not any(v.gated for v in verdicts):
        lines.append("no benchmarked shape has a baseline: nothing was gated.")
    return "\n".join(lines)


def write_baseline(verdicts: list[Verdict], baseline: dict, path: Path, results: dict) -> dict:
    """The measured ratios of the real (not slowed) variants become the shapes' baselines; the
    tolerance, caps and notes are kept."""
    shapes = dict(baseline.get("shapes", {}))
    for v in verdicts:
        if v.extra.get("slow_ms"):
            continue
        old = shapes.get(v.shape, {})
        shapes[v.shape] = {**old, "ratio": round(v.ratio, 3), "pass_s": round(v.pass_s, 4),
                           "generate_s": round(v.generate_s, 4), "threads": v.extra.get("threads"),
                           "rounds": v.extra.get("rounds"), "n_prompts": v.extra.get("n_prompts"),
                           "measured": results.get("datetime") or datetime.now(timezone.utc).isoformat(),
                           "cap": old.get("cap", round(v.ratio * 1.5, 2))}
    new = {**baseline, "shapes": shapes}
    path.write_text(json.dumps(new, indent=2) + "\n")
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="pytest-benchmark JSON (--benchmark-json)")
    ap.add_argument("--baseline", default=str(DEFAULT_BASELINE), help="baseline file (default: %(default)s)")
    ap.add_argument("--write-baseline", action="store_true",
                    help="store the measured ratios as the new baseline instead of gating")
    args = ap.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    baseline = json.loads(Path(args.baseline).read_text())
    verdicts = evaluate(results, baseline)
    print(table(verdicts, baseline))
    if args.write_baseline:
        write_baseline(verdicts, baseline, Path(args.baseline), results)
        print(f"baseline written: {args.baseline}")
        return 0
    return exit_status(verdicts)


if __name__ == "__main__":
    sys.exit(main())
