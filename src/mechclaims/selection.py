"""Which claims a run computes, and in what order: the thresholds a configuration overrides,
the preconditions a selected claim rests on (computed even when ``-k`` deselected them), and the
order reports list claims in (pack by pack, by number within a pack)."""

from __future__ import annotations

from .claim import REGISTRY, ClaimSpec
from .errors import ConfigError


def apply_thresholds(specs: dict[str, ClaimSpec], thresholds) -> dict[str, ClaimSpec]:
    """Return specs with the configured overrides; unknown IDs or checks are a ConfigError. A
    threshold for a declared claim that this run does not select (``-k``) is checked, not applied."""
    out = dict(specs)
    for cid, checks in thresholds.items():
        spec = specs.get(cid) or REGISTRY.get(cid)
        if spec is None:
            raise ConfigError(f"threshold given for unknown claim {cid!r}; known claims: "
                              f"{sorted(set(specs) | set(REGISTRY), key=id_key)}.")
        checks = dict(checks)
        if "*" in checks:
            free = [c for c in spec.checks if not c.fixed]  # the checks a bare number can mean
            if len(free) != 1:
                raise ConfigError(
                    f"claim {cid} has several checks {[c.name for c in spec.checks]}; override one "
                    f"by name, e.g. {cid}.{spec.checks[0].name} = ... or {cid} = {{ {spec.checks[0].name} = ... }}.")
            checks[free[0].name] = checks.pop("*")
        spec = spec.with_thresholds(checks)
        if cid in specs:
            out[cid] = spec
    return out


def with_preconditions(specs: dict[str, ClaimSpec]) -> tuple[dict[str, ClaimSpec], set[str]]:
    """The selected specs plus every declared precondition they need (transitively); and the IDs
    added only as preconditions. A precondition whose claim was not collected is left out (the
    claims that need it say so)."""
    out, extra = dict(specs), set()
    todo = [r for s in specs.values() for r in s.preconditions]
    if any(cid not in REGISTRY for cid in todo):
        _import_builtin_claims()  # a run of one claim file (-k, a path) still has its preconditions
    while todo:
        cid = todo.pop()
        if cid in out or cid not in REGISTRY:
            continue
        out[cid] = REGISTRY[cid]
        extra.add(cid)
        todo.extend(REGISTRY[cid].preconditions)
    return out, extra


def _import_builtin_claims() -> None:
    """Import the built-in claim modules (``mechclaims.claims``), which fills ``REGISTRY``."""
    import importlib
    import pkgutil

    try:
        pkg = importlib.import_module("mechclaims.claims")
    except ImportError:  # pragma: no cover - a build without the claims package
        return
    for info in pkgutil.walk_packages(pkg.__path__, prefix="mechclaims.claims."):
        if info.name.rsplit(".", 1)[-1].startswith("test_") or info.ispkg:
            importlib.import_module(info.name)


def claim_order(spec: ClaimSpec):
    """Reports list claims pack by pack (in the order packs were declared), by ID within one."""
    from .claim import PACKS

    packs = list(PACKS)
    return (packs.index(spec.pack) if spec.pack in packs else len(packs), id_key(spec.id))


def id_key(cid: str):
    """Claims sort by number: C2 before C10."""
    digits = "".join(ch for ch in cid if ch.isdigit())
    return (int(digits) if digits else 10**9, cid)
