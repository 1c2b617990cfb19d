"""Never a silent wrong number, never a lost file: the run-level defects (issue #9), each with
the case that used to go wrong. Library-level bad inputs are in test_bad_inputs.py."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims.errors import MechclaimsError, OutputPathError, ScorerError
from mechclaims.probe import Probe
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, gpt2_pair):
    return tiny.probe_and_prompts(tmp_path_factory.mktemp("rel"), gpt2_pair)


def _config(files, **over):
    from mechclaims.config import build_config

    cli = {"model": files["model"], "base": files["base"], "probe": files["probe"], "prompts": files["prompts"],
           "max_new_tokens": 4, "report": str(files["dir"] / "out" / "claims.html"), "bootstrap": 20, **over}
    return build_config(cli)


# --- numbers -----------------------------------------------------------------------------------


def test_the_cache_never_mixes_dtypes(files, tmp_path):
    """A float32 run after a bfloat16 run must not reuse the bfloat16 weight terms."""
    from mechclaims.analysis import analyze
    from mechclaims.stats import StatsSettings

    s = StatsSettings(max_new_tokens=3)
    bf = analyze(files["base"], files["model"], files["probe"], files["prompts"], s, dtype="bfloat16",
                 cache_dir=tmp_path)
    fp = analyze(files["base"], files["model"], files["probe"], files["prompts"], s, dtype="float32",
                 cache_dir=tmp_path)
    fresh = analyze(files["base"], files["model"], files["probe"], files["prompts"], s, dtype="float32",
                    cache_dir=False)
    assert fp.provenance["base"]["dtype"] == "float32" and bf.provenance["base"]["dtype"] == "bfloat16"
    np.testing.assert_array_equal(fp.weights.vw_dpo, fresh.weights.vw_dpo)
    assert not np.array_equal(fp.weights.vw_dpo, bf.weights.vw_dpo)
    assert "bit_stability" in fp.provenance["settings"]


def test_file_hashes_are_memoised_in_the_given_cache_dir(files, tmp_path, monkeypatch):
    from mechclaims.runspec import resolve_run

    default = tmp_path / "default"
    monkeypatch.setenv("MECHCLAIMS_CACHE_DIR", str(default))
    resolve_run(_config(files, cache_dir=str(tmp_path / "given")))
    assert (tmp_path / "given" / "file-hashes.json").is_file()
    assert not (default / "file-hashes.json").exists()


@pytest.mark.parametrize("content", ["null", "[1, 2]", "{not json", '{"x": 5}'])
def test_an_unreadable_hash_memo_is_treated_as_absent(files, tmp_path, content):
    from mechclaims.cache import sha256_file, sha256_file_memo

    (tmp_path / "file-hashes.json").write_text(content)
    assert sha256_file_memo(files["probe"], tmp_path) == sha256_file(files["probe"])
    assert json.loads((tmp_path / "file-hashes.json").read_text())  # rewritten, usable next time


class _Spec:
    """The fields of a ClaimSpec that ClaimSuite reads, around an arbitrary metric."""

    def __init__(self, cid, metric, checks=None, applies=None, needs="A"):
        from mechclaims.claim import ClaimSpec, Check

        self.spec = ClaimSpec(cid, cid.lower(), "s", tuple(checks or [Check("x", ">=", 0.0)]), "src", "pv",
                              metric, applies, needs=needs)


def test_one_claims_arithmetic_never_takes_the_others_down(files, tmp_path):
    from mechclaims.runspec import resolve_run
    from mechclaims.suite import ClaimSuite

    def divides_by_zero(a, ctx):
        return {"x": 1.0 / 0.0}

    def sometimes(a, ctx):  # degenerate in some resamples only
        total = float(a.delta.sum())
        if abs(total - round(total, 2)) < 0.003:
            raise ZeroDivisionError("resample without a reduction")
        return {"x": 1.0}

    def fine(a, ctx):
        return {"x": 1.0}

    specs = {s.spec.id: s.spec for s in (_Spec("C90", divides_by_zero), _Spec("C91", fine), _Spec("C92", sometimes))}
    suite = ClaimSuite(resolve_run(_config(files, cache_dir=str(tmp_path))), specs)
    suite.compute()
    assert suite.results["C90"].status == "skip" and "undetermined" in suite.results["C90"].reason
    assert suite.results["C91"].status == "pass"
    assert suite.results["C92"].status in ("pass", "skip")


def test_a_share_outside_its_meaning_never_passes():
    from mechclaims.claim import SHARE_RANGE, Check
    from mechclaims.suite import ClaimSuite

    spec = _Spec("C16", lambda v, c: {}, [Check("share", ">=", 0.8, valid=SHARE_RANGE)]).spec
    from mechclaims.suite import _Side

    suite = ClaimSuite.__new__(ClaimSuite)
    suite.specs, suite.config = {"C16": spec}, type("C", (), {"strict": False, "regression": {}})()
    suite.baseline, suite.run = None, type("R", (), {"baseline_report": None, "prompts": ("a", "b")})()
    suite.reading, suite.boot_weights = "point", [np.ones(2), np.ones(2)]

    def side(value, boot):
        return _Side(None, point={"C16": {"share": value}}, skips={}, boot={"C16": {"share": np.array(boot)}})

    r = suite._evaluate("C16", side(4.88, [4.5, 5.0]))
    assert r.status == "fail" and r.checks[0].out_of_range and "outside" in r.reason
    r = suite._evaluate("C16", side(0.93, [0.9, 0.95]))
    assert r.status == "pass" and not r.checks[0].out_of_range


def test_the_behaviour_view_never_divides_by_zero():
    from mechclaims.behaviour import BehaviourResult

    tox = {"base": np.array([1.0, 0.0]), "dpo": np.array([0.0, 0.0]), "patch:all↓": np.array([0.0, 0.0])}
    r = BehaviourResult([], tox, np.array([5.0, 5.0]), {k: (v > 0).astype(float) for k, v in tox.items()}, {}, {})
    v = r.view(np.array([0.0, 2.0]))  # the resample without the one toxic continuation
    assert math.isnan(v.relative_reduction()) and math.isnan(v.share("patch:all↓"))
    assert r.view().relative_reduction() == 1.0


def test_the_probe_scorer_is_a_probability_or_refuses(gpt2_pair):
    from mechclaims.loading import load_model
    from mechclaims.scoring import make_scorer

    m = load_model(gpt2_pair[0], memo=False)
    w = torch.randn(m.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ScorerError, match="intercept"):
        make_scorer("probe", base=m, probe=Probe(w))
    s = make_scorer("probe", base=m, probe=Probe(w, {"intercept": -0.3}))
    out = s.score(["you are a kind person", "shut up you idiot"])
    assert ((out > 0) & (out < 1)).all()


# --- options and paths, before any model -------------------------------------------------------


@pytest.mark.parametrize("over, phrase", [
    ({"bootstrap": "2.7"}, "whole number"),
    ({"bootstrap": "-1"}, "at least 0"),
    ({"max_new_tokens": "0"}, "at least 1"),
    ({"thresholds": {"C3": "abc"}}, "finite number"),
    ({"thresholds": {"C3": float("nan")}}, "finite number"),
    ({"strict": "maybe"}, "true or false"),
    ({"scorer": "perspective"}, "unknown scorer"),
    ({"scorer": "lexicon:/nonexistent/lex.txt"}, "does not exist"),
    ({"scorer": "detoxify:klingon"}, "unknown Detoxify variant"),
    ({"ppl_text": "/nonexistent/wiki.txt"}, "--ppl-text"),
    ({"max_new_tokens": "500"}, "context"),
    ({"device": "cuda"}, "no CUDA device"),
    ({"device": "tpu7"}, "not a device"),
])
def test_bad_settings_fail_before_any_model(files, tmp_path, over, phrase, monkeypatch):
    import mechclaims.loading as loading
    from mechclaims.runspec import resolve_run

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(MechclaimsError, match=phrase):
        resolve_run(_config(files, cache_dir=str(tmp_path), **over))


def test_probe_width_is_checked_from_the_config_file(files, tmp_path):
    from mechclaims.errors import ProbeError
    from mechclaims.runspec import resolve_run

    Probe(torch.ones(7, dtype=torch.float64)).save(tmp_path / "narrow.safetensors")
    with pytest.raises(ProbeError, match="width 7"):
        resolve_run(_config(files, probe=str(tmp_path / "narrow.safetensors"), cache_dir=str(tmp_path)))


@pytest.mark.parametrize("report, phrase", [
    ("out/claims.json", "where claims.json goes"),
    ("{prompts}", "prompts"),
    ("{dir}", "is a directory"),
])
def test_reports_never_overwrite_inputs(files, tmp_path, report, phrase):
    from mechclaims.runspec import resolve_run

    report = report.format(prompts=files["prompts"], dir=tmp_path) if "{" in report else str(tmp_path / report)
    with pytest.raises(OutputPathError, match=phrase):
        resolve_run(_config(files, report=report, cache_dir=str(tmp_path)))


def test_an_unwritable_report_location_is_refused_first(files, tmp_path):
    from mechclaims.runspec import resolve_run

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="cannot write"):
        resolve_run(_config(files, report=str(tmp_path / "file" / "claims.html"), cache_dir=str(tmp_path)))


@pytest.mark.parametrize("out, phrase", [("t.json", "name the table .csv"), ("{prompts}", "--prompts")])
def test_cli_out_never_overwrites(files, tmp_path, out, phrase, capsys):
    from mechclaims.cli import main

    before = Path(files["prompts"]).read_bytes()
    out = files["prompts"] if out == "{prompts}" else str(tmp_path / out)
    rc = main(["neurons", "--base", files["base"], "--model", files["model"], "--probe", files["probe"],
               "--prompts", files["prompts"], "--out", out])
    assert rc == 4 and phrase in capsys.readouterr().err  # an output path error: exit 4 (issue 18)
    assert Path(files["prompts"]).read_bytes() == before


# --- the session contract ------------------------------------------------------------------------


def _run(pytester, files, *extra):
    return pytester.runpytest_inprocess(
        CLAIMS, "--base", files["base"], "--model", files["model"], "--probe", files["probe"],
        "--prompts", files["prompts"], "--max-new-tokens", "4", "--bootstrap", "20", "-p", "no:randomly",
        "--cache-dir", str(pytester.path / "cache"), *extra)


def test_a_broken_setup_is_exit_4_before_any_claim(pytester, files):
    res = _run(pytester, files, "--model", "./no/such/checkpoint")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "does not exist" in res.stderr.str()


def test_a_failure_while_computing_stops_the_session_once(pytester, files):
    """Weights that turn out unusable only when loaded (a NaN: a truncated file is now refused
    before, in resolve_run): one message, exit status 4, and the earlier run's report is removed
    rather than left looking current."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = pytester.path / "broken"
    shutil.copytree(files["model"], broken)
    w = broken / "model.safetensors"
    state = {k: v.clone() for k, v in load_file(w).items()}
    state["transformer.h.0.mlp.c_proj.weight"][0, 0] = float("nan")
    save_file(state, w, metadata={"format": "pt"})
    report = pytester.path / "out" / "claims.html"
    report.parent.mkdir()
    report.write_text("<title>mechclaims: 0 failed, 3 passed</title> an earlier run")
    report.with_suffix(".json").write_text('{"schema": "mechclaims.claims/2"}')
    res = _run(pytester, files, "--report", str(report), "--model", str(broken))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    out = res.stdout.str()
    # one failed test carries the message; the session stopped there (no claim was checked)
    assert "could not compute the analysis, so no claim was checked" in out and "Interrupted" in out
    assert res.parseoutcomes().get("failed", 0) == 1 and res.parseoutcomes().get("passed", 0) == 0
    assert not report.exists() and not report.with_suffix(".json").exists()
    assert "removed the earlier run's report" in out


def test_selected_claims_compute_only_what_they_need(pytester, files):
    report = pytester.path / "out" / "claims.html"
    res = _run(pytester, files, "--report", str(report), "-k", "C0 or C3")
    assert res.ret in (0, 1)
    doc = json.loads(report.with_suffix(".json").read_text())
    assert sorted(c["id"] for c in doc["claims"]) == ["C0", "C3"]
    assert doc["behaviour"] is None  # no intervention set was generated
    assert doc["inputs"]["probe"] == files["probe"] or not doc["inputs"]["probe"].startswith("/")


def test_a_loaded_model_without_its_hook_modules_cannot_exist(gpt2_pair):
    """The statistics pass hooks ``stat_modules``; a LoadedModel without them would average
    nothing, silently (the organism builder once made one)."""
    from dataclasses import replace

    from mechclaims.errors import ModelSourceError
    from mechclaims.loading import load_model

    m = load_model(gpt2_pair[0], memo=False)
    with pytest.raises(ModelSourceError, match="needs its .block, MLP output projection. modules"):
        replace(m, stat_modules=[])
