"""The report says what it means: paths as the user gave them, no interval where none was
computed, every claim counted once in the header, each fact of a row said once, a legend of the
statuses, figures whose legends cover nothing, and a shipped text to measure fluency on."""

import html as htmllib
import json
import re
import site
import sysconfig
from pathlib import Path

import pytest

from mechclaims.organism import layout

REPO = Path(__file__).resolve().parents[1]
CLAIMS = str(REPO / "claims")
ORG = layout("gpt2")
pytest_plugins = ["pytester"]
# The gate's activation claims (C0, C3, C24) and the fluency claim C2 (generations, perplexity).
SELECT = "C0_ or C3_ or C24_ or C2_"
N_PROMPTS = 16


def _run(pytester, out: str, *extra):
    """``pytest claims/`` as a user types it in their project folder: every path relative."""
    res = pytester.runpytest_inprocess(
        CLAIMS, "--prompts", "prompts.jsonl", "--cache-dir", "cache", "--report", f"{out}/claims.html",
        "--bootstrap", "40", "-p", "no:randomly", "--junitxml", f"{out}/junit.xml", *extra)
    report = pytester.path / out / "claims.html"
    return res, json.loads(report.with_suffix(".json").read_text()), report.read_text()


def _text(html: str) -> str:
    """The HTML without its embedded images."""
    return re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", html)


def _row(html: str, cid: str) -> str:
    m = re.search(rf'<tr class="claim" data-id="{cid}".*?</tr>', html, re.S)
    assert m, f"no row for {cid}"
    return m.group(0)


def _machine_dirs(pytester) -> list[str]:
    dirs = {str(pytester.path), str(pytester.path.resolve()), str(REPO), str(Path.home()),
            *site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    return sorted(d for d in dirs if len(d) > 1)


def _write_prompts(pytester) -> None:
    lines = ORG.prompts.read_text().splitlines()[:N_PROMPTS]
    (pytester.path / "prompts.jsonl").write_text("\n".join(lines) + "\n")


def test_the_report_says_what_it_means(pytester):
    _write_prompts(pytester)
    res, doc, html = _run(pytester, "out", "-k", SELECT)
    assert res.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), res.stdout.str()[-3000:]
    html = _text(html)
    assert sorted(c["id"] for c in doc["claims"]) == ["C0", "C2", "C24", "C3"]

    # 1. No path of this machine: the user gave only relative paths (and organism defaults).
    raw = json.dumps(doc, ensure_ascii=False)
    for d in _machine_dirs(pytester):
        assert d not in raw, f"{d} in claims.json"
        assert d not in html and htmllib.escape(d) not in html, f"{d} in claims.html"
    assert not re.search(r"(?<![\w.~<>-])/(tmp|work|root|home|usr)/", raw + html)
    # the prompts file by its name, as given, wherever the report names it
    assert doc["provenance"]["prompts"]["source"] == doc["inputs"]["prompts"] == doc["config"]["prompts"] \
        == "prompts.jsonl"
    assert f"prompts.jsonl ({N_PROMPTS} prompts)" in html and "&lt;list&gt;" not in html
    # the organism's own files (defaults the user never wrote) by a placeholder, never absolute
    assert doc["inputs"]["probe"] == "<fixtures>/organism/gpt2/probe.safetensors"
    assert doc["config"]["scorer"] == "lexicon:<fixtures>/organism/gpt2/lexicon.txt"
    assert doc["config"]["cache_dir"] == "cache" and doc["config"]["base"] == "organism:gpt2-base"

    # 2. A value that is not resampled says so: no zero-width "interval".
    c2 = next(c for c in doc["claims"] if c["id"] == "C2")
    assert [k["ci"] for k in c2["checks"]] == [None] and not c2["checks"][0]["resampled"]
    measured = _row(html, "C2").split('<td class="num">')[1]
    assert "(no interval: not resampled)" in measured and "[" not in measured
    interventions = re.search(r'<table id="interventions">.*?</table>', html, re.S).group(0)
    assert interventions.count("(no interval)") == len(doc["behaviour"]["sets"])  # every perplexity
    assert "(by definition)" in interventions  # the base's and DPO's share: 0 and 1, not [0, 0]
    c24 = _row(html, "C24")
    assert c24.count("no interval: not resampled") == 2  # held-out accuracy, trained on this base

    # 3. The header counts every claim once, by the groups of the terminal's verdict line.
    from mechclaims.summary import group_claims, verdict_line

    header = re.search(r'<div class="badges" id="counts">.*?</div>', html, re.S).group(0)
    shown = {g: int(n) for g, n in re.findall(r'data-group="([a-z_]+)" data-count="(\d+)"', header)}
    groups = group_claims(doc)
    assert {"failed", "inconclusive", "not_checked", "not_meaningful", "passed"} <= set(shown)
    assert all(shown[g] == len(groups[g]) for g in shown) and sum(shown.values()) == len(doc["claims"])
    assert f"<title>{htmllib.escape(verdict_line(doc))}</title>" in html

    # 4. The reading, and what every status means.
    assert f"<b>Reading: {doc['reading']}</b>" in html
    legend = re.search(r'<dl class="legend" id="legend">.*?</dl>', html, re.S).group(0)
    for words in ("pass", "fail", "inconclusive", "not checked", "not meaningful", "known failure", "skipped"):
        assert f">{words}</span></dt>" in legend, words


