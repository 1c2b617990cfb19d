"""CI sees what happened (issue 17, section 4): a setup error is an error in JUnit and leaves no
earlier report looking current; every run ends with one verdict line naming claims by ID, and
appends a markdown summary to ``$GITHUB_STEP_SUMMARY``; ``mechclaims diff`` compares two reports.

Real runs of the plugin on the GPT-2 organism (16 prompts, claims C0, C3, C24; one result cache
for the module, so each pair's statistics are computed once).
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mechclaims import summary
from mechclaims.cli import main
from mechclaims.organism import layout

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
ORG = layout("gpt2")
SELECT = ("-k", "C0 or C3 or C24")
USAGE = pytest.ExitCode.USAGE_ERROR  # 4
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("civ")
    lines = ORG.prompts.read_text().splitlines()[:16]
    (d / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(autouse=True)
def _no_job_summary(monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def _run(pytester, d, report, *extra):
    return pytester.runpytest_inprocess(
        CLAIMS, *SELECT, "--prompts", str(d / "prompts.jsonl"), "--cache-dir", str(d / "cache"),
        "--report", str(report), "--bootstrap", "40", "-p", "no:randomly", *extra)


def _earlier_report(report: Path) -> None:
    """What an earlier run left: a claims.html and claims.json as mechclaims writes them."""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<!doctype html>\n<html><head><title>mechclaims: 0 failed, 0 inconclusive, 0 not checked, "
                      "3 passed</title></head><body>an earlier run</body></html>\n")
    report.with_suffix(".json").write_text(json.dumps({"schema": "mechclaims.claims/2", "claims": []}))


def _reports(pytester, d) -> tuple[Path, Path]:
    """claims.json of organism:gpt2 (the release) and of organism:gpt2-dampened, same prompts."""
    out = []
    for model in ("gpt2", "gpt2-dampened"):
        path = d / model / "claims.html"
        if not path.with_suffix(".json").exists():
            res = _run(pytester, d, path, "--model", f"organism:{model}")
            assert res.ret in (0, 1), res.stdout.str()[-3000:]
        out.append(path.with_suffix(".json"))
    return out[0], out[1]


# --- a setup error ----------------------------------------------------------------------------------


def test_a_setup_error_is_one_junit_error_and_no_earlier_report_stays(pytester, d, monkeypatch):
    # Before: exit 4 wrote <testsuite tests="0" errors="0"> (a green check) and left the earlier
    # claims.html / claims.json in place.
    report = d / "setup" / "claims.html"
    _earlier_report(report)
    junit = d / "setup" / "junit.xml"
    summary_file = d / "setup" / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary_file))
    res = _run(pytester, d, report, "--probe", str(d / "no-such-probe.safetensors"), "--junitxml", str(junit))
    out = res.stdout.str()
    assert res.ret == USAGE, out[-3000:]

    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "1", "0")
    (case,) = suite.iter("testcase")
    assert (case.get("classname"), case.get("name")) == ("mechclaims", "setup")
    (error,) = case.iter("error")
    assert "no-such-probe.safetensors" in error.get("message") and "does not exist" in error.text

    assert not report.exists() and not report.with_suffix(".json").exists()
    assert out.count("removed the earlier run's report") == 2 and str(report) in out
    assert re.search(r"^mechclaims: SETUP ERROR \(exit status 4\) — no claim was checked: probe file .*"
                     r"no-such-probe\.safetensors", out, re.M)
    md = summary_file.read_text()
    assert md.startswith("### mechclaims: SETUP ERROR") and "no-such-probe.safetensors" in md


def test_a_failure_while_computing_is_a_junit_error_too(pytester, d, monkeypatch):
    """A failure once the models load (here: the suite's compute raising, as a disk or driver
    failure would) stops the session with exit 4; JUnit counts it as an error, not only as the
    first claim's failure."""
    from mechclaims.suite import ClaimSuite

    def broken(self, progress=None):
        raise OSError("the disk went away while reading the weights")

    monkeypatch.setattr(ClaimSuite, "compute", broken)
    junit = d / "compute" / "junit.xml"
    res = _run(pytester, d, d / "compute" / "claims.html", "--junitxml", str(junit))
    assert res.ret == USAGE
    suite = ET.parse(junit).getroot().find("testsuite")
    errors = [c for c in suite.iter("testcase") if c.find("error") is not None]
    assert [(c.get("classname"), c.get("name")) for c in errors] == [("mechclaims", "setup")]
    assert "OSError: the disk went away" in errors[0].find("error").text
    assert "mechclaims: SETUP ERROR (exit status 4) — no claim was checked: mechclaims could not compute" \
        in res.stdout.str()


