"""The claim suite as users run it: ``pytest claims/`` in a subprocess, on real tiny pairs."""

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims.probe import Probe

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, gpt2_pair):
    from tests import tiny

    prompts = list(tiny.PROMPTS)
    d = tmp_path_factory.mktemp("claims-in")
    base, cand = gpt2_pair
    from transformers import AutoConfig

    d_model = AutoConfig.from_pretrained(base).n_embd
    Probe(torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).save(
        d / "probe.safetensors")
    (d / "prompts.txt").write_text("\n".join(prompts * 2) + "\n")
    return {"base": str(base), "model": str(cand), "probe": str(d / "probe.safetensors"),
            "prompts": str(d / "prompts.txt")}


def run_claims(pytester, inputs, *extra, model=None, base=None, report=None, cache=None, subprocess=False):
    """``pytest claims/`` on the tiny pair. In-process by default (the plugin is the same code;
    a subprocess only adds interpreter start-up); ``subprocess=True`` runs it as a user would."""
    report = report or pytester.path / "out" / "claims.html"
    args = [CLAIMS, "--base", base or inputs["base"], "--model", model or inputs["model"],
            "--probe", inputs["probe"], "--prompts", inputs["prompts"], "--max-new-tokens", "6",
            "--report", str(report), "--bootstrap", "50", "-p", "no:randomly", *extra]
    if cache:
        args += ["--cache-dir", str(cache)]
    runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest_inprocess
    return runner(*args), Path(report)


def _doc(report: Path) -> dict:
    return json.loads(report.with_suffix(".json").read_text())


def test_report_files_and_numbers_agree(pytester, inputs, tmp_path):
    res, report = run_claims(pytester, inputs, "--junitxml", str(tmp_path / "j.xml"))
    outcomes = res.parseoutcomes()
    assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "skipped", "xfailed")) >= 14
    html = report.read_text()
    doc = _doc(report)
    assert doc["schema"] == "mechclaims.claims/2"
    # every measured value and threshold in the HTML equals the JSON's, claim by claim
    shown = {(m[0], m[1]): float(m[2]) for m in
             re.findall(r'class="value" data-claim="([^"]+)" data-check="([^"]+)" data-value="([^"]+)"', html)}
    want = {(c["id"], k["name"]): k["value"] for c in doc["claims"] for k in c["checks"]}
    assert shown.keys() == want.keys() and len(shown) >= 20
    for key, v in want.items():
        assert shown[key] == pytest.approx(v, rel=1e-12, abs=1e-300), key
    pattern = r'class="threshold" data-claim="([^"]+)" data-check="([^"]+)" data-value="([^"]+)"'
    thresholds = {(m[0], m[1]): float(m[2]) for m in re.findall(pattern, html)}
    assert thresholds == {(c["id"], k["name"]): k["threshold"] for c in doc["claims"] for k in c["checks"]}
    # statuses in the HTML rows equal the JSON and the pytest outcomes
    rows = dict(re.findall(r'<tr class="claim" data-id="([^"]+)" data-status="([^"]+)"', html))
    assert rows == {c["id"]: c["status"] for c in doc["claims"]}
    assert doc["counts"]["pass"] == outcomes.get("passed", 0)
    for outcome in ("passed", "failed", "skipped", "xfailed"):
        assert sum(c["outcome"] == outcome for c in doc["claims"]) == outcomes.get(outcome, 0), outcome
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    # JUnit: one test case per claim, with the measured values as properties
    cases = ET.parse(tmp_path / "j.xml").getroot().iter("testcase")
    names = [c.get("name") for c in cases]
    assert len(names) == len(doc["claims"]) and any(n.startswith("test_C3_") for n in names)


def test_json_attribution_equals_engine_neuron_table(pytester, inputs, tmp_path):
    _, report = run_claims(pytester, inputs)
    doc = _doc(report)
    from mechclaims.cli import main

    out = tmp_path / "n.csv"
    assert main(["neurons", "--base", inputs["base"], "--model", inputs["model"], "--probe", inputs["probe"],
                 "--prompts", inputs["prompts"], "--max-new-tokens", "6", "--no-cache", "--out", str(out)]) == 0
    import csv

    rows = list(csv.DictReader(out.open()))
    delta = np.array([float(r["delta"]) for r in rows])
    cos = np.array([float(r["cos"]) for r in rows])
    act = np.array([float(r["act_base"]) for r in rows])
    adiff = act - np.array([float(r["act_dpo"]) for r in rows])
    att = doc["attribution"]
    assert att["net"] == pytest.approx(delta.sum(), rel=1e-9, abs=1e-12)
    assert att["gross_reduction"] == pytest.approx(delta[delta > 0].sum(), rel=1e-9)
    assert att["gross_increase"] == pytest.approx(delta[delta < 0].sum(), rel=1e-9)
    for g in ("TP↓", "TN↓", "AP↓", "AN↓"):
        sel = np.array([r["group_b"] == g for r in rows])
        assert att["group_b"][g]["count"] == int(sel.sum())
        assert att["group_b"][g]["sum_delta"] == pytest.approx(delta[sel].sum(), rel=1e-9, abs=1e-12)
    # C3 recomputed from the table: top-128 by cos, act > 0, dampened, over gross reduction
    top = np.lexsort((np.arange(cos.size), -cos))[:128]
    sel = top[(act[top] > 0) & (adiff[top] > 0)]
    c3 = next(c for c in doc["claims"] if c["id"] == "C3")
    assert c3["checks"][0]["value"] == pytest.approx(delta[sel].sum() / delta[delta > 0].sum(), rel=1e-9)


