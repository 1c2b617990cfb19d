"""The house rules of ARCHITECTURE.md, checked: every module has a row in its module tables and
imports only modules of earlier rows (the layer order, floor by floor), the import graph has no
cycle, library modules never import pytest, and the organism's runtime never imports its
builder (``mechclaims.builder``)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mechclaims"
ARCHITECTURE = SRC.parents[1] / "ARCHITECTURE.md"


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


def _floors(text: str) -> list[list[str]]:
    """The module tables of ARCHITECTURE.md's "## Modules" section, in order: one list of module
    names (first column, ``mechclaims.`` prefixed) per table, i.e. per floor."""
    section = text.split("\n## Modules", 1)[1].split("\n## ", 1)[0]
    floors, rows = [], None
    for line in section.splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        cell = line.split("|")[1].strip()
        if rows is None:  # the header row starts a table
            rows = []
            floors.append(rows)
        elif cell.startswith("`"):
            name = cell.strip("`")
            rows.append(name if name == "mechclaims" else f"mechclaims.{name}")
    return floors


FLOORS = _floors(ARCHITECTURE.read_text(encoding="utf-8"))
ROWS = [m for floor in FLOORS for m in floor]
GROUND_FLOOR = set(FLOORS[0])


def _row(module: str, rows: list[str]) -> int | None:
    """The row of ``module``: its own, else the row of the nearest package that has one (a row
    may stand for a package: ``scoring`` covers ``scoring.lexicon``). The root package's row
    covers only itself."""
    name = module
    while True:
        if name in rows:
            return rows.index(name)
        if "." not in name or name.rsplit(".", 1)[0] == "mechclaims":
            return None
        name = name.rsplit(".", 1)[0]


def _own_package(module: str, graph) -> str | None:
    """The subpackage a module belongs to (a package's ``__init__`` is its own), None at the top."""
    is_package = any(m.startswith(module + ".") for m in graph)
    package = module if is_package else module.rsplit(".", 1)[0]
    return None if package == "mechclaims" else package


def _upward_imports(graph, rows: list[str]) -> list[str]:
    """Every import that goes to a later row (or to a module with no row) instead of an earlier
    one, or to its own package; ``__main__`` modules are entry scripts and may import anything."""
    found = []
    for module, deps in sorted(graph.items()):
        if module.endswith(".__main__"):
            continue
        here = _row(module, rows)
        if here is None:  # test_architecture_md_lists_every_module reports it
            continue
        package = _own_package(module, graph)
        for dep in sorted(deps):
            if not dep.startswith("mechclaims") or (package and (dep == package or dep.startswith(package + "."))):
                continue
            there = _row(dep, rows)
            if there is None or there >= here:
                where = "no row" if there is None else f"row {there}, not above row {here}"
                found.append(f"{module} imports {dep} ({where})")
    return found


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
    want = {"mechclaims.loading", "mechclaims.runspec", "mechclaims.organism", "mechclaims.builder.build"}
    assert want <= set(GRAPH)


def test_import_graph_is_acyclic():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_architecture_md_lists_every_module():
    missing = sorted(m for m in GRAPH if not m.endswith(".__main__") and _row(m, ROWS) is None)
    assert not missing, (f"{missing} have no row in ARCHITECTURE.md's module tables: add one (first column "
                         "`name` without `mechclaims.`, on the floor it belongs to, below every module it imports).")
    assert len(FLOORS) >= 4 and len(ROWS) == len(set(ROWS)), "ARCHITECTURE.md: four floors, one row per module"


def test_imports_go_only_to_earlier_rows():
    """ARCHITECTURE.md lists the modules floor by floor (ground floor, engine, claims, front), each
    below what it uses: every import, inside functions too, goes to an earlier row (or within
    its own package)."""
    upward = _upward_imports(GRAPH, ROWS)
    assert not upward, ("imports that go up or sideways in ARCHITECTURE.md's module order (move the row "
                        "of the imported module above the importer, or move the code down a floor):\n"
                        + "\n".join(upward))


def test_the_checker_finds_an_upward_import():
    rows = ["mechclaims.errors", "mechclaims.pkg", "mechclaims.loading", "mechclaims.front"]
    graph = {"mechclaims.errors": set(), "mechclaims.loading": {"mechclaims.errors"},
             "mechclaims.pkg": {"mechclaims.pkg.a"}, "mechclaims.pkg.a": {"mechclaims.pkg.b"},
             "mechclaims.pkg.b": {"mechclaims.errors"}, "mechclaims.front": {"mechclaims.loading", "mechclaims.pkg"},
             "mechclaims.front.__main__": {"mechclaims.front"}}
    assert _upward_imports(graph, rows) == []
    graph["mechclaims.pkg.b"] = {"mechclaims.loading"}  # upward: pkg sits below loading
    graph["mechclaims.loading"] = {"mechclaims.loading2"}  # a module with no row
    graph["mechclaims.errors"] = {"mechclaims.errors"}  # sideways: a row is not below itself
    assert _upward_imports(graph, rows) == [
        "mechclaims.errors imports mechclaims.errors (row 0, not above row 0)",
        "mechclaims.loading imports mechclaims.loading2 (no row)",
        "mechclaims.pkg.b imports mechclaims.loading (row 2, not above row 1)",
    ]


@pytest.mark.parametrize("module", sorted(GROUND_FLOOR))
def test_ground_floor_imports_only_ground_floor(module):
    assert GRAPH[module] <= GROUND_FLOOR, f"{module} imports {sorted(GRAPH[module] - GROUND_FLOOR)}"


def test_library_never_imports_pytest():
    offenders = sorted(n for n, deps in GRAPH.items() if "pytest" in deps and n != "mechclaims.plugin")
    assert offenders == []


def _is_builder(name: str) -> bool:
    return name == "mechclaims.builder" or name.startswith("mechclaims.builder.")


def _is_entry_script(name: str) -> bool:
    return name.endswith(".__main__")


def test_organism_runtime_does_not_import_the_builder():
    runtime = {n for n in GRAPH if (n == "mechclaims.organism" or n.startswith("mechclaims.organism."))
               and not _is_entry_script(n)}
    assert runtime
    for n in runtime:
        assert not any(_is_builder(d) for d in GRAPH[n]), f"{n} imports {sorted(filter(_is_builder, GRAPH[n]))}"


def test_nothing_below_the_builder_imports_it():
    """Outside the builder package, only entry scripts (``__main__`` modules) import it."""
    importers = sorted(n for n, deps in GRAPH.items()
                       if not _is_builder(n) and any(_is_builder(d) for d in deps))
    assert importers == ["mechclaims.organism.__main__"]


def test_the_builder_has_no_second_engine():
    """Issue #11: the organism builder records only what the engine measures; it defines none
    of the engine's measures itself (it once had its own perplexity, generation, value-vector
    cosines and shares, with a different top-k tie rule)."""
    files = sorted((SRC / "builder").glob("*.py"))
    assert files
    defined = set()
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        defined |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    engine_names = {"perplexity", "generate", "greedy_generate", "value_cos", "shares_from_means",
                    "mlp_acts_at_generated", "encode_prompt_batch", "sha256_file", "atomic_write_text",
                    "top_k_by_cos", "attribute", "collect_pair", "loaded_from_hf"}
    assert defined & engine_names == set()
    used = set().union(*(GRAPH[n] for n in GRAPH if _is_builder(n)))
    for module in ("mechclaims.stats", "mechclaims.attribution", "mechclaims.perplexity",
                   "mechclaims.loading", "mechclaims.cache", "mechclaims.scoring"):
        assert module in used, module
