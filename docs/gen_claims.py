"""The claims reference page, generated from the ``@claim`` metadata in the code.

Used two ways:

- as a MkDocs hook (``hooks: [docs/gen_claims.py]`` in mkdocs.yml): ``on_files`` renders the page
  from the code on every build and puts it in the site in place of ``docs/claims.md`` (the build
  never writes into the checkout);
- as a script: ``python docs/gen_claims.py`` writes ``docs/claims.md``, the copy committed for
  readers of the repository (``tests/test_docs.py`` fails when it differs from the code);
  ``python docs/gen_claims.py -`` prints the page.

Every field comes from ``mechclaims.claim.REGISTRY``, filled by importing the ``test_*.py``
modules of the package ``mechclaims.claims`` (the checkout's ``claims/``, claim packs below it
included). Which pair makes a claim fail is read from the test source: the tests in
``FAILING_SOURCES`` that assert a claim's status is ``"fail"``. A claim no test fails says so.
"""

from __future__ import annotations

import ast
import html
import importlib
import pkgutil
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The page this module generates, relative to docs/.
PAGE = "claims.md"
#: What to run when the committed page is stale.
REGENERATE = "python docs/gen_claims.py"
#: The test files whose assertions name the pairs on which a claim fails.
FAILING_SOURCES = ("tests/test_claims_pairs.py", "tests/test_claims.py", "tests/test_depth_claims.py")

_ID = r"[A-Z][A-Za-z]*\d+"
_STATUS = r'\[\s*"status"\s*\]'
# claims["C3"]["status"] == "fail"   /   claims["C22"]["status"] in ("fail", "skip")
_DIRECT = re.compile(rf'\w+\[\s*"(?P<id>{_ID})"\s*\]\s*{_STATUS}\s*(?P<how>==\s*"fail"|in\s*\(\s*"fail")')
# for cid in ("C3", "C4"):\n    assert claims[cid]["status"] == "fail"
_LOOP = re.compile(rf'for\s+(?P<var>\w+)\s+in\s+\((?P<ids>[^)]*)\)\s*:\s*\n\s*assert\s+\w+\[(?P=var)\]\s*{_STATUS}'
                   r'\s*==\s*"fail"')
# c19 = next(c for c in ... if c["id"] == "C19")   ...   assert c19["status"] == "fail"
_ALIAS = re.compile(rf'(?P<var>\w+)\s*=\s*next\(.*?\[\s*"id"\s*\]\s*==\s*"(?P<id>{_ID})"\s*\)')


@dataclass(frozen=True)
class FailingTest:
    """A test that asserts a claim fails: where, and what its docstring says about the pair."""

    path: str  # relative to the repository root
    name: str
    summary: str  # the docstring's first sentence, "" when the test has none
    or_skip: bool = False  # the test accepts "fail" or "skip"
    note: str = ""  # the comment on the asserting line, e.g. "# measured: early layers dominate"

    @property
    def node_id(self) -> str:
        return f"{self.path}::{self.name}"


def load_registry() -> dict:
    """Import every ``test_*`` module of ``mechclaims.claims`` (packs included) and return the
    filled ``REGISTRY``, by claim ID."""
    import mechclaims.claims as pack
    from mechclaims.claim import REGISTRY

    for mod in pkgutil.walk_packages(pack.__path__, pack.__name__ + "."):
        if mod.name.rsplit(".", 1)[-1].startswith("test_"):
            importlib.import_module(mod.name)
    return REGISTRY


def _first_sentence(doc: str | None) -> str:
    if not doc:
        return ""
    text = " ".join(doc.split())
    m = re.match(r"(.+?(?<!\bal)(?<!\be\.g)\.)(\s|$)", text)
    return m.group(1) if m else text


