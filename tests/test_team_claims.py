"""A team's own claims, in their own repository (a directory outside this one), run with the
same options, bootstrap, report, baseline, JUnit and markers as the built-in claims."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch

from mechclaims.probe import Probe

pytest_plugins = ["pytester"]

TEAM_FILE = '''
from mechclaims.claim import Check, claim
from mechclaims.metrics import gross_reduction


@claim("T1", "late-layers-carry-half",
       statement="The last third of the layers gives at least half of the gross reduction.",
       checks=[Check("share", ">=", 0.5, "late-layer share of the gross reduction")],
       source="our 2026-Q3 safety review", paper_value="n/a", tags=("gate",))
def test_T1_late_layers(a, ctx):
    late = a.delta[-(ctx.n_layers // 3 or 1):]
    return {"share": float(late[late > 0].sum()) / gross_reduction(a)}


@claim("T2", "impossible", statement="More neurons reduce than exist.",
       checks=[Check("n", ">", 1e12)], source="a test", paper_value="n/a")
def test_T2_impossible(a, ctx):
    return {"n": float((a.delta > 0).sum())}
'''


# The short option forms (--model, --base, ...) in a team's repository: its root conftest.py
# (the installed plugin itself registers only --claims-model, --claims-base, ...).
TEAM_CONFTEST = """
from mechclaims.plugin import add_short_options


def pytest_addoption(parser):
    add_short_options(parser)
"""


@pytest.fixture
def team_repo(pytester, gpt2_pair, tmp_path):
    from transformers import AutoConfig

    from tests import tiny

    base, cand = gpt2_pair
    d_model = AutoConfig.from_pretrained(base).n_embd
    Probe(torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).save(
        pytester.path / "probe.safetensors")
    (pytester.path / "prompts.txt").write_text("\n".join(tiny.PROMPTS * 2) + "\n")
    (pytester.path / "my_claims").mkdir()
    (pytester.path / "my_claims" / "test_team.py").write_text(TEAM_FILE)
    pytester.makeconftest(TEAM_CONFTEST)
    assert "mechclaims" not in str(pytester.path.parent).split("/")[-1]
    return {"base": str(base), "model": str(cand)}


def _run(pytester, repo, *extra):
    return pytester.runpytest_inprocess(
        "my_claims", "--base", repo["base"], "--model", repo["model"], "--probe", "probe.safetensors",
        "--prompts", "prompts.txt", "--max-new-tokens", "4", "--bootstrap", "20", "-p", "no:randomly",
        "--cache-dir", str(pytester.path / "cache"), *extra)


def test_team_claims_run_like_the_built_in_ones(pytester, team_repo):
    res = _run(pytester, team_repo, "--report", "out/claims.html", "--junitxml", "out/j.xml")
    res.assert_outcomes(passed=None or res.parseoutcomes().get("passed", 0), failed=1)
    doc = json.loads((pytester.path / "out" / "claims.json").read_text())
    claims = {c["id"]: c for c in doc["claims"]}
    assert set(claims) == {"T1", "T2"} and claims["T2"]["status"] == "fail"
    t1 = claims["T1"]["checks"][0]
    assert t1["ci"][0] <= t1["value"] <= t1["ci"][1] and claims["T1"]["tags"] == ["gate"]
    assert doc["inputs"]["probe"] == "probe.safetensors"  # shown relative to the working directory
    props = {p.get("name") for c in ET.parse(pytester.path / "out" / "j.xml").getroot().iter("testcase")
             for p in c.iter("property")}
    assert {"claim_id", "share.value", "share.ci_low", "n.threshold"} <= props
    # markers: -m gate selects T1 only
    res = _run(pytester, team_repo, "-m", "gate", "--report", "gate/claims.html")
    assert [c["id"] for c in json.loads((pytester.path / "gate" / "claims.json").read_text())["claims"]] == ["T1"]
    # a baseline from the first run: nothing changed, so nothing regressed
    res = _run(pytester, team_repo, "--baseline", "out/claims.json", "--report", "again/claims.html")
    again = json.loads((pytester.path / "again" / "claims.json").read_text())
    assert all(not c["regressed"] for c in again["claims"])
    assert next(c for c in again["claims"] if c["id"] == "T1")["checks"][0]["baseline"]["diff"] == 0