def test_a_file_that_is_not_a_report_is_never_deleted(pytester, d):
    """User data at the report path: a run that would replace it is refused before any model
    work; a run that failed anyway leaves it alone and says so. Before: the first was overwritten
    at the end of the run, the second left in place silently."""
    report = d / "mine" / "claims.html"
    report.parent.mkdir()
    notes = "my notes, not a report\n"
    report.write_text(notes)
    report.with_suffix(".json").write_text('{"schema": "someone-else/1"}')
    cache = d / "mine" / "cache"
    res = pytester.runpytest_inprocess(
        CLAIMS, *SELECT, "--prompts", str(d / "prompts.jsonl"), "--cache-dir", str(cache), "--report", str(report))
    text = res.stdout.str() + res.stderr.str()
    assert res.ret == USAGE and "is not a mechclaims report" in text and str(report) in text
    assert not (cache / "results").exists()  # refused before any model work
    assert report.read_text() == notes and report.with_suffix(".json").read_text() == '{"schema": "someone-else/1"}'

    res = _run(pytester, d, report, "--probe", str(d / "no-such-probe.safetensors"))
    assert res.ret == USAGE
    assert report.read_text() == notes and report.with_suffix(".json").exists()
    assert f"left {report} alone: not a mechclaims report" in res.stdout.str()


def test_a_report_path_onto_the_baseline_never_deletes_the_baseline(pytester, d):
    """The earlier report at the report path is removed only once the outputs are known to be no
    input: a --report whose claims.json is the --baseline is refused and the baseline stays."""
    release, _ = _reports(pytester, d)
    before = release.read_bytes()
    res = _run(pytester, d, release.with_suffix(".html"), "--baseline", str(release))
    assert res.ret == USAGE and "--baseline" in res.stderr.str()
    assert release.read_bytes() == before and "removed the earlier run's report" not in res.stdout.str()


# --- the verdict line and the job summary ------------------------------------------------------------