def failing_tests(ids, sources=FAILING_SOURCES, root: Path = REPO) -> dict[str, list[FailingTest]]:
    """Claim ID -> the tests in ``sources`` that assert that claim fails (regexes over each test
    function's source; only IDs in ``ids`` count)."""
    ids = set(ids)
    found: dict[str, list[FailingTest]] = {}
    for rel in sources:
        path = root / rel
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        for node in ast.parse(text).body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            body = "".join(lines[node.lineno - 1:node.end_lineno])
            hits: dict[str, tuple[bool, str]] = {}  # id -> (fail-or-skip accepted, comment)
            for m in _DIRECT.finditer(body):
                or_skip = hits.get(m["id"], (True, ""))[0] and m["how"].startswith("in")
                hits[m["id"]] = (or_skip, hits.get(m["id"], (True, ""))[1] or _line_comment(body, m.end()))
            for m in _LOOP.finditer(body):
                for cid in re.findall(rf'"({_ID})"', m["ids"]):
                    hits[cid] = (False, _line_comment(body, m.end()))
            for m in _ALIAS.finditer(body):
                fail = re.search(rf'\b{m["var"]}{_STATUS}\s*==\s*"fail"', body)
                if fail:
                    hits[m["id"]] = (False, _line_comment(body, fail.end()))
            summary = _first_sentence(ast.get_docstring(node))
            for cid, (or_skip, note) in hits.items():
                if cid in ids:
                    found.setdefault(cid, []).append(FailingTest(rel, node.name, summary, or_skip, note))
    return found


def _line_comment(text: str, pos: int) -> str:
    """The ``# comment`` at the end of the line holding ``pos``, without the ``#`` ("" if none)."""
    end = text.find("\n", pos)
    m = re.search(r"#\s*(.+?)\s*$", text[pos:end if end >= 0 else len(text)])
    return m.group(1) if m else ""


