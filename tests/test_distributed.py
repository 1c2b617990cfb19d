"""Data parallel with torchrun (Gloo on CPU): the same numbers as one process, bit for bit.

Both runs use one thread per process (torchrun's default per worker, and OMP_NUM_THREADS=1 for
the single process) and the same batches (batch composition never depends on the number of
ranks), so the float64 sums are the same operations in the same order: the tests ask for
equal bytes, not a tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims import distributed
from mechclaims.probe import Probe

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", distributed.FAULT_ENV)}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MECHCLAIMS_CACHE_DIR=str(tmp_path / "cache"), **extra)
    return env


def _run(cmd, env, cwd, check=True):
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, gpt2_pair):
    from tests import tiny

    d = tmp_path_factory.mktemp("dist-in")
    base, cand = gpt2_pair
    from transformers import AutoConfig

    d_model = AutoConfig.from_pretrained(base).n_embd
    Probe(torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).save(
        d / "probe.safetensors")
    (d / "prompts.txt").write_text("\n".join(list(tiny.PROMPTS) * 2) + "\n")  # 24 prompts
    # batch 5: five batches (the last short), chunks of 3 prompts span batch boundaries
    (d / "claims.toml").write_text("batch_size = 5\n")
    (d / "lexicon.txt").write_text("the\nyou\na\nidiot\nstupid\n")
    return {"base": str(base), "model": str(cand), "probe": str(d / "probe.safetensors"),
            "prompts": str(d / "prompts.txt"), "toml": str(d / "claims.toml"), "lexicon": str(d / "lexicon.txt")}


def _neurons_cmd(inputs, out, positions):
    return ["-m", "mechclaims", "neurons", "--base", inputs["base"], "--model", inputs["model"],
            "--probe", inputs["probe"], "--prompts", inputs["prompts"], "--positions", positions,
            "--max-new-tokens", "6", "--batch-size", "5", "--chunks", "8", "--out", str(out)]


# --------------------------------------------------------------------------------------------
# The world, without a process group


def test_world_from_torchrun_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    w = distributed.world()
    assert (w.rank, w.world_size, w.active, w.is_writer) == (0, 1, False, True)
    assert w.mine(5) == [0, 1, 2, 3, 4]
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = distributed.world()
    assert w.active and not w.is_writer and w.mine(7) == [1, 4]
    assert distributed.rank_device("cuda") == "cuda:1" and distributed.rank_device("cpu") == "cpu"
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(distributed.ConfigError, match="RANK=3"):
        distributed.world()


# --------------------------------------------------------------------------------------------
# torchrun --nproc-per-node 2 against one process


@pytest.fixture(scope="module")
def shared_reference(inputs, tmp_path_factory):
    """One process, "shared" positions: the CSV the data-parallel runs must reproduce."""
    d = tmp_path_factory.mktemp("dist-ref")
    ref = d / "ref.csv"
    _run([sys.executable, *_neurons_cmd(inputs, ref, "shared"), "--no-cache"], _env(d), d)
    assert json.loads(ref.with_suffix(".json").read_text())["provenance"]["parallel"]["world_size"] == 1
    return ref


@pytest.mark.slow
def test_torchrun_neurons_csv_is_bit_identical(inputs, shared_reference, tmp_path):
    """"shared" positions (one generation, two parallel reads) here; "own" positions through
    claims.json below, whose every value is computed from the statistics and compared exactly."""
    two = tmp_path / "two.csv"
    _run([*TORCHRUN, *_neurons_cmd(inputs, two, "shared"), "--no-cache"], _env(tmp_path), tmp_path)
    assert two.read_bytes() == shared_reference.read_bytes()
    side = json.loads(two.with_suffix(".json").read_text())["provenance"]["parallel"]
    assert side["world_size"] == 2 and side["backend"] == "gloo"


@pytest.mark.slow
def test_torchrun_pytest_claims_json_is_identical(inputs, tmp_path):
    """``torchrun -m pytest claims/``: the behavioural sets split across ranks too; only rank 0
    writes the report, the JSON and the JUnit file, and its numbers equal one process's."""
    def claims(cmd, out):
        args = [*cmd, "-m", "pytest", str(REPO / "claims"), "-p", "no:cacheprovider", "-q",
                "--base", inputs["base"], "--model", inputs["model"], "--probe", inputs["probe"],
                "--prompts", inputs["prompts"], "--max-new-tokens", "6", "--bootstrap", "20",
                "--claims-config", inputs["toml"], "--report", str(out / "claims.html"),
                "--scorer", f"lexicon:{inputs['lexicon']}",
                "--junitxml", str(out / "j.xml"), "-k", "C0_ or C6_ or C14_"]
        proc = _run(args, _env(out), tmp_path, check=False)  # a fresh cache for each run
        assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc, json.loads((out / "claims.json").read_text())

    p1, one = claims([sys.executable], tmp_path / "one")
    p2, two = claims(TORCHRUN, tmp_path / "two")
    assert p1.returncode == p2.returncode
    strip = lambda doc: [{k: c[k] for k in ("id", "status", "checks")} for c in doc["claims"]]  # noqa: E731
    assert strip(two) == strip(one)
    timeless = lambda beh: {**beh, "sets": [{k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
                                            for r in beh["sets"]]}
    assert one["behaviour"] and timeless(two["behaviour"]) == timeless(one["behaviour"])  # sets ran, split
    assert two["behaviour"]["settings"]["from_cache"] is False
    # one writer: a single report, and one pytest summary line on the terminal
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["cache", "claims.html", "claims.json", "j.xml"]
    assert p2.stdout.count(" in ") == p1.stdout.count(" in ")


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_run_and_the_rerun_resumes(inputs, shared_reference, tmp_path):
    ref = shared_reference
    out = tmp_path / "two.csv"
    env = _env(tmp_path, **{distributed.FAULT_ENV: "1:3"})  # rank 1 exits before batch 3
    proc = _run([*TORCHRUN, *_neurons_cmd(inputs, out, "shared"), "--cache-dir", str(tmp_path / "c")],
                env, tmp_path, check=False)
    assert proc.returncode != 0 and not out.exists()
    assert "rank" in (proc.stdout + proc.stderr).lower() and "1" in proc.stderr  # torchrun names the rank
    chunks = list((tmp_path / "c").rglob("chunk-*.safetensors"))
    assert chunks  # batches 0-2 were merged and their finished chunks written by rank 0
    # rerun with another number of ranks (one): resumes from the finished chunks
    _run([sys.executable, *_neurons_cmd(inputs, out, "shared"), "--cache-dir", str(tmp_path / "c")],
         _env(tmp_path), tmp_path)
    import csv

    a = list(csv.reader(ref.open()))
    b = list(csv.reader(out.open()))
    assert a[0] == b[0] and len(a) == len(b)
    # The resumed batches hold other prompts than a fresh run's (the finished chunks are skipped),
    # so the float32 forward pads differently and differs in its last bits: equal to 1e-6 of
    # each column's scale, not bit for bit (a fresh run is, above).
    for j, name in enumerate(a[0]):
        col_a, col_b = [r[j] for r in a[1:]], [r[j] for r in b[1:]]
        try:
            xa, xb = np.array(col_a, float), np.array(col_b, float)
        except ValueError:
            assert col_a == col_b, name
            continue
        assert np.abs(xa - xb).max() <= 1e-6 * np.abs(xa).max(), name
