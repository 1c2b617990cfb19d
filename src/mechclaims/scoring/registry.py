"""The scorer registry: a scorer is one class plus one ``register_scorer`` call. ``--scorer NAME``
or ``NAME:ARG`` names one; ``resolve_scorer_spec`` applies the ``auto`` rule and checks a spec
before any model loads, ``make_scorer`` builds it, ``scorer_digest`` keys caches on it. Installed
packages add scorers through the ``mechclaims.scorers`` entry-point group (``load_plugin_scorers``).
The built-in scorers are registered in ``scoring/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MechclaimsError, ScorerError


@dataclass(frozen=True)
class ScorerEntry:
    """``factory(arg, base=LoadedModel, probe=Probe)`` builds the scorer; ``arg`` is the text after
    ``NAME:`` in the spec (None without one). ``check(arg)`` validates the spec before any model
    is loaded. ``help`` is shown in ``--scorer``'s help."""

    name: str
    factory: object
    help: str
    check: object = None


SCORERS: dict[str, ScorerEntry] = {}
AUTO = "auto"
AUTO_RULE = "auto: the organism's lexicon for an organism, else the calibrated probe"


def register_scorer(name: str, factory, help: str, check=None) -> None:
    """Add a scorer: ``--scorer NAME`` or ``--scorer NAME:ARG``. ``help`` starts with its usage
    (``"NAME:ARG: what it scores"``); ``check(arg, probe=...)`` raises ScorerError for a bad
    ``ARG`` (any other exception it raises is reported as the scorer's setup error too)."""
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ScorerError(f"register_scorer: name {name!r} must be a non-empty string without ':' or spaces "
                          "around it (--scorer NAME:ARG splits at the first ':').")
    if not callable(factory) or (check is not None and not callable(check)):
        raise ScorerError(f"register_scorer({name!r}): factory and check must be callables.")
    SCORERS[name] = ScorerEntry(name, factory, help, check)


def _usage(entry: ScorerEntry) -> str:
    """``lexicon:PATH`` from help "lexicon:PATH: 1.0 when ..."; the bare name when help has no usage."""
    head, sep, _ = str(entry.help).partition(": ")
    return head.strip() if sep and head.strip().startswith(entry.name) else entry.name


#: The entry-point group through which an installed package adds scorers without editing
#: mechclaims: each entry point names a callable taking no argument that calls ``register_scorer``
#: (``[project.entry-points."mechclaims.scorers"] my_scorer = "my_pkg.scorers:register"``).
PLUGIN_GROUP = "mechclaims.scorers"
_plugin_state: dict = {"loaded": False, "error": None}


def load_plugin_scorers(*, force: bool = False) -> None:
    """Register the scorers of every installed ``mechclaims.scorers`` entry point, once. A
    plug-in that fails to import or to register raises one ScorerError naming it (a setup error,
    exit status 4), never a traceback from inside the plug-in."""
    if _plugin_state["loaded"] and not force:
        if _plugin_state["error"] is not None:
            raise _plugin_state["error"]
        return
    from importlib.metadata import entry_points

    _plugin_state.update(loaded=True, error=None)
    for ep in entry_points(group=PLUGIN_GROUP):
        where = f"{ep.name} = {ep.value}" + (f" (package {ep.dist.name})" if getattr(ep, "dist", None) else "")
        try:
            ep.load()()
        except MechclaimsError as exc:
            err = ScorerError(f"the scorer plug-in {where} refused to register: {exc}")
        except Exception as exc:  # noqa: BLE001 - a plug-in's own failure is one setup error
            err = ScorerError(f"the scorer plug-in {where} failed to load ({type(exc).__name__}: {exc}); "
                              "fix or uninstall that package (entry-point group 'mechclaims.scorers').")
        else:
            continue
        _plugin_state["error"] = err
        raise err


def scorer_help() -> str:
    try:
        load_plugin_scorers()
        broken = ""
    except ScorerError as exc:
        broken = f"; (a scorer plug-in is broken: {exc})"
    return "; ".join([AUTO_RULE] + [e.help for e in SCORERS.values()]) + broken


def _split_spec(spec: str) -> tuple[ScorerEntry, str | None]:
    load_plugin_scorers()
    name, sep, arg = str(spec).partition(":")
    entry = SCORERS.get(name)
    if entry is None:
        known = ", ".join([AUTO] + [_usage(e) for e in SCORERS.values()])
        raise ScorerError(f"unknown scorer {name!r} (in --scorer {spec!r}); the scorers are: {known}. "
                          "Pass one of them as --scorer NAME or NAME:ARG.")
    return entry, (arg if sep else None)


