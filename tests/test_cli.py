"""``mechclaims neurons`` end to end on the tiny gpt2 pair: CSV, sidecar, cache, errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims.cli import main
from mechclaims.probe import Probe

HEADER = "layer,neuron,cos,act_base,act_dpo,proj_base,proj_dpo,delta,group_a,group_b"
PROMPT_LINES = ["you are a kind person", "shut up you idiot", "the cat sat on the mat",
                "hello my friend, how are you"]
N_LAYERS, D_MLP, D_MODEL = 2, 96, 32


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    d = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    f = tmp_path_factory.mktemp("probe") / "probe.safetensors"
    Probe(d, {"kind": "random test probe"}).save(f)
    return f


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    f.write_text("\n".join(PROMPT_LINES) + "\n")
    return f


def _args(base, model, probe, prompts, out, *extra):
    return ["neurons", "--base", str(base), "--model", str(model), "--probe", str(probe),
            "--prompts", str(prompts), "--max-new-tokens", "5", "--chunks", "2",
            "--out", str(out), *extra]


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def run(gpt2_pair, probe_file, prompts_file, tmp_path, capsys):
    """Run ``mechclaims neurons`` on the gpt2 pair; returns (rc, out_csv, stdout, stderr)."""

    def go(*extra, out_name="neurons.csv", base=None, model=None, probe=None, prompts=None):
        out = tmp_path / out_name
        rc = main(_args(base or gpt2_pair[0], model or gpt2_pair[1], probe or probe_file,
                        prompts or prompts_file, out, *extra))
        cap = capsys.readouterr()
        return rc, out, cap.out, cap.err

    return go


def test_neurons_end_to_end(run, gpt2_pair, probe_file, prompts_file):
    rc, out, stdout, stderr = run()
    assert rc == 0, stderr
    assert "[from cache]" not in stdout
    lines = out.read_text().splitlines()
    assert lines[0] == HEADER
    rows = _rows(out)
    assert len(rows) == N_LAYERS * D_MLP
    assert [(int(r["layer"]), int(r["neuron"])) for r in rows] == [divmod(k, D_MLP) for k in range(len(rows))]

    cos, act_b, act_d, proj_b, proj_d, delta = (np.array([float(r[c]) for r in rows]) for c in
                                                ("cos", "act_base", "act_dpo", "proj_base", "proj_dpo", "delta"))
    assert np.isfinite(np.stack([cos, act_b, act_d, proj_b, proj_d, delta])).all()
    assert np.array_equal(delta, proj_b - proj_d)  # exact: the CSV round-trips float64 (repr)
    assert (act_b != act_d).any() and (delta != 0).any()

    # Independent check of the probe side against the checkpoint's own c_proj rows.
    from transformers import AutoModelForCausalLM

    from mechclaims.probe import load_probe

    w = load_probe(probe_file).direction.numpy()
    w_hat = w / np.linalg.norm(w)
    for m_dir, act, proj, check_cos in ((gpt2_pair[0], act_b, proj_b, True), (gpt2_pair[1], act_d, proj_d, False)):
        hf = AutoModelForCausalLM.from_pretrained(m_dir)
        V = np.concatenate([hf.transformer.h[l].mlp.c_proj.weight.detach().double().numpy()
                            for l in range(N_LAYERS)])  # [L * d_mlp, d_model], layer-major
        np.testing.assert_allclose(proj, act * (V @ w_hat), rtol=1e-9, atol=1e-12)
        if check_cos:
            np.testing.assert_allclose(cos, (V @ w) / (np.linalg.norm(V, axis=1) * np.linalg.norm(w)),
                                       rtol=1e-9, atol=1e-12)

    # Group columns agree with the paper's sign rules applied to the CSV's own numbers.
    def sign(x):
        return "+" if x > 0 else "-" if x < 0 else "0"

    for r, c, a, ad, d in zip(rows, cos, act_b, act_b - act_d, delta):
        cell = ("T" if c > 0 else "A") + ("P" if a > 0 else "N")
        if 0 in (c, a, d):
            assert r["group_b"] == ""
        else:
            assert r["group_b"] == cell + ("↓" if d > 0 else "↑")
        if 0 in (c, a, ad):
            assert r["group_a"] == ""
        else:
            grows = (a > 0) != (ad > 0)  # |act| grows when act and adiff have opposite signs
            assert r["group_a"] == cell + ("+" if grows else "-")

    # Sidecar provenance.
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["columns"] == HEADER.split(",")
    prov = side["provenance"]
    for who in ("base", "model"):
        assert len(prov[who]["sha256"]) == 64
    assert prov["base"]["sha256"] != prov["model"]["sha256"]
    from mechclaims.loading import load_model

    assert prov["base"]["sha256"] == load_model(str(gpt2_pair[0])).sha256
    assert prov["probe"]["sha256"] == hashlib.sha256(np.asarray(w, np.float64).tobytes()).hexdigest()
    assert prov["prompts"]["sha256"] == hashlib.sha256(
        json.dumps(PROMPT_LINES, ensure_ascii=False).encode()).hexdigest()
    assert prov["prompts"]["n"] == len(PROMPT_LINES)
    st = prov["settings"]
    assert st["positions"] == "own" and st["max_new_tokens"] == 5 and st["max_prompt_tokens"] == 32
    assert st["dtype"] == "float32" and st["accumulation"] == "float64"
    v = prov["versions"]
    import transformers

    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert v["transformers"] == transformers.__version__
    assert v["transformer-lens"]
    assert prov["from_cache"] is False
    s = side["summary"]
    assert s["n_neurons"] == N_LAYERS * D_MLP
    assert s["net"] == pytest.approx(float(delta.sum()), rel=1e-9, abs=1e-12)


def test_rerun_is_served_from_cache(run, monkeypatch):
    rc, out, stdout, _ = run()
    assert rc == 0 and "[from cache]" not in stdout
    first = out.read_bytes()
    import mechclaims.analysis as analysis

    def no_model_work(*a, **k):
        raise AssertionError("a cached rerun must not load or run a model")

    monkeypatch.setattr(analysis, "load_model", no_model_work)
    monkeypatch.setattr(analysis, "collect_pair", no_model_work)
    rc, out2, stdout, stderr = run(out_name="again.csv")
    assert rc == 0, stderr
    assert "[from cache]" in stdout
    assert out2.read_bytes() == first
    side = json.loads(out2.with_suffix(".json").read_text())
    assert side["provenance"]["from_cache"] is True
    assert len(side["provenance"]["base"]["sha256"]) == 64


def test_positions_shared(run):
    rc, own, _, err = run(out_name="own.csv")
    assert rc == 0, err
    rc, shared, stdout, err = run("--positions", "shared", out_name="shared.csv")
    assert rc == 0, err
    assert "[from cache]" not in stdout  # another setting, another cache address
    a, b = _rows(own), _rows(shared)
    assert len(b) == N_LAYERS * D_MLP
    assert json.loads(shared.with_suffix(".json").read_text())["provenance"]["settings"]["positions"] == "shared"
    # The candidate reads its own continuation in both modes; in "shared" it reads it in one
    # parallel forward instead of the cached steps, which changes only the last float32 bits.
    np.testing.assert_allclose([float(r["act_dpo"]) for r in b], [float(r["act_dpo"]) for r in a],
                               rtol=1e-5, atol=1e-7)
    assert [r["cos"] for r in a] == [r["cos"] for r in b]


def test_mismatched_pair_exits_4(run, tiny_pairs):
    rc, out, stdout, stderr = run(model=tiny_pairs["llama"][1])
    assert rc == 4
    assert "mechclaims: error:" in stderr and "architecture" in stderr
    assert not out.exists()


def test_missing_probe_exits_4(run, tmp_path):
    missing = tmp_path / "no-such-probe.safetensors"
    rc, out, _, stderr = run(probe=missing)
    assert rc == 4
    assert stderr.startswith("mechclaims: error:") and str(missing) in stderr
    assert not out.exists()


def test_missing_prompts_exits_4(run, tmp_path):
    missing = tmp_path / "no-such-prompts.jsonl"
    rc, _, _, stderr = run(prompts=missing)
    assert rc == 4 and "mechclaims: error:" in stderr and str(missing) in stderr


def test_no_cache_writes_nothing(run, tmp_path):
    cache_dir = Path(os.environ["MECHCLAIMS_CACHE_DIR"])
    assert cache_dir.parent == tmp_path
    rc, out, stdout, stderr = run("--no-cache")
    assert rc == 0, stderr
    assert out.exists()
    written = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*")) if cache_dir.exists() else []
    assert written == []


def test_cache_dir_option(run, tmp_path):
    explicit = tmp_path / "explicit-cache"
    rc, _, _, err = run("--cache-dir", str(explicit))
    assert rc == 0, err
    assert list((explicit / "results").rglob("chunk-*.safetensors"))


def test_parity_subcommand(gpt2_pair, capsys):
    assert main(["parity", "--model", str(gpt2_pair[0])]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["max_abs_logit_diff"] < 1e-4


def test_help_runs_as_a_module_and_script():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "mechclaims.cli", "--help"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "neurons" in p.stdout and "parity" in p.stdout
    script = Path(sys.executable).parent / "mechclaims"
    if script.exists():
        p = subprocess.run([str(script), "neurons", "--help"], capture_output=True, text=True,
                           timeout=60, env=env)
        assert p.returncode == 0, p.stderr
        assert "--positions" in p.stdout and "--no-cache" in p.stdout


def test_bad_arguments_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["neurons", "--base", "x"])
    assert ei.value.code == 2
    with pytest.raises(SystemExit):
        main(["neurons", "--base", "a", "--model", "b", "--probe", "c", "--prompts", "d", "--out", "e",
              "--positions", "sideways"])
