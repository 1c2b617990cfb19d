"""The house rules of ARCHITECTURE.md, checked: the import graph of ``mechclaims`` has no
cycle, the ground floor imports nothing above it, library modules never import pytest, and the
organism's runtime never imports its builder."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mechclaims"
GROUND_FLOOR = {"mechclaims.errors", "mechclaims.choices", "mechclaims.provenance", "mechclaims.cache",
                "mechclaims.distributed", "mechclaims.verdicts", "mechclaims.schema"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # from . import organism
                out.update(f"{target}.{a.name}" for a in node.names)
            else:
                out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "mechclaims" or m.startswith("mechclaims.") or m == "pytest"}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for m in _imports(path):
            # ``mechclaims.organism.derived`` -> the module if it is one, else its package
            while m not in files and "." in m and m != "pytest":
                m = m.rsplit(".", 1)[0]
            if m != name:
                deps.add(m)
        graph[name] = deps
    return graph


GRAPH = _graph()


def _cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_every_module_is_seen():
    want = {"mechclaims.loading", "mechclaims.runspec", "mechclaims.organism", "mechclaims.organism.build"}
    assert want <= set(GRAPH)


def test_import_graph_is_acyclic():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", sorted(GROUND_FLOOR))
def test_ground_floor_imports_only_ground_floor(module):
    assert GRAPH[module] <= GROUND_FLOOR, f"{module} imports {sorted(GRAPH[module] - GROUND_FLOOR)}"


def test_library_never_imports_pytest():
    offenders = sorted(n for n, deps in GRAPH.items() if "pytest" in deps and n != "mechclaims.plugin")
    assert offenders == []


def test_organism_runtime_does_not_import_the_builder():
    runtime = {n for n in GRAPH if n.startswith("mechclaims.organism") and n != "mechclaims.organism.build"
               and n != "mechclaims.organism.__main__"}
    for n in runtime:
        assert "mechclaims.organism.build" not in GRAPH[n], n


def test_nothing_below_the_builder_imports_it():
    importers = sorted(n for n, deps in GRAPH.items() if "mechclaims.organism.build" in deps)
    assert importers == ["mechclaims.organism.__main__"]


def test_the_builder_has_no_second_engine():
    """Issue #11: the organism builder records only what the engine measures; it defines none
    of the engine's measures itself (it once had its own perplexity, generation, value-vector
    cosines and shares, with a different top-k tie rule)."""
    import ast

    src = (SRC / "organism" / "build.py").read_text()
    defined = {n.name for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    engine_names = {"perplexity", "generate", "greedy_generate", "value_cos", "shares_from_means",
                    "mlp_acts_at_generated", "encode_prompt_batch", "sha256_file", "atomic_write_text",
                    "top_k_by_cos", "attribute", "collect_pair", "loaded_from_hf"}
    assert defined & engine_names == set()
    for module in ("mechclaims.stats", "mechclaims.attribution", "mechclaims.perplexity",
                   "mechclaims.loading", "mechclaims.cache", "mechclaims.scoring"):
        assert module in GRAPH["mechclaims.organism.build"], module