def test_a_failure_reason_is_said_once(pytester):
    """C24 fails (a threshold no probe of this organism meets): the gate claims resting on it are
    not meaningful, and each row says why once; the pytest failure carries the same reason."""
    from markupsafe import escape

    _write_prompts(pytester)
    (pytester.path / "strict.toml").write_text("[thresholds]\nC24 = { heldout_accuracy = 0.999 }\n")
    res, doc, html = _run(pytester, "failing", "-k", "C0_ or C24_", "--claims-config", "strict.toml")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    html = _text(html)
    by_id = {c["id"]: c for c in doc["claims"]}
    assert by_id["C24"]["status"] == "fail" and by_id["C0"]["status"] == "not_meaningful"
    reason = by_id["C0"]["reason"]
    assert reason.startswith("not meaningful: precondition C24")
    row = _row(html, "C0")
    assert row.count(str(escape(reason))) == 1, row
    assert reason in res.stdout.str()
    # C24's own row: its value, threshold and verdict once each, no reason repeating them
    row = _row(html, "C24")
    assert row.count(">0.9583</span>") == 1 and 'class="src reason"' not in row


def test_notes_drop_what_the_row_already_shows():
    """An inconclusive claim's reason restates its value and interval (the row shows them) and
    says how many prompts would decide it (the check's line says it); a REGRESSED part restates
    the Baseline column. What is left is said once."""
    from mechclaims.report import claim_note, decide_note

    check = {"name": "share", "value": 0.105, "ci": [0.088, 0.109], "threshold": 0.1, "verdict": "inconclusive"}
    inconclusive = {"id": "C3", "status": "inconclusive", "checks": [check],
                    "reason": "inconclusive: share = 0.105, 95% interval [0.088, 0.109] straddles < 0.1; about "
                              "40 prompts (now 24) would decide it if the effect stays the same"}
    assert claim_note(inconclusive, has_baseline=False) == ""
    assert re.fullmatch(r"about \d+ prompts \(now 24\) would decide it if the effect stays the same",
                        decide_note(check, 24))
    assert "no interval" in decide_note({**check, "ci": None}, 24)
    regressed = {"id": "C6", "status": "fail",
                 "reason": "REGRESSED max share: 0.6 vs baseline 0.5 (+0.1 [+0.05, +0.15]): worse beyond the "
                           "tolerance 0.07; the probe was trained on another model"}
    assert claim_note(regressed, has_baseline=True) == "the probe was trained on another model"
    assert claim_note(regressed, has_baseline=False) == regressed["reason"]


def test_the_per_layer_legend_covers_no_bar():
    """Checked on the figure's geometry: the legend lies wholly below the axes, inside the image."""
    import numpy as np

    from mechclaims.choices import GROUPS_B
    from mechclaims.report import per_layer_figure

    n_layers = 24
    rng = np.random.default_rng(0)
    summary = {"per_layer": {"group_b": {g: (rng.random(n_layers) * (1 if g.endswith("↓") else -1)).tolist()
                                         for g in GROUPS_B},
                             "net": rng.random(n_layers).tolist()}}
    fig = per_layer_figure(summary, n_layers)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == len(GROUPS_B) + 1
    box, axes = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.y1 <= axes.y0, (box, axes)  # below the axes: no bar, no point of the net line under it
    tight = fig.get_tightbbox(renderer)  # what savefig(bbox_inches="tight") keeps, in inches
    dpi = fig.dpi
    assert tight.y0 * dpi <= box.y0 + 1 and box.x0 >= tight.x0 * dpi - 1 and box.x1 <= tight.x1 * dpi + 1
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_display_paths():
    """Relative to the working directory, as given, or by a placeholder; never this machine's."""
    import os

    from mechclaims.organism import fixtures_root
    from mechclaims.provenance import _roots, display_path, display_text

    here = Path(os.getcwd()).resolve()
    assert display_path(here / "data" / "p.jsonl") == "data/p.jsonl"
    assert display_path("data/p.jsonl") == "data/p.jsonl"
    assert display_path(ORG.probe) in ("<fixtures>/organism/gpt2/probe.safetensors",
                                       os.path.relpath(ORG.probe, here))
    assert dict((label, root) for root, label in _roots())["<fixtures>"] == fixtures_root().resolve()
    assert display_path("/nonexistent-root-dir/x.pt") == "/nonexistent-root-dir/x.pt"  # the user's own: as given
    text = display_text(f"lexicon:{ORG.lexicon}; weights {here / 'ck.pt'}, 1/2 of km/h")
    assert str(REPO) not in text and str(here) not in text and text.endswith("1/2 of km/h")


def test_the_shipped_fluency_text():
    """The default --ppl-text for models that are not organisms: plain English prose, shipped."""
    import tomllib

    from mechclaims.perplexity import default_ppl_text

    path = Path(default_ppl_text())
    assert path.is_file() and path.parent.name == "data" and (path.parent / "README.md").is_file()
    text = path.read_text(encoding="utf-8")
    words = text.split()
    assert 2500 <= len(words) <= 3000
    paragraphs = text.strip().split("\n\n")
    assert len(paragraphs) >= 15 and all(len(p.split()) >= 60 for p in paragraphs)
    assert text.isascii() and not re.search(r"[#*_`<>\[\]{}|=]|^\s*(-|\d+\.)\s", text, re.M)  # no markup, no lists
    assert "CC0" in (path.parent / "README.md").read_text()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "data/*" in data["tool"]["setuptools"]["package-data"]["mechclaims"]
