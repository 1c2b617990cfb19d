"""``mechclaims sweep`` as a gate over a training run: JUnit, -k / --select, exit status 4 for a
setup error, plain per-checkpoint lines, and the report's figure.

The run directory holds two real checkpoints of the GPT-2 organism, named as a trainer names
them: ``checkpoint-2`` its LoRA adapter (on the organism's base), ``checkpoint-4`` its full DPO
model. 8 prompts, 4 new tokens, claims C0 and C3 only (no generation under interventions), and
one result cache for the module, so the later sweeps read the first one's statistics.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
import pytest

from mechclaims.cli import main
from mechclaims.organism import layout

ORG = layout("gpt2")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-gate")
    shutil.copytree(ORG.lora, d / "run" / "checkpoint-2")
    shutil.copytree(ORG.dpo, d / "run" / "checkpoint-4")
    lines = ORG.prompts.read_text().splitlines()[:8]
    (d / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _sweep(work, capsys, monkeypatch, *extra):
    """``mechclaims sweep run ...`` from inside the work directory (paths as a user types them);
    returns (exit status, stdout, stderr)."""
    monkeypatch.chdir(work)
    rc = main(["sweep", "run", "--base", str(ORG.base), "--probe", str(ORG.probe), "--prompts", "prompts.jsonl",
               "--max-new-tokens", "4", "--bootstrap", "20", "--cache-dir", str(work / "cache"), *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_gate_sweep_writes_junit_and_says_each_checkpoint(work, capsys, monkeypatch):
    rc, out, err = _sweep(work, capsys, monkeypatch, "--select", "gate", "-k", "C0 or C3",
                          "--report", "out/sweep.html", "--junitxml", "out/sweep.xml")
    doc = json.loads((work / "out" / "sweep.json").read_text())
    assert doc["reading"] == "interval"  # --select gate reads as pytest -m gate
    assert [ck["label"] for ck in doc["checkpoints"]] == ["checkpoint-2", "checkpoint-4"]
    # exit status: 1 exactly when the last checkpoint fails a gate claim (outcome failed)
    last = {c["id"]: c for c in doc["checkpoints"][-1]["claims"]}
    assert rc == (1 if any(c["outcome"] == "failed" for c in last.values()) else 0), err
    assert doc["last_fails_gate"] == [cid for cid, c in last.items() if c["outcome"] == "failed"]
    # paths as the user gave them, never this machine's layout
    assert doc["base"]["source"].startswith("<fixtures>/") and not doc["base"]["source"].startswith("/")
    assert [ck["source"] for ck in doc["checkpoints"]] == ["run/checkpoint-2", "run/checkpoint-4"]

    # JUnit: one testsuite per checkpoint, one testcase per claim, the same outcomes as sweep.json
    root = ET.parse(work / "out" / "sweep.xml").getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["checkpoint-2", "checkpoint-4"]
    for suite, ck in zip(suites, doc["checkpoints"]):
        props = {p.get("name"): p.get("value") for p in suite.find("properties")}
        assert props["step"] == str(ck["step"]) and props["source"] == ck["source"]
        cases = suite.findall("testcase")
        assert [c.get("name") for c in cases] == ["test_C0_net_reduction", "test_C3_v2_toxic_neuron_share"]
        for case, claim in zip(cases, ck["claims"]):
            cprops = {p.get("name"): p.get("value") for p in case.find("properties")}
            assert cprops["claim_id"] == claim["id"] and cprops["verdict"] == claim["status"]
            assert cprops["outcome"] == claim["outcome"]
            failure = case.find("failure")
            assert (failure is not None) == (claim["outcome"] == "failed")
            if failure is not None:
                assert failure.get("message").startswith(claim["id"])
        assert suite.get("failures") == str(sum(c["outcome"] == "failed" for c in ck["claims"]))
    assert int(root.get("tests")) == 4

    # one plain line before and after each checkpoint, on stderr, no carriage returns (no bars)
    assert "\r" not in err
    lines = err.splitlines()
    assert "[1/2] checkpoint-2 (step 2)" in lines and "[2/2] checkpoint-4 (step 4)" in lines
    ends = [ln for ln in lines if ln.startswith("[2/2] checkpoint-4 (step 4): ")]
    assert len(ends) == 1 and ends[0].endswith(" s)") and ("passed" in ends[0] or "failed" in ends[0])
    assert lines.index("[1/2] checkpoint-2 (step 2)") < lines.index("[2/2] checkpoint-4 (step 4)")
    assert "wrote out/sweep.xml" in out


def test_k_selects_by_slug_and_a_bad_selection_is_a_setup_error(work, capsys, monkeypatch):
    rc, _, err = _sweep(work, capsys, monkeypatch, "-k", "net-reduction", "--report", "k/sweep.html")
    doc = json.loads((work / "k" / "sweep.json").read_text())
    assert rc == 0, err
    assert {c["id"] for ck in doc["checkpoints"] for c in ck["claims"]} == {"C0"}
    for extra in (["-k", "C0 and C3"], ["-k", "C0 or (C3"], ["--select", "C0,C99"]):
        rc, _, err = _sweep(work, capsys, monkeypatch, *extra, "--report", "bad/sweep.html")
        assert rc == 4 and err.startswith("mechclaims: error:") and err.count("\n") == 1, (extra, err)
    assert not (work / "bad").exists()


def test_select_claims_reads_ids_and_keywords_as_pytest_would():
    from mechclaims.errors import ConfigError
    from mechclaims.sweep import load_claims, select_claims

    specs = load_claims()
    ids = lambda select="all", k=None: list(select_claims(specs, select, k))  # noqa: E731
    assert ids(k="C1") == ["C1"]  # a claim ID is that claim, not C10-C19 as well
    assert ids(k="C1 or C2 and not C3") == ["C1", "C2"]
    assert ids(k="not (gate or exploratory)") == [c for c in ids() if not specs[c].tags]
    assert ids("gate", "not C5") == [c for c in ids("gate") if c != "C5"]
    assert ids("c3, C0") == ["C0", "C3"]
    # other names: a case-insensitive substring of a test name, file name or tag, as pytest -k
    # (`pytest claims/ -k TOXIC_NEURON` collects these six), or of a slug
    assert ids(k="TOXIC_NEURON") == ["C3", "C4", "C5", "C15", "C20", "C23"]
    assert ids(k="shrink-asym") == ["C12"]
    for bad in ("", "C0 C3", "C0 and", "(C0", "or C0"):
        with pytest.raises(ConfigError, match="-k"):
            select_claims(specs, "all", bad or " ")
    with pytest.raises(ConfigError, match="no claim is selected"):
        select_claims(specs, "gate", "exploratory")


def test_bad_probe_and_a_junit_onto_a_checkpoint_exit_4_before_any_model_work(work, capsys, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    for extra, phrase in ((["--probe", "no-such-probe.safetensors"], "no-such-probe.safetensors"),
                          (["--junitxml", "run/checkpoint-4/model.safetensors"], "--junitxml")):
        monkeypatch.chdir(work)
        rc = main(["sweep", "run", "--base", str(ORG.base), "--probe", str(ORG.probe), "--prompts", "prompts.jsonl",
                   "--cache-dir", str(cache), "--report", str(tmp_path / "r" / "sweep.html"), *extra])
        err = capsys.readouterr().err
        assert rc == 4 and err.startswith("mechclaims: error:") and err.count("\n") == 1 and phrase in err, err
        assert not (cache / "results").exists()  # no statistics were computed
    assert (work / "run" / "checkpoint-4" / "model.safetensors").stat().st_size > 1_000_000


def test_figure_colours_points_by_verdict_on_integer_steps():
    from matplotlib.colors import to_hex

    from mechclaims.sweep import VERDICT_COLOURS, sweep_figure

    def ck(step, value, verdict):
        return {"step": step, "claims": [{"id": "C3", "checks": [
            {"name": "share", "value": value, "ci": None if verdict == "fail" else [value - 0.01, value + 0.01],
             "op": "<", "threshold": 0.1, "verdict": verdict}]}]}

    fig = sweep_figure({"checkpoints": [ck(2, 0.05, "pass"), ck(4, 0.12, "fail"), ck(6, 0.1, "inconclusive")]})
    ax = fig.axes[0]
    colours = [to_hex(c) for c in ax.collections[-1].get_facecolors()]
    assert colours == [VERDICT_COLOURS[v] for v in ("pass", "fail", "inconclusive")]
    assert all(float(t).is_integer() for t in ax.get_xticks())
