"""The statistics-pass regression gate (``benchmarks/gate.py``, run by ``tox -e bench``).

The gate decides on the ratio mechclaims pass / plain generate from one pytest-benchmark
session, never on absolute seconds, so nothing here asserts a time. One real benchmark session
on the small shape (2 x 128, 1 torch thread, 32 prompts, 10 rounds) measures the real pass and an
artificially slowed one (``MECHCLAIMS_BENCH_SLOW_MS``: each MLP output projection of the
mechclaims models sleeps after its forward); the gate must pass the first and fail the second.
The other tests feed the gate hand-written benchmark JSON.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = json.loads((ROOT / "benchmarks" / "baseline.json").read_text())
SLOW_MS = 3  # x 2 layers x 20 forwards x 1 batch x 2 models: ~0.24 s more on a ~0.15 s pass


def _load_gate():
    spec = importlib.util.spec_from_file_location("mechclaims_bench_gate", ROOT / "benchmarks" / "gate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


gate = _load_gate()


# --------------------------------------------------------------------------------------------
# One real session: the small shape, real and slowed


@pytest.fixture(scope="module")
def session_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHCLAIMS_BENCH_")}
    # 32 prompts (one batch of 32, the protocol's batch: the same work per forward as 64) and
    # 10 rounds: more, shorter rounds give the minimum more chances on a busy machine.
    env.update(MECHCLAIMS_BENCH_SHAPES="tiny", MECHCLAIMS_BENCH_SLOW_MS=str(SLOW_MS), MECHCLAIMS_BENCH_THREADS="1",
               MECHCLAIMS_BENCH_PROMPTS="32", MECHCLAIMS_BENCH_ROUNDS="10", MECHCLAIMS_BENCH_WARMUP="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
           "--benchmark-enable", "-k", "mechclaims_pass or hf_generate", f"--benchmark-json={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"benchmark session failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


@pytest.mark.slow
def test_gate_passes_the_real_pass_and_fails_the_slowed_one(session_json, tmp_path, capsys):
    results = json.loads(session_json.read_text())
    verdicts = {v.variant: v for v in gate.evaluate(results, BASELINE)}
    print(gate.table(list(verdicts.values()), BASELINE))  # shown when the test fails
    assert set(verdicts) == {"tiny", "tiny-slowed"}
    real, slowed = verdicts["tiny"], verdicts["tiny-slowed"]
    assert real.shape == slowed.shape == "tiny-2x128" and real.gated and slowed.gated
    assert real.ok, f"the real pass tripped the gate: ratio {real.ratio:.3f} > limit {real.limit:.3f}"
    assert not slowed.ok, f"the slowed pass passed the gate: ratio {slowed.ratio:.3f} <= limit {slowed.limit:.3f}"
    assert slowed.extra["slow_ms"] == SLOW_MS and real.extra["slow_ms"] == 0
    assert real.extra["threads"] == 1

    # The command tox runs: exit 1 with the slowed variant in the JSON, 0 without it.
    assert gate.main([str(session_json)]) == 1
    only_real = tmp_path / "real.json"
    only_real.write_text(json.dumps({**results, "benchmarks": [b for b in results["benchmarks"]
                                                               if b["param"] == "tiny"]}))
    assert gate.main([str(only_real)]) == 0
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "tiny-slowed" in printed


# --------------------------------------------------------------------------------------------
# The decision rule, on hand-written JSON (no timing)


def _bench(test: str, param: str, mn: float, *, shape: str = "tiny-2x128", median: float | None = None,
           slow_ms: float = 0) -> dict:
    return {"name": f"{test}[{param}]", "param": param, "group": "g",
            "extra_info": {"shape": shape, "threads": 2, "n_prompts": 64, "batch_size": 32, "slow_ms": slow_ms},
            "stats": {"min": mn, "median": mn if median is None else median, "rounds": 3}}


def _results(*pairs) -> dict:
    out = []
    for param, shape, pass_s, gen_s in pairs:
        out += [_bench("test_mechclaims_pass", param, pass_s, shape=shape),
                _bench("test_hf_generate", param, gen_s, shape=shape),
                _bench("test_two_pass", param, 10 * gen_s, shape=shape)]
    return {"benchmarks": out, "datetime": "2026-01-01T00:00:00"}


BASE = {"stat": "min", "tolerance": 0.25,
        "shapes": {"tiny-2x128": {"ratio": 1.0, "cap": 1.5}, "gpt2-small-124M": {"ratio": 1.1, "cap": 1.3}}}


def test_ratio_not_seconds_decides():
    # A machine 10x slower: both times scale, the ratio and the verdict do not.
    fast = gate.evaluate(_results(("tiny", "tiny-2x128", 0.11, 0.10)), BASE)[0]
    slow = gate.evaluate(_results(("tiny", "tiny-2x128", 1.1, 1.0)), BASE)[0]
    assert math.isclose(fast.ratio, slow.ratio) and fast.ok and slow.ok
    assert math.isclose(fast.limit, 1.25)


def test_limit_is_the_smaller_of_tolerance_and_cap():
    (v,) = gate.evaluate(_results(("gpt2", "gpt2-small-124M", 1.32, 1.0)), BASE)
    assert math.isclose(v.limit, 1.3) and not v.ok        # 1.1 * 1.25 = 1.375, capped at 1.3
    (v,) = gate.evaluate(_results(("gpt2", "gpt2-small-124M", 1.29, 1.0)), BASE)
    assert v.ok
    (v,) = gate.evaluate(_results(("tiny", "tiny-2x128", 1.26, 1.0)), BASE)
    assert not v.ok and v.status == "FAIL"


def test_the_configured_statistic_is_used():
    res = _results(("tiny", "tiny-2x128", 1.0, 1.0))
    res["benchmarks"][0]["stats"]["median"] = 2.0  # the pass's median is bad, its min is not
    assert gate.evaluate(res, BASE)[0].ok
    assert not gate.evaluate(res, {**BASE, "stat": "median"})[0].ok


def test_exit_status(tmp_path):
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(BASE))

    def run(results) -> int:
        f = tmp_path / "r.json"
        f.write_text(json.dumps(results))
        return gate.main([str(f), "--baseline", str(base)])

    assert run(_results(("tiny", "tiny-2x128", 1.0, 1.0))) == 0
    assert run(_results(("tiny", "tiny-2x128", 1.0, 1.0), ("gpt2", "gpt2-small-124M", 2.0, 1.0))) == 1
    # Nothing gated is not a pass: no benchmarks (benchmarking disabled), or no baseline for the shape.
    assert run({"benchmarks": []}) == 2
    assert run(_results(("medium", "gpt2-medium-355M", 1.0, 1.0))) == 2
    # A shape without a baseline is reported next to gated ones, not failed.
    verdicts = gate.evaluate(_results(("tiny", "tiny-2x128", 1.0, 1.0), ("medium", "gpt2-medium-355M", 9.0, 1.0)),
                             BASE)
    assert [v.status for v in verdicts] == ["no baseline", "ok"]
    # A pass without its generate counterpart is skipped.
    half = _results(("tiny", "tiny-2x128", 1.0, 1.0))
    half["benchmarks"] = [b for b in half["benchmarks"] if not b["name"].startswith("test_hf_generate")]
    assert run(half) == 2


def test_write_baseline_keeps_tolerance_and_caps_and_skips_slowed(tmp_path):
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(BASE))
    res = _results(("tiny", "tiny-2x128", 0.9, 1.0), ("tiny-slowed", "tiny-2x128", 3.0, 1.0))
    for b in res["benchmarks"]:
        if b["param"] == "tiny-slowed":
            b["extra_info"]["slow_ms"] = 3
    f = tmp_path / "r.json"
    f.write_text(json.dumps(res))
    assert gate.main([str(f), "--baseline", str(base), "--write-baseline"]) == 0
    new = json.loads(base.read_text())
    assert new["tolerance"] == 0.25 and new["stat"] == "min"
    assert new["shapes"]["tiny-2x128"]["ratio"] == 0.9 and new["shapes"]["tiny-2x128"]["cap"] == 1.5
    assert new["shapes"]["gpt2-small-124M"] == BASE["shapes"]["gpt2-small-124M"]


def test_committed_baseline_is_well_formed():
    b = copy.deepcopy(BASELINE)
    assert b["stat"] in ("min", "median") and 0 < b["tolerance"] <= 1
    assert {"tiny-2x128", "gpt2-small-124M"} <= set(b["shapes"])
    for shape in b["shapes"].values():
        assert 0 < shape["ratio"] <= shape["cap"]


def test_tox_bench_runs_the_gate():
    import configparser

    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    commands = tox["testenv:bench"]["commands"]
    assert "--benchmark-json=" in commands and "benchmarks/gate.py" in commands
