"""Claim packs installed as packages: the entry-point group ``mechclaims.packs``.

A team ships its claims as an ordinary package and names it in its ``pyproject.toml``::

    [project.entry-points."mechclaims.packs"]
    refusal = "acme_claims.packs.refusal"

The value names an importable *package* (no ``:object``) whose ``__init__.py`` declares
``PACK = register_pack(Pack(...))`` and whose directory holds the ``test_*.py`` claim files.
Once the package is installed, ``mechclaims check`` runs its claims with the built-in ones and
``mechclaims packs`` lists it, with its papers.

``installed_packs()`` imports each plug-in's package (never its claim files: pytest collects
those) the first time it is called, not when this module is imported. Anything that goes wrong
in a plug-in (it does not import, its ``__init__`` raises, it has no ``PACK`` or a ``PACK``
that is not a ``Pack``, its directory holds no ``test_*.py``) becomes one ``ConfigError``, one
line naming the entry point and its distribution, what went wrong and what to do: a setup
error (exit status 4), never a traceback from inside the plug-in.

Library code: no pytest import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .claim import Pack, register_pack
from .errors import ConfigError, MechclaimsError

#: The entry-point group through which an installed package adds a claim pack.
PACK_GROUP = "mechclaims.packs"
_HOW = f'[project.entry-points."{PACK_GROUP}"] NAME = "your_package.claims"'
_state: dict = {"installed": None, "error": None}


@dataclass(frozen=True)
class InstalledPack:
    """A pack `mechclaims check` runs: the package holding it and its metadata.

    ``name``: the entry point's name (a built-in pack: its subpackage's name); ``module``: the
    package it names; ``directory``: where its ``test_*.py`` claim files are; ``pack``: the
    ``Pack`` its ``__init__`` declares; ``distribution``: the installed distribution that
    declares the entry point (``"mechclaims"`` for a built-in pack)."""

    name: str
    module: str
    directory: Path
    pack: Pack
    distribution: str = ""
    builtin: bool = False

    @property
    def where(self) -> str:
        """How messages name it: ``refusal = acme_claims.packs.refusal (package acme-claims 1.0)``."""
        if self.builtin:
            return f"{self.module} (built in)"
        return f"{self.name} = {self.module}" + (f" (package {self.distribution})" if self.distribution else "")


def builtin_packs() -> list[InstalledPack]:
    """The packs shipped in ``mechclaims.claims`` (``claims/<pack>/``), in name order."""
    import pkgutil

    from . import claims_dir

    root = claims_dir()
    out = []
    for info in sorted(pkgutil.iter_modules([str(root)]), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"mechclaims.claims.{info.name}")
        pack = getattr(module, "PACK", None)
        if isinstance(pack, Pack):
            out.append(InstalledPack(info.name, module.__name__, root / info.name, pack, "mechclaims", builtin=True))
    return out


def installed_packs(*, force: bool = False) -> list[InstalledPack]:
    """The packs of every installed ``mechclaims.packs`` entry point, in name order, each package
    imported once (``force``: again). A broken plug-in raises one ``ConfigError`` naming it, now
    and on every later call."""
    if _state["installed"] is not None and not force:
        return list(_state["installed"])
    if _state["error"] is not None and not force:
        raise _state["error"]
    from importlib.metadata import entry_points

    _state.update(installed=None, error=None)
    # The built-in packs first, so a plug-in that reuses one of their IDs is refused by name.
    taken = {p.pack.id: p for p in builtin_packs()}
    seen, out = set(), []
    try:
        for ep in sorted(entry_points(group=PACK_GROUP), key=lambda e: (e.name, e.value)):
            if (ep.name, ep.value) in seen:  # one distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            found = _load(ep)
            other = taken.get(found.pack.id)
            if other is not None and other.directory != found.directory:
                raise _error(found.where, f"declares the pack ID {found.pack.id!r}, which {other.where} "
                                          "declares too", "give one of the two packs another ID in its Pack(id=...)")
            if other is None:
                taken[found.pack.id] = found
                out.append(found)
    except ConfigError as exc:
        _state["error"] = exc
        raise
    _state["installed"] = tuple(out)
    return out


def _error(where: str, what: str, todo: str = "fix or uninstall that package") -> ConfigError:
    """One line, whatever a plug-in's own message holds (tracebacks, newlines)."""
    text = f"the claim pack plug-in {where} {what}; {todo} (entry-point group '{PACK_GROUP}')."
    return ConfigError(" ".join(text.split()))


