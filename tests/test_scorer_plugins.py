"""A team's scorer, registered by an installed package's entry point (``mechclaims.scorers``),
without editing mechclaims: it is listed in --help and usable as --scorer; a broken plug-in is
one setup error naming it, not a traceback (issue 19).

The "installed package" is a real distribution on sys.path (a ``*.dist-info`` with
``entry_points.txt``), found by importlib.metadata exactly as pip's would be.
"""

import sys

import numpy as np
import pytest

from mechclaims import scoring
from mechclaims.errors import ScorerError

pytest_plugins = ["pytester"]

PLUGIN = '''
import numpy as np

from mechclaims.scoring import register_scorer


class Shouting:
    """1.0 for a continuation written in capitals, else 0.0."""

    def score(self, texts):
        return np.array([1.0 if t.strip() and t.upper() == t else 0.0 for t in texts], dtype=np.float64)

    def describe(self):
        return {"name": "shouting"}


def register():
    register_scorer("shouting", lambda arg, **_: Shouting(), "shouting: 1.0 for text in capitals (team plug-in)")


def broken():
    raise RuntimeError("the team's model file is missing")
'''


def _install(tmp_path, entry: str):
    (tmp_path / "team_scorers.py").write_text(PLUGIN)
    dist = tmp_path / "team_scorers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: team-scorers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[mechclaims.scorers]\n{entry}\n")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    def install(entry):
        _install(tmp_path, entry)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setitem(scoring._plugin_state, "loaded", False)
        monkeypatch.delitem(sys.modules, "team_scorers", raising=False)
        return tmp_path
    yield install
    scoring.SCORERS.pop("shouting", None)
    scoring._plugin_state.update(loaded=False, error=None)


def test_an_installed_plugin_scorer_is_listed_and_usable(installed):
    installed("shouting = team_scorers:register")
    assert "shouting: 1.0 for text in capitals (team plug-in)" in scoring.scorer_help()
    assert scoring.resolve_scorer_spec("shouting") == "shouting"
    s = scoring.make_scorer("shouting")
    np.testing.assert_array_equal(s.score(["STOP IT", "calm down"]), [1.0, 0.0])
    assert len(scoring.scorer_digest("shouting")) == 64  # keyed on its code, as built-in scorers are


def test_a_broken_plugin_is_one_setup_error_naming_it(installed):
    installed("broken = team_scorers:broken")
    with pytest.raises(ScorerError) as ei:
        scoring.resolve_scorer_spec("lexicon:whatever.txt")
    msg = str(ei.value)
    assert "broken = team_scorers:broken" in msg and "team-scorers" in msg and "model file is missing" in msg
    assert "a scorer plug-in is broken" in scoring.scorer_help()  # --help still works, and says so


def test_a_broken_plugin_stops_a_claim_run_with_exit_4(installed, pytester, tmp_path, monkeypatch):
    from mechclaims.organism import layout
    from tests.test_gate import CLAIMS

    d = installed("broken = team_scorers:broken")
    monkeypatch.setenv("PYTHONPATH", str(d))  # the plug-in is installed for the subprocess too
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(layout("gpt2").prompts.read_text().splitlines()[:16]) + "\n")
    res = pytester.runpytest_subprocess(
        CLAIMS, "-k", "C0", "--prompts", str(prompts), "--cache-dir", str(tmp_path / "cache"),
        "--report", str(tmp_path / "r" / "claims.html"), "-p", "no:randomly",
        "--scorer", "lexicon:" + str(layout("gpt2").defaults()["lexicon"]))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    err = res.stderr.str()
    assert "the scorer plug-in broken = team_scorers:broken" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "results").exists()  # no model work
