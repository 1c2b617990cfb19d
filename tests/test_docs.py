"""The documentation: a short README, no dead relative link, a claims page that matches the code,
and (with the ``docs`` extra installed) a strict MkDocs build."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 150


def _gen():
    """docs/gen_claims.py, the generator of the claims page (a script, not a package module)."""
    name = "mechclaims_docs_gen_claims"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "gen_claims.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before running it: its dataclass looks its module up there
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _markdown_files():
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def _links(text: str) -> list[str]:
    """Targets of Markdown links and images, outside code blocks and code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def test_readme_is_a_front_door():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it to {README_MAX_LINES} and move detail to docs/"


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files(md):
    dead = []
    for target in _links(md.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (md.parent / path).exists():
            dead.append(target)
    assert dead == [], f"{md.relative_to(REPO)}: relative links to missing files: {dead}"


def test_claims_page_lists_every_claim_and_is_current():
    gen = _gen()
    registry = gen.load_registry()
    page = gen.render(registry)
    missing = [cid for cid in registry if f"\n### {cid} · {registry[cid].slug} {{#{cid.lower()}}}\n" not in page]
    assert missing == [], f"claims missing from the generated page: {missing}"
    committed = (DOCS / gen.PAGE).read_text(encoding="utf-8")
    assert committed == page, f"docs/{gen.PAGE} is stale against the @claim metadata or the tests: " \
                              f"run `{gen.REGENERATE}`"


def test_failing_pairs_are_read_from_the_tests(tmp_path):
    """The three ways a test asserts a failure are found, with the comment on the line; a claim no
    test fails has no entry (the page then says "no failing pair found")."""
    gen = _gen()
    src = tmp_path / "tests" / "test_pairs.py"
    src.parent.mkdir()
    src.write_text('''
def test_direct(run):
    """The direct pair. More text."""
    claims = run()
    assert claims["C3"]["status"] == "fail"  # measured: 0.21
    assert claims["C22"]["status"] in ("fail", "skip")


def test_loop(run):
    for cid in ("C6", "C7"):
        assert claims[cid]["status"] == "fail", cid


def test_alias(doc):
    c19 = next(c for c in doc["claims"] if c["id"] == "C19")
    assert c19["status"] == "fail"


def test_passes(claims):
    assert claims["C0"]["status"] == "pass"
''')
    found = gen.failing_tests({"C0", "C3", "C6", "C7", "C19", "C22"}, sources=["tests/test_pairs.py"], root=tmp_path)
    assert {cid: [f.name for f in fs] for cid, fs in found.items()} == {
        "C3": ["test_direct"], "C22": ["test_direct"], "C6": ["test_loop"], "C7": ["test_loop"], "C19": ["test_alias"]}
    c3, c22 = found["C3"][0], found["C22"][0]
    assert (c3.summary, c3.note, c3.or_skip) == ("The direct pair.", "measured: 0.21", False)
    assert c22.or_skip is True
    # and on the real tests: the dampened organism is where the toxic-neuron claim C3 fails
    real = gen.failing_tests(gen.load_registry())
    assert "test_dampened_pair_fails_the_toxic_neuron_claims" in [f.name for f in real["C3"]]


def test_readme_claims_table_has_every_claim_with_its_tag():
    gen = _gen()
    registry = gen.load_registry()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = {m[0]: m[1].strip() for m in re.findall(r"^\| (\w+) \| .*? \| ([\w ]*)\|$", readme, flags=re.M)}
    want = {cid: "gate" if s.is_gate else "exploratory" if "exploratory" in s.tags else ""
            for cid, s in registry.items()}
    assert {cid: rows.get(cid) for cid in want} == want, "README.md's claims table and the @claim tags disagree"


def test_mkdocs_build_is_strict_and_green(tmp_path):
    for mod in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(mod, reason="the docs extra is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # from the repository root: mkdocs.yml's snippets (ARCHITECTURE.md, the CI example) are read from there
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "claims" / "index.html").is_file() and (site / "api" / "claim" / "index.html").is_file()
