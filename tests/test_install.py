"""mechclaims outside this repository: installed from its wheel, the built-in claims, the sweep
and the TRL callback find their claims inside the package; the plugin adds no option another
project's pytest run could collide with; pytest-xdist is refused with a clear message."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORG_PROMPTS = REPO / "fixtures" / "organism" / "gpt2" / "prompts.jsonl"
pytest_plugins = ["pytester"]
EDITABLE_FINDER = "__editable___mechclaims"  # setuptools' editable-install module prefix


def _setuptools_ok() -> bool:
    """The installed setuptools can build the wheel without build isolation (no download)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version

    return int(version("setuptools").split(".")[0]) >= 68


def _sh(cmd, *, cwd, env, timeout=900):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    res.output = res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv holding only the wheel of mechclaims. Its dependencies (torch, transformers,
    ...) come from this environment's site-packages through a .pth line, which adds the
    directory without running its .pth files, so the editable install of this checkout stays
    invisible there."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the build reads: a build in the checkout writes build/ there.
    src = root / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for d in ("src", "claims"):
        shutil.copytree(REPO / d, src / d, ignore=skip)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MECHCLAIMS_FIXTURES", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    isolation = ["--no-build-isolation"] if _setuptools_ok() else []
    res = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", root / "dist", src],
              cwd=root, env=env)
    assert res.returncode == 0, res.output
    (wheel,) = (root / "dist").glob("mechclaims-*.whl")

    venv = root / "venv"
    res = _sh([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    assert res.returncode == 0, res.output
    py = venv / "bin" / "python"
    purelib = Path(_sh([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=root, env=env).stdout.strip())
    (purelib / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = _sh([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel],
              cwd=root, env=env)
    assert res.returncode == 0, res.output
    return {"venv": venv, "py": py, "bin": venv / "bin", "wheel": wheel, "env": env}


@pytest.mark.slow
def test_the_wheel_runs_everything_from_any_directory(wheel_venv, gpt2_pair, tmp_path):
    from mechclaims.sweep import load_claims

    w = wheel_venv
    venv, env = w["venv"].resolve(), dict(w["env"])
    work = tmp_path / "elsewhere"  # an empty directory, far from the checkout
    work.mkdir()

    # 1. Everything imports from the venv; nothing from the checkout.
    probe_code = ("import json, sys, mechclaims, mechclaims.plugin, mechclaims.claims as c; print(json.dumps("
                  "[mechclaims.__file__, mechclaims.plugin.__file__, c.__file__, str(mechclaims.claims_dir()), "
                  f"sorted(m for m in sys.modules if m.startswith({EDITABLE_FINDER!r}))]))")
    res = _sh([w["py"], "-c", probe_code], cwd=work, env=env)
    assert res.returncode == 0, res.output
    *files, finders = json.loads(res.stdout)
    assert all(Path(f).resolve().is_relative_to(venv) for f in files), files
    assert finders == []
    assert sorted(p.name for p in Path(files[-1]).glob("test_*.py")) == sorted(
        p.name for p in (REPO / "claims").glob("test_*.py"))
    assert (Path(files[-1]) / "conftest.py").is_file()

    # 2. The organisms are not in the wheel: without MECHCLAIMS_FIXTURES a run says where to point it.
    res = _sh([w["bin"] / "mechclaims", "check", "-k", "C0", "--collect-only", "-q"], cwd=work, env=env)
    assert res.returncode == 4, res.output
    assert "MECHCLAIMS_FIXTURES" in res.output

    # 3. The built-in claims, the documented way, on the organism; [tool.mechclaims] is read from
    # the working directory's pyproject.toml (the rootdir), the report is written there.
    env["MECHCLAIMS_FIXTURES"] = str(REPO / "fixtures")
    (work / "p16.jsonl").write_text("\n".join(ORG_PROMPTS.read_text().splitlines()[:16]) + "\n")
    (work / "pyproject.toml").write_text("[tool.mechclaims.thresholds]\nC3 = 0.2\n")
    res = _sh([w["bin"] / "mechclaims", "check", "--model", "organism:gpt2", "-k", "C0 or C3", "--prompts", "p16.jsonl",
               "--bootstrap", "40", "--cache-dir", "cache", "-p", "no:randomly"], cwd=work, env=env)
    assert res.returncode == 0, res.output
    doc = json.loads((work / "reports" / "claims.json").read_text())
    claims = {c["id"]: c for c in doc["claims"]}
    assert set(claims) == {"C0", "C3"} and claims["C3"]["checks"][0]["threshold"] == 0.2
    assert (work / "reports" / "claims.html").is_file()
    assert not any(venv.rglob(".pytest_cache")), "pytest wrote into the installed package"

    # 4. `mechclaims sweep` over a trainer output directory (two tiny checkpoints), its claims
    # loaded from the wheel by default.
    base, cand = gpt2_pair
    from transformers import AutoModelForCausalLM

    from tests.tiny import perturb

    run = work / "run"
    for step in (1, 2):
        shutil.copytree(cand, run / f"checkpoint-{step}")
    perturb(AutoModelForCausalLM.from_pretrained(cand), seed=7).save_pretrained(run / "checkpoint-2")
    _probe_and_prompts(base, work)
    res = _sh([w["bin"] / "mechclaims", "sweep", "run", "--base", base, "--probe", "probe.safetensors",
               "--prompts", "prompts.txt", "--select", "gate", "--max-new-tokens", "4", "--bootstrap", "20",
               "--cache-dir", "cache", "--report", "sweep/sweep.html"], cwd=work, env=env)
    assert res.returncode in (0, 1), res.output
    sweep = json.loads((work / "sweep" / "sweep.json").read_text())
    assert [c["step"] for c in sweep["checkpoints"]] == [1, 2]
    gate = sorted(k for k, s in load_claims(REPO / "claims").items() if "gate" in s.tags)
    assert sweep["gate"] == gate

    # 5. The TRL callback, imported from the wheel, loads the built-in claims from inside it.
    trl_code = ("import json, mechclaims; from mechclaims.integrations.trl import MechclaimsCallback as C; "
                "cb = C(None, probe='probe.safetensors', prompts='prompts.txt', select='all'); "
                "print(json.dumps([str(mechclaims.claims_dir()), sorted(cb.specs)]))")
    res = _sh([w["py"], "-c", trl_code], cwd=work, env=env)
    assert res.returncode == 0, res.output
    where, ids = json.loads(res.stdout)
    assert Path(where).resolve().is_relative_to(venv)
    assert ids == sorted(load_claims(REPO / "claims"))


def _probe_and_prompts(base: Path, d: Path) -> None:
    import torch
    from transformers import AutoConfig

    from mechclaims.probe import Probe
    from tests import tiny

    width = AutoConfig.from_pretrained(base).n_embd
    Probe(torch.randn(width, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).save(
        d / "probe.safetensors")
    (d / "prompts.txt").write_text("\n".join(tiny.PROMPTS * 2) + "\n")


# --- another project's pytest run -------------------------------------------------------------

TRAINING_CONFTEST = '''
import pytest


def pytest_addoption(parser):  # a training repository's own options, named like the claims' short forms
    parser.addoption("--device", default="cpu")
    parser.addoption("--model", default="tiny")
    parser.addoption("--report", default=None)


@pytest.fixture
def device(request):
    return request.config.getoption("--device")
'''

TRAINING_TEST = '''
def test_uses_its_own_options(device, request):
    assert device == "cuda:7"
    assert request.config.getoption("--model") == "my-model"
    assert request.config.getoption("--report") == "train.txt"
'''

TEAM_CLAIM = '''
from mechclaims.claim import Check, claim


@claim("T9", "some-neurons-move", statement="At least one neuron moves along the probe.",
       checks=[Check("n", ">=", 1.0)], source="a test", paper_value="n/a")
def test_T9_some_neurons_move(a, ctx):
    return {"n": float((a.delta != 0).sum())}
'''


def test_the_plugin_leaves_other_projects_options_alone(pytester, gpt2_pair):
    """A repository whose conftest defines --device, --model and --report: its own test run is
    untouched, and claims run there with the prefixed options (its --device is not ours)."""
    pytester.makeconftest(TRAINING_CONFTEST)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_train.py").write_text(TRAINING_TEST)
    res = pytester.runpytest_inprocess("tests", "--device", "cuda:7", "--model", "my-model", "--report", "train.txt")
    assert res.ret == 0, res.stdout.str()
    res.assert_outcomes(passed=1)

    base, cand = gpt2_pair
    _probe_and_prompts(base, pytester.path)
    (pytester.path / "my_claims").mkdir()
    (pytester.path / "my_claims" / "test_team.py").write_text(TEAM_CLAIM)
    res = pytester.runpytest_inprocess(
        "my_claims", "--claims-model", str(cand), "--claims-base", str(base), "--claims-probe", "probe.safetensors",
        "--claims-prompts", "prompts.txt", "--claims-max-new-tokens", "4", "--claims-bootstrap", "20",
        "--claims-cache-dir", "cache", "--claims-report", "out/claims.html",
        "--device", "cuda:7", "--model", "my-model", "--report", "train.txt", "-p", "no:randomly")
    assert res.ret == 0, res.stdout.str()
    res.assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "out" / "claims.json").read_text())
    assert [c["id"] for c in doc["claims"]] == ["T9"] and doc["config"]["device"] == "cpu"


SHORT_FORMS_CONFTEST = '''
from mechclaims.plugin import add_short_options

SKIPPED = []


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu")
    parser.addoption("--model", default="tiny")
    parser.addoption("--report", default=None)
    SKIPPED.extend(add_short_options(parser))  # after its own: the taken short forms are skipped
'''

SHORT_FORMS_TEST = '''
import conftest


def test_short_forms(request):
    opt = request.config.getoption
    assert sorted(conftest.SKIPPED) == ["--device", "--model", "--report"]
    assert opt("--device") == "cuda:7" and opt("mechclaims_device") is None
    assert opt("--base") == "B" == opt("mechclaims_base")            # a short form: mechclaims's
    assert opt("mechclaims_model") == "M" and opt("--model") == "x"  # the prefixed form still works
    assert opt("--max-new-tokens") == "3" == opt("mechclaims_max_new_tokens")
'''


def test_short_forms_skip_what_a_conftest_already_owns(pytester):
    pytester.makeconftest(SHORT_FORMS_CONFTEST)
    pytester.makepyfile(test_opts=SHORT_FORMS_TEST)
    res = pytester.runpytest_inprocess("--device", "cuda:7", "--model", "x", "--base", "B", "--claims-model", "M",
                                       "--max-new-tokens", "3")
    assert res.ret == 0, res.stdout.str()
    res.assert_outcomes(passed=1)


def test_prefixed_and_short_forms_set_the_same_setting():
    """The claims' conftest gives every prefixed option but --claims-config its short form."""
    from mechclaims.options import OPTIONS as _OPTIONS, prefixed as _prefixed

    shorts = [flag for flag, _, _ in _OPTIONS if _prefixed(flag) != flag]
    assert "--model" in shorts and "--claims-config" not in shorts
    assert all(_prefixed(f).startswith("--claims-") for f in shorts)


# --- pytest-xdist ---------------------------------------------------------------------------------

def test_xdist_is_refused_before_any_model_work(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_plain="def test_a():\n    pass\n\n\ndef test_b():\n    pass\n")
    res = pytester.runpytest_subprocess("test_plain.py", "-n", "2", "-p", "no:randomly")
    assert res.ret == 0, res.stdout.str()  # other tests run under -n as before
    res.assert_outcomes(passed=2)

    res = pytester.runpytest_subprocess(str(REPO / "claims"), "-n", "2", "-k", "C0 or C3", "--prompts",
                                        str(ORG_PROMPTS), "--report", "out/claims.html", "-p", "no:randomly")
    assert res.ret == 4, res.stdout.str() + res.stderr.str()
    assert "run the claims without -n" in res.stderr.str()
    assert not (pytester.path / "out").exists()