def _load(ep) -> InstalledPack:
    dist = getattr(ep, "dist", None)
    dist_text = f"{dist.name} {dist.version}" if dist is not None else ""
    where = f"{ep.name} = {ep.value}" + (f" (package {dist_text})" if dist_text else "")
    if ep.attr:
        raise _error(where, f"names the object {ep.attr!r} in {ep.module!r}; expected the name of a package "
                            "(the package whose __init__.py declares PACK and whose directory holds test_*.py)",
                     f"write it as {ep.name} = \"{ep.module}\"")
    try:
        module = importlib.import_module(ep.module)
    except MechclaimsError as exc:  # e.g. register_pack refusing its Pack
        raise _error(where, f"was refused while importing: {exc}") from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plug-in's own failure is one setup error
        raise _error(where, f"failed to import ({type(exc).__name__}: {exc})") from exc
    path = list(getattr(module, "__path__", None) or ())
    if not path:
        raise _error(where, f"names the module {getattr(module, '__file__', ep.module)}, not a package; expected a "
                            "package: a directory with an __init__.py declaring PACK and test_*.py claim files")
    directory = Path(path[0])
    pack = getattr(module, "PACK", None)
    if pack is None:
        raise _error(where, f"declares no PACK in {directory / '__init__.py'}; expected "
                            "PACK = register_pack(Pack(id=..., title=..., papers=(Paper(...),))) there "
                            "(mechclaims.claim)", "add it")
    if not isinstance(pack, Pack):
        raise _error(where, f"declares PACK = {pack!r} (a {type(pack).__name__}); expected a mechclaims.claim.Pack",
                     "declare PACK = register_pack(Pack(id=..., title=..., papers=(Paper(...),)))")
    try:
        register_pack(pack)
    except ConfigError as exc:
        raise _error(where, f"declares a pack that was refused: {exc}") from exc
    if not any(directory.rglob("test_*.py")):
        raise _error(where, f"holds no test_*.py claim files in {directory}; expected its @claim tests there",
                     "add them, or point the entry point at the package that holds them")
    return InstalledPack(ep.name, ep.module, directory, pack, dist_text)


def _paper_line(p) -> str:
    ref = ", ".join(x for x in (f"arXiv {p.arxiv}" if p.arxiv else "", p.venue) if x)
    return f'{p.authors}, "{p.title}"' + (f" ({ref})" if ref else "") + (f" {p.code}" if p.code else "")


def packs_text() -> str:
    """``mechclaims packs``: the built-in and installed packs, their papers and directories.
    Raises the ConfigError of a broken plug-in."""
    lines = ["built-in packs (mechclaims):"]
    lines += _describe(builtin_packs())
    installed = installed_packs()
    lines.append(f"installed packs (entry-point group {PACK_GROUP}):")
    if installed:
        lines += _describe(installed)
    else:
        lines.append(f"  none; a package adds one with {_HOW} (docs/extending.md)")
    return "\n".join(lines) + "\n"


def _describe(packs: list[InstalledPack]) -> list[str]:
    out = []
    for p in packs:
        out.append(f"  {p.pack.id}: {p.pack.title}")
        out += [f"    paper: {_paper_line(paper)}" for paper in p.pack.papers]
        out.append(f"    from {p.where}: {p.directory}")
    return out


def packs_help() -> str:
    """One sentence for ``--help``: the pack IDs ``mechclaims check`` runs (and a broken plug-in)."""
    try:
        builtin = ", ".join(p.pack.id for p in builtin_packs())
    except ConfigError:  # a build without mechclaims.claims: claims_dir() says so when a run needs it
        builtin = "none"
    try:
        installed = ", ".join(f"{p.pack.id} ({p.distribution or p.name})" for p in installed_packs()) or "none"
    except ConfigError as exc:
        installed = f"(a claim pack plug-in is broken: {exc})"
    return f"claim packs: built in {builtin}; installed ({PACK_GROUP}) {installed}"