def _md(text: str) -> str:
    """Plain text as Markdown: HTML and the characters Markdown would read as markup escaped."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", html.escape(str(text), quote=False))


def _code(text: str) -> str:
    return f"<code>{html.escape(str(text))}</code>".replace("|", "&#124;")


def _sort_key(cid: str):
    m = re.match(r"([A-Za-z]*)(\d*)", cid)
    return (m.group(1), int(m.group(2) or 0), cid)


def _threshold(check) -> str:
    return f"{check.op} {check.threshold:g}"


def _tags(spec) -> str:
    return ", ".join(spec.tags) if spec.tags else "untagged"


def _claim_section(spec, fails: list[FailingTest], preconditions: dict) -> list[str]:
    out = [f"### {spec.id} · {spec.slug} {{#{spec.id.lower()}}}", "", _md(spec.statement), ""]
    needs = {"A": "activations and weights (`A`)", "G": "generations under interventions (`G`)",
             "D": "depth: per-token KL and prefilled generations (`D`)"}[spec.needs]
    pre = ", ".join(f"[{p}](#{p.lower()}) ({_md(preconditions.get(p, ''))})" for p in spec.preconditions) or "none"
    out += [
        "| | |",
        "|---|---|",
        f"| ID | `{spec.id}` |",
        f"| slug | `{spec.slug}` |",
        f"| tags | {_tags(spec)} |",
        f"| reads | {needs} |",
        f"| preconditions | {pre} |",
        f"| paper value | {_md(spec.paper_value)} |",
        f"| source | {_md(spec.source)} |",
        f"| pack | `{spec.pack}` |" if spec.pack else "| pack | — |",
        f"| defined in | `{_defined_in(spec)}` |",
        "",
        "| check | op | threshold | measures | meaningful range | interval |",
        "|---|---|---|---|---|---|",
    ]
    for c in spec.checks:
        valid = "—" if c.valid is None else f"[{c.valid[0]:g}, {c.valid[1]:g}]"
        interval = "paired bootstrap" if c.resampled else "none (read at its value)"
        out.append(f"| {_code(c.name)} | `{c.op}` | {c.threshold:g} | {_code(c.label) if c.label else '—'} "
                   f"| {valid} | {interval} |")
    out += ["", "**Fails on:**", ""]
    if fails:
        for f in fails:
            how = " (asserts it fails or is skipped)" if f.or_skip else ""
            note = f" (*{_md(f.note)}*)" if f.note else ""
            summary = f" — {_md(f.summary)}" if f.summary else ""
            out.append(f"- `{f.node_id}`{how}{note}{summary}")
    else:
        out.append("- no failing pair found in " + ", ".join(f"`{s}`" for s in FAILING_SOURCES) + ".")
    out.append("")
    return out


def _defined_in(spec) -> str:
    """``mechclaims.claims.dpo_toxicity.test_reduction`` -> ``claims/dpo_toxicity/test_reduction.py``."""
    mod = spec.metric.__module__
    for prefix in ("mechclaims.claims.", "claims."):
        if mod.startswith(prefix):
            return "claims/" + mod[len(prefix):].replace(".", "/") + ".py"
    return mod.replace(".", "/") + ".py"


def _pack_header(pid: str) -> list[str]:
    from mechclaims.claim import PACKS

    pack = PACKS.get(pid)
    if pack is None:
        return ["## Claims in no pack", ""]
    out = [f"## Pack `{pid}`: {_md(pack.title)} {{#pack-{pid}}}", "", _md(pack.description), ""]
    for p in pack.papers:
        bits = [f"{_md(p.authors)}, “{_md(p.title)}”"]
        bits += [_md(p.venue)] if p.venue else []
        bits += [f"[arXiv {p.arxiv}](https://arxiv.org/abs/{p.arxiv})"] if p.arxiv else []
        bits += [f"code: {p.code}"] if p.code else []
        out.append("- " + ", ".join(bits))
    out += ["", f"Run this pack alone: `pytest claims/{pid.replace('-', '_')}`.", ""]
    return out


def render(registry=None, failing=None) -> str:
    """The whole claims reference page as Markdown."""
    from mechclaims.claim import PRECONDITIONS, TAGS

    registry = load_registry() if registry is None else registry
    failing = failing_tests(registry) if failing is None else failing
    from mechclaims.claim import PACKS

    order = list(PACKS)
    specs = [registry[k] for k in sorted(registry, key=lambda k: (
        order.index(registry[k].pack) if registry[k].pack in order else len(order), _sort_key(k)))]
    out = [
        "# Claims reference",
        "",
        "<!-- Generated by docs/gen_claims.py from the @claim metadata in claims/ and the failing "
        f"pairs asserted in the tests; do not edit by hand: run `{REGENERATE}`. -->",
        "",
        f"Every claim of the package `mechclaims.claims` ({len(specs)} claims), generated at build time from "
        "its `@claim(...)` declaration. Thresholds are the defaults: `[tool.mechclaims.thresholds]` "
        "overrides them by claim ID (see [Getting started](getting-started.md#settings-in-pyprojecttoml)). "
        "*Fails on* lists the tests that assert the claim fails on a pair (from "
        + ", ".join(f"`{s}`" for s in FAILING_SOURCES)
        + "); `tests/test_claims_pairs.py::test_no_claim_passes_on_every_pair` checks that every "
        "claim but C24 failed on some pair of that module.",
        "",
        "Tags: " + "; ".join(f"`{t}`: {_md(d)}" for t, d in TAGS.items())
        + "; untagged: the paper's quantitative findings, run by `pytest claims/` but not selected by `-m gate`. "
        "Preconditions: " + "; ".join(f"[{k}](#{k.lower()}) {_md(v)}" for k, v in PRECONDITIONS.items())
        + " (when one fails, the claims that read it are *not meaningful*: [Gating in CI](gating.md)).",
        "",
    ]
    for i, s in enumerate(specs):
        if i == 0 or s.pack != specs[i - 1].pack:
            out += _pack_header(s.pack) + ["| ID | slug | tags | checks | fails on |", "|---|---|---|---|---|"]
        checks = "; ".join(f"{_code(c.name)} {_code(_threshold(c))}" for c in s.checks)
        n = len(failing.get(s.id, []))
        out.append(f"| [{s.id}](#{s.id.lower()}) | {_md(s.slug)} | {_tags(s)} | {checks} | "
                   f"{f'{n} test' + ('s' if n > 1 else '') if n else 'no failing pair found'} |")
        if i + 1 == len(specs) or specs[i + 1].pack != s.pack:
            out.append("")
    out += ["## Every claim", ""]
    for s in specs:
        out += _claim_section(s, failing.get(s.id, []), PRECONDITIONS)
    return "\n".join(out).rstrip("\n") + "\n"


# ---- MkDocs hook -------------------------------------------------------------------------------


def on_files(files, config):
    """Put the page rendered from the code in the site, in place of the committed copy (in memory;
    nothing is written under docs/)."""
    from mkdocs.structure.files import File

    committed = files.get_file_from_path(PAGE)
    if committed is not None:
        files.remove(committed)
    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "docs" / PAGE)
    page = render()
    if out == "-":
        sys.stdout.write(page)
    else:
        Path(out).write_text(page, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