def test_identity_pair_is_refused_before_any_model_work(pytester, inputs):
    """One model as both base and candidate: every claim would be undefined, so the run stops in
    resolve_run with exit status 4 and no report (issue 18; tests/test_early_checks.py)."""
    res, report = run_claims(pytester, inputs, model=inputs["base"])
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "same model" in res.stderr.str() and "every claim is undefined" in res.stderr.str()
    assert not report.with_suffix(".json").exists()


def test_second_run_does_no_model_work(pytester, inputs, tmp_path):
    cache = tmp_path / "cache"
    run_claims(pytester, inputs, cache=cache)
    _, report = run_claims(pytester, inputs, cache=cache)
    assert _doc(report)["provenance"]["from_cache"] is True


def test_threshold_override_and_strict_change_verdicts(pytester, inputs, tmp_path):
    cache = tmp_path / "cache"
    _, report = run_claims(pytester, inputs, cache=cache)
    c19 = next(c for c in _doc(report)["claims"] if c["id"] == "C19")
    med = c19["checks"][0]["value"]
    assert c19["status"] == "fail" and med > 1e-3  # the perturbed pair moved its value vectors
    cfg = tmp_path / "claims.toml"
    cfg.write_text(f'[thresholds]\n"C19.median_abs_cos_change" = {med * 2}\nC19 = {{ pearson_cos = 0.5 }}\n')
    res, report = run_claims(pytester, inputs, "--claims-config", str(cfg), cache=cache)
    c19 = next(c for c in _doc(report)["claims"] if c["id"] == "C19")
    assert c19["status"] == "pass" and c19["checks"][0]["threshold"] == pytest.approx(med * 2)
    # --strict: a claim passing at its point estimate but with an interval across the threshold fails
    doc = _doc(report)
    unstable_pass = [c for c in doc["claims"] if c["status"] == "pass" and c["unstable"]]
    strict_res, strict_report = run_claims(pytester, inputs, "--claims-strict", cache=cache)
    sdoc = {c["id"]: c for c in _doc(strict_report)["claims"]}
    assert _doc(strict_report)["config"]["strict"] is True
    assert _doc(strict_report)["reading"] == "interval"
    for c in unstable_pass:  # the interval reading: inconclusive, and the test fails
        assert sdoc[c["id"]]["status"] == "inconclusive" and sdoc[c["id"]]["outcome"] == "failed", c["id"]
    for c in doc["claims"]:  # strict never turns a failure into a pass
        if c["status"] == "fail":
            assert sdoc[c["id"]]["status"] in ("fail", "inconclusive") and sdoc[c["id"]]["outcome"] == "failed"


def test_bad_options_are_clear_errors(pytester, inputs, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[thresholds]\nC99 = 0.1\n")
    res, _ = run_claims(pytester, inputs, "--claims-config", str(cfg))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown claim 'C99'" in res.stderr.str()
    cfg.write_text("[thresholds]\nC6 = 0.1\n")
    res, _ = run_claims(pytester, inputs, "--claims-config", str(cfg))
    assert res.ret == pytest.ExitCode.USAGE_ERROR and "several checks" in res.stderr.str()
    res, _ = run_claims(pytester, inputs, "--positions", "mine")
    assert res.ret == pytest.ExitCode.USAGE_ERROR and "positions" in res.stderr.str()
    res = pytester.runpytest_inprocess(CLAIMS, "--model", inputs["model"])
    assert res.ret == pytest.ExitCode.USAGE_ERROR and "--probe" in res.stderr.str()  # the base can be inferred


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, mechclaims.plugin; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def test_report_opens_in_headless_chromium(pytester, inputs, tmp_path):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (bash .ci/run installs Debian's chromium)")
    _, report = run_claims(pytester, inputs)
    shot = REPO / "reports" / "test-screenshot.png"
    shot.unlink(missing_ok=True)
    proc = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a rendered page, not a blank one
    # the page really rendered the report: dump the DOM and look for the claims table
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="claims"' in dom and "data-id=\"C3\"" in dom
