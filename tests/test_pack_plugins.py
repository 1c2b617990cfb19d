"""A team's claim pack, installed as a package with an entry point (``mechclaims.packs``), runs
with ``mechclaims check`` without editing mechclaims: ``mechclaims packs`` and ``--help`` list it,
its claim lands under its pack in claims.json, and a broken plug-in is one setup error naming
it (exit 4, no traceback, no model work), issue 19.

The "installed package" is a real distribution on sys.path (a ``*.dist-info`` with
``entry_points.txt``), found by importlib.metadata exactly as pip's would be
(as tests/test_scorer_plugins.py does for scorers).
"""

import json
import os
import subprocess
import sys

import pytest

from mechclaims import claim as claim_mod
from mechclaims import pack_plugins
from mechclaims.cli import _user_paths, main
from mechclaims.errors import ConfigError

INIT = '''
from mechclaims.claim import Pack, Paper, register_pack

PACK = register_pack(Pack(id="acme-refusal", title="Acme's refusal findings",
                          papers=(Paper(title="Refusal Is Mediated by Neurons", authors="Acme et al.",
                                        arxiv="2601.00001", venue="internal"),)))
'''

CLAIMS = '''
from mechclaims.claim import Check, claim


@claim("T901", "some-neurons-reduce", statement="Some MLP neuron moved the probe's projection down.",
       checks=[Check("frac_reducing", ">", 0.0)], source="Acme's review", paper_value="n/a")
def test_T901_some_neurons_reduce(a, ctx):
    return {"frac_reducing": float((a.delta > 0).mean())}
'''

BROKEN = {  # what the package's __init__.py says -> words the one-line error must hold
    "import": ("import acme_missing_dependency\n", "failed to import (ModuleNotFoundError"),
    "raises": ("raise RuntimeError('the pack data file is missing')\n", "the pack data file is missing"),
    "no-pack": ("TITLE = 'no PACK here'\n", "declares no PACK"),
    "not-a-pack": ("PACK = {'id': 'acme'}\n", "expected a mechclaims.claim.Pack"),
}


def _install(root, *, init=INIT, claims=CLAIMS, entry="refusal = acme_claims.refusal"):
    pkg = root / "acme_claims" / "refusal"
    pkg.mkdir(parents=True)
    (root / "acme_claims" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(init)
    if claims is not None:
        (pkg / "test_refusal.py").write_text(claims)
    dist = root / "acme_claims-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-claims\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[mechclaims.packs]\n{entry}\n")
    return root


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install the pack into this process (sys.path) and for subprocesses (PYTHONPATH)."""

    def install(**kw):
        site = _install(tmp_path / "site", **kw)
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
        for name in [m for m in sys.modules if m.split(".")[0] == "acme_claims"]:
            monkeypatch.delitem(sys.modules, name)
        return site

    monkeypatch.setattr(pack_plugins, "_state", {"installed": None, "error": None})
    yield install
    claim_mod.PACKS.pop("acme-refusal", None)


def test_installed_pack_is_found_listed_and_in_help(installed, capsys):
    site = installed()
    (p,) = pack_plugins.installed_packs()
    assert (p.name, p.module, p.pack.id, p.distribution) == ("refusal", "acme_claims.refusal", "acme-refusal",
                                                               "acme-claims 1.0")
    assert p.directory == site / "acme_claims" / "refusal"
    assert main(["packs"]) == 0
    out = capsys.readouterr().out
    assert "dpo-toxicity" in out and "shallow-alignment" in out  # the built-in ones too
    assert "acme-refusal: Acme's refusal findings" in out and "arXiv 2601.00001" in out
    assert "refusal = acme_claims.refusal (package acme-claims 1.0)" in out
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    assert "acme-refusal (acme-claims 1.0)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_pack_is_one_setup_error_naming_it(installed, kind, capsys):
    init, words = BROKEN[kind]
    installed(init=init)
    with pytest.raises(ConfigError) as ei:
        pack_plugins.installed_packs()
    msg = str(ei.value)
    assert "\n" not in msg and words in msg, msg
    assert "refusal = acme_claims.refusal (package acme-claims 1.0)" in msg and "mechclaims.packs" in msg
    assert main(["packs"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and words in err
    assert "a claim pack plug-in is broken" in pack_plugins.packs_help()  # --help still works, and says so


@pytest.mark.parametrize("kw, words", [
    ({"claims": None}, "holds no test_*.py claim files"),
    ({"entry": "refusal = acme_claims.refusal:PACK"}, "expected the name of a package"),
])
def test_a_pack_without_claims_or_named_by_object_is_refused(installed, kw, words):
    installed(**kw)
    with pytest.raises(ConfigError, match="the claim pack plug-in refusal = ") as ei:
        pack_plugins.installed_packs()
    assert words in str(ei.value)


def test_user_paths_leave_the_installed_packs_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "p.jsonl").write_text("")
    assert _user_paths(["mine", "-k", "C0", "--prompts", "p.jsonl"]) == ["mine"]
    assert _user_paths(["mine/x.py::test_y"]) == []  # not there: pytest says so
    assert _user_paths(["--prompts", "p.jsonl", "-x", "-k", "mine", "--claims-model", "mine"]) == []


def _check(site, tmp_path, *args):
    from mechclaims.organism import layout

    prompts = tmp_path / "p8.jsonl"
    prompts.write_text("\n".join(layout("gpt2").prompts.read_text().splitlines()[:8]) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mechclaims", "check", "-k", "T901", "--model", "organism:gpt2", "--prompts",
         str(prompts), "--max-new-tokens", "4", "--bootstrap", "0", "--cache-dir", str(tmp_path / "cache"),
         "--report", str(tmp_path / "r" / "claims.html"), "-p", "no:randomly", "-q", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_check_runs_an_installed_pack_into_the_report(installed, tmp_path):
    res = _check(installed(), tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((tmp_path / "r" / "claims.json").read_text())
    (t901,) = [c for c in doc["claims"] if c["id"] == "T901"]
    assert t901["pack"] == "acme-refusal"
    assert doc["packs"]["acme-refusal"]["papers"][0]["arxiv"] == "2601.00001"


def test_check_with_a_broken_pack_stops_before_any_model_work(installed, tmp_path):
    res = _check(installed(init=BROKEN["import"][0]), tmp_path)
    assert res.returncode == 4, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert "claim pack plug-in refusal = acme_claims.refusal (package acme-claims 1.0) failed to import" in res.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()