def test_every_run_ends_with_a_verdict_line_and_a_job_summary(pytester, d, monkeypatch):
    release, _ = _reports(pytester, d)
    summary_file = d / "job-summary.md"
    summary_file.write_text("an earlier step's summary\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary_file))
    report = d / "verdict" / "claims.html"
    res = _run(pytester, d, report, "--model", "organism:gpt2-dampened", "--baseline", str(release))
    out = res.stdout.str()
    doc = json.loads(report.with_suffix(".json").read_text())
    line = summary.verdict_line(doc)
    groups = summary.group_claims(doc)
    # the dampened organism regresses C3 (its toxic neurons carry more of the reduction)
    assert groups["regressed"] == ["C3"] and res.ret == pytest.ExitCode.TESTS_FAILED
    assert line.startswith("mechclaims: FAILED — 1 regressed (C3), ") and "passed" in line
    mech = [ln for ln in out.splitlines() if ln.startswith("mechclaims: ")]
    assert mech == [line]  # exactly one verdict line, as the document says

    md = summary_file.read_text()
    assert md.startswith("an earlier step's summary\n### " + line)  # appended, as GitHub expects
    assert "| claim | status | value [95% CI] | threshold | baseline Δ | reason |" in md
    c3 = next(r for r in md.splitlines() if r.startswith("| C3 "))
    assert "**REGRESSED** (fail)" in c3 and "regressed (tolerance" in c3
    assert {r.split()[1] for r in md.splitlines() if r.startswith("| C")} == {"C0", "C3", "C24"}


def test_the_verdict_line_names_known_failures(pytester, d):
    """An accepted failure is an xfail: counted as a known failure, and the run passes."""
    _reports(pytester, d)
    config = d / "accepted.toml"
    config.write_text('[tool.mechclaims]\naccepted = ["C3"]\n')
    report = d / "accepted" / "claims.html"
    res = _run(pytester, d, report, "--claims-config", str(config), "--model", "organism:gpt2-dampened")
    doc = json.loads(report.with_suffix(".json").read_text())
    assert next(c for c in doc["claims"] if c["id"] == "C3")["outcome"] == "xfailed"
    line = summary.verdict_line(doc)
    assert re.search(r"^mechclaims: PASSED — \d+ passed, 1 known failure \(C3\)$", line), line
    assert line in res.stdout.str() and res.ret == pytest.ExitCode.OK


def test_verdict_line_groups(tmp_path):
    """Each claim in exactly one group; the order of the line; IDs sorted by number."""
    def claim(cid, status, outcome, **kw):
        return {"id": cid, "status": status, "outcome": outcome, **kw}

    doc = {"claims": [claim("S1", "fail", "failed"), claim("C5", "fail", "failed"),
                      claim("C6", "fail", "failed", regressed=True), claim("C14", "inconclusive", "failed"),
                      claim("C2", "not_checked", "failed"), claim("C1", "not_meaningful", "failed"),
                      claim("C10", "fail", "xfailed", known_failure="accepted"), claim("C9", "pass", "passed"),
                      claim("C0", "pass", "passed"), claim("C7", "skip", "skipped")]}
    assert summary.verdict_line(doc) == (
        "mechclaims: FAILED — 2 failed (C5, S1), 1 regressed (C6), 1 inconclusive (C14), 1 not checked (C2), "
        "1 not meaningful (C1), 2 passed, 1 known failure (C10), 1 skipped")
    assert summary.verdict({"claims": [claim("C0", "pass", "passed")]}) == "PASSED"


# --- mechclaims diff ---------------------------------------------------------------------------------


def test_diff_of_two_real_reports(pytester, d, capsys):
    release, dampened = _reports(pytester, d)
    assert main(["diff", str(release), str(dampened)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^C3 v2-toxic-neuron-share: fail → fail\s+REGRESSED$", out, re.M), out
    assert re.search(r"^mechclaims diff: REGRESSED — 1 regressed \(C3\)", out, re.M), out

    # the same states as the gate: a --baseline run of the dampened organism against the release
    report = d / "gated" / "claims.html"
    _run(pytester, d, report, "--model", "organism:gpt2-dampened", "--baseline", str(release))
    gated = json.loads(report.with_suffix(".json").read_text())
    from mechclaims.diff import diff_documents

    diff = diff_documents(json.loads(release.read_text()), json.loads(dampened.read_text()))
    mine = {(c.id, k.name): (k.state, k.comparison.diff, k.comparison.lo, k.comparison.hi)
            for c in diff.claims for k in c.checks}
    theirs = {(c["id"], k["name"]): (k["baseline"]["state"], k["baseline"]["diff"],
                                     *(k["baseline"]["ci"] or [None] * 2))
              for c in gated["claims"] for k in c["checks"]}
    assert mine.keys() == theirs.keys()
    for key, (state, diff_, lo, hi) in theirs.items():
        assert mine[key][0] == state and mine[key][1] == pytest.approx(diff_)
        assert (mine[key][2], mine[key][3]) == ((None, None) if lo is None else (pytest.approx(lo), pytest.approx(hi)))

    # markdown and an HTML page
    page = d / "diff" / "diff.html"
    capsys.readouterr()  # the gated run's output
    assert main(["diff", str(release), str(dampened), "--markdown", "--html", str(page)]) == 1
    md = capsys.readouterr().out
    assert md.startswith("### mechclaims diff: REGRESSED")
    assert re.search(r"^\| C3 v2-toxic-neuron-share \| fail → fail \| share \|.*\| regressed \|$", md, re.M), md
    html = page.read_text()
    assert "<title>mechclaims diff: REGRESSED" in html and "<tr class='bad'>" in html


def test_diff_of_identical_reports_is_0(pytester, d, capsys):
    release, _ = _reports(pytester, d)
    copy = d / "copy.json"
    shutil.copy(release, copy)
    assert main(["diff", str(release), str(copy)]) == 0
    out = capsys.readouterr().out
    assert "mechclaims diff: NO REGRESSION — 0 regressed, 0 improved, 0 status changes" in out
    assert " same" in out and "REGRESSED" not in out


def test_diff_refuses_what_is_not_a_comparable_report(pytester, d, capsys):
    release, dampened = _reports(pytester, d)
    # not a claims.json: the prompts, and a JSON document of something else
    assert main(["diff", str(release), str(d / "prompts.jsonl")]) == 4
    assert "B (" in capsys.readouterr().err
    other = d / "other.json"
    other.write_text('{"schema": "someone-else/1", "claims": []}')
    assert main(["diff", str(other), str(release)]) == 4
    err = capsys.readouterr().err
    assert "A (" in err and "schema" in err and "not a mechclaims claims.json" in err
    # made on other prompts: the document says so, and that is refused with the setting named
    doc = json.loads(dampened.read_text())
    doc["provenance"]["prompts"]["sha256"] = "0" * 64
    moved = d / "other-prompts.json"
    moved.write_text(json.dumps(doc))
    assert main(["diff", str(release), str(moved)]) == 4
    err = capsys.readouterr().err
    assert "the prompts (sha256)" in err and "in A" in err and "in B" in err
    # the page may not overwrite an input
    before = release.read_bytes()
    assert main(["diff", str(release), str(dampened), "--html", str(release)]) == 4
    assert "would overwrite" in capsys.readouterr().err and release.read_bytes() == before