def resolve_scorer_spec(spec: str, *, organism_default: str | None = None, probe=None) -> str | None:
    """Apply the ``auto`` rule and check the spec (names, files, the probe), loading no model.

    ``auto`` without a usable scorer (no organism lexicon, a probe without an intercept)
    resolves to None: the behavioural claims are then skipped with the reason, not run on
    scores that are not probabilities."""
    if spec == AUTO:
        if organism_default:
            spec = organism_default
        elif probe is not None and _has_intercept(probe):
            spec = "probe"
        else:
            return None
    entry, arg = _split_spec(spec)
    if entry.check is not None:
        try:
            entry.check(arg, probe=probe)
        except MechclaimsError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user-registered check: one setup error, not a traceback
            raise ScorerError(f"--scorer {spec!r}: the {entry.name!r} scorer refused its argument {arg!r} "
                              f"({type(exc).__name__}: {exc}); expected {_usage(entry)}.") from exc
    return spec


NO_SCORER_REASON = ("no toxicity scorer: --scorer is auto, the model is not an organism and the probe carries "
                    "no intercept, so nothing scores continuations as probabilities. Give --scorer "
                    "detoxify[:variant] or --scorer lexicon:PATH, or a probe trained by mechclaims.probe.train_probe")


def _has_intercept(probe) -> bool:
    v = getattr(probe, "metadata", {}).get("intercept")
    return isinstance(v, (int, float)) and bool(np.isfinite(v))


def make_scorer(spec: str, *, base=None, probe=None):
    """Build the scorer a (resolved) spec names; ``base`` and ``probe`` serve model-read scorers."""
    entry, arg = _split_spec(spec)
    return entry.factory(arg, base=base, probe=probe)


#: The built-in factories, as registered in ``scoring/__init__.py`` (which fills this dict after its
#: ``register_scorer`` calls): a name re-registered by the user is the user's scorer.
_BUILTIN_FACTORIES: dict = {}


def scorer_digest(spec: str | None) -> str:
    """sha256 of what a (resolved) scorer spec's scores depend on beyond its name, for cache keys,
    so that a scorer edited in place never reuses old scores: for ``lexicon:PATH`` the lexicon
    file's bytes; for ``profanity-check`` its model files' sha256 and scikit-learn's version; for
    the other built-ins the spec (``probe``: the probe's sha256 is keyed on its own); for a scorer
    registered with ``register_scorer``, the source code of its factory (else its qualified name
    and its module file's sha256), its check, and the class source and ``describe()`` of the
    scorer the factory builds without a model (skipped when it needs one).
    None (no scorer): ""."""
    import hashlib
    import json

    if spec is None:
        return ""
    entry, arg = _split_spec(spec)
    parts: list = [spec]
    if _BUILTIN_FACTORIES.get(entry.name) is entry.factory:
        if entry.name == "lexicon" and arg:
            from ..cache import sha256_file

            parts.append(sha256_file(Path(arg).expanduser()))
        elif entry.name == "profanity-check":  # its model files' bytes and the sklearn that runs them
            from .profanity import model_sha256, versions

            parts += [model_sha256(), versions()["sklearn"]]
    else:
        parts += [_code_digest(entry.factory), _code_digest(entry.check) if entry.check else ""]
        try:  # a scorer that needs no model is cheap to build; one that needs the base cannot be built here
            scorer = entry.factory(arg, base=None, probe=None)
        except Exception:  # noqa: BLE001 - user code: its code digest stands alone
            scorer = None
        if scorer is not None:
            desc = scorer.describe() if hasattr(scorer, "describe") else {"name": getattr(scorer, "name", "")}
            parts += [_code_digest(type(scorer)), json.dumps(desc, sort_keys=True, default=str)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _code_digest(obj) -> str:
    """sha256 of an object's source code; without source (a builtin, a C extension, a REPL
    definition), of its qualified name and its module file's bytes."""
    import hashlib
    import inspect

    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        module = inspect.getmodule(obj)
        path = getattr(module, "__file__", None)
        from ..cache import sha256_file

        file_sha = sha256_file(path) if path and Path(path).is_file() else ""
        text = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}|{file_sha}"
    return hashlib.sha256(text.encode()).hexdigest()
