"""One frozen configuration for a claim run, from pytest options, a TOML file and pyproject.

Precedence: command line > ``--claims-config`` file > ``[tool.mechclaims]`` in the
``pyproject.toml`` of the rootdir > defaults. Keys are the option names with underscores
(``max_new_tokens``), plus ``[thresholds]`` keyed by claim ID::

    [tool.mechclaims]
    positions = "shared"
    bootstrap = 500
    [tool.mechclaims.thresholds]
    C3 = 0.15                       # a claim with one check
    C6 = { min_share = 0.03 }       # a claim with several checks, by check name
    "C8.frac_negative" = 0.25       # or dotted
    [tool.mechclaims.regression]    # tolerances against --baseline, same keys
    C3 = 0.02

A ``--claims-config`` file may hold the settings at its top level instead (``bootstrap = 500``,
``[thresholds]``); a file with a ``[tool.mechclaims]`` table is read from that table alone, so
settings beside it at the top level are refused, never dropped.

``bootstrap`` is the number of resamples for the 95% intervals: ``0`` means no interval (point
estimates only; the gate's interval reading then finds every resampled check inconclusive), else
at least ``MIN_BOOTSTRAP`` (20). Why 20: a 95% percentile interval leaves 5% of the resamples
outside it, and 20 = 1 / 0.05 is the fewest resamples for which that is one whole resample;
below it both ends are interpolations between the one or two most extreme draws, so the
"interval" is the spread of a handful of draws, not a 95% interval. 20 is a floor, not a
recommendation: the default is 200.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .choices import DTYPES, PATCH_POSITIONS, POSITION_MODES
from .verdicts import READINGS
from .devices import device_map_text, parse_device_map
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_ORGANISM = "gpt2"


@dataclass(frozen=True)
class ClaimsConfig:
    """Every setting of a claim run, as the user gave it (options, ``[tool.mechclaims]``,
    ``--claims-config``); frozen, and checked for types and ranges by ``build_config``."""

    model: str = f"organism:{DEFAULT_ORGANISM}"
    base: str = ""
    probe: str = ""
    prompts: str = ""
    max_new_tokens: int = 20
    max_prompt_tokens: int = 32
    positions: str = "own"
    device: str = "cpu"
    # Accelerate device map for a model larger than one device ("auto", "balanced", ... or a JSON
    # object of module -> device); "" = the whole model on ``device``. Canonical string form.
    device_map: str = ""
    dtype: str = "float32"
    # None: 32 on a CPU; on CUDA, chosen from free memory once the models are loaded
    # (``devices.resolve_batch_size``). Batch size never changes a result beyond the last bits.
    batch_size: int | None = None
    cache_dir: str | None = None
    report: str = "reports/claims.html"
    strict: bool = False
    bootstrap: int = 200
    seed: int = 0
    top_k: int = 128
    scorer: str = "auto"
    ppl_text: str = ""
    patch_positions: str = "generated"
    edit_alpha: float = 0.05
    edit_beta: float = 0.5
    baseline: str = ""
    #: How verdicts read a check (``verdicts.READINGS``): "auto" is resolved by the entry point
    #: (the interval reading for ``-m gate`` and strict runs, the point estimate otherwise).
    reading: str = "auto"
    #: Claim IDs whose failure is accepted (reported as a known failure, pytest xfail); a
    #: regression against --baseline still fails them.
    accepted: tuple[str, ...] = ()
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))
    regression: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def json_report(self) -> Path:
        return Path(self.report).with_suffix(".json")

    def public(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TABLES}
        for name in _TABLES:
            d[name] = {k: dict(v) for k, v in getattr(self, name).items()}
        return d


_FIELDS = {f.name: f for f in fields(ClaimsConfig)}
#: Tables keyed by claim ID (and check name): thresholds, and regression tolerances against a baseline.
_TABLES = ("thresholds", "regression")
_CHOICES = {"positions": POSITION_MODES, "dtype": DTYPES, "patch_positions": PATCH_POSITIONS, "reading": READINGS}


_MINIMUM = {"max_new_tokens": 1, "max_prompt_tokens": 1, "batch_size": 1, "bootstrap": 0, "top_k": 1, "seed": 0}
#: The fewest bootstrap resamples that make a 95% interval (0: none); see the module docstring.
MIN_BOOTSTRAP = 20


def _coerce(name: str, value, origin: str):
    if name not in _FIELDS:
        raise ConfigError(f"unknown mechclaims setting {name!r} in {origin}; known settings: "
                          f"{sorted(_FIELDS)}.")
    default = getattr(ClaimsConfig(), name)
    if name in _TABLES:
        return value
    if name == "accepted":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"setting accepted in {origin} must be a list of claim IDs such as [\"C5\", \"C14\"], "
                              f"got {value!r}.")
        return tuple(i.strip() for i in items if i.strip())
    if name == "batch_size":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
            return None
        value = _integer(name, value, origin)
        if value < 1:
            raise ConfigError(f"setting batch_size in {origin} must be at least 1 (or \"auto\"), got {value}.")
        return value
    if name == "device_map":
        try:
            return device_map_text(parse_device_map(value))
        except ConfigError as exc:
            raise ConfigError(f"setting device_map in {origin}: {exc}") from exc
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"setting {name} in {origin} must be true or false, got {value!r}.")
            value = value.lower() in ("1", "true", "yes")
        return bool(value)
    if isinstance(default, int):
        value = _integer(name, value, origin)
        if value < _MINIMUM.get(name, value):
            raise ConfigError(f"setting {name} in {origin} must be at least {_MINIMUM[name]}, got {value}.")
        if name == "bootstrap" and 0 < value < MIN_BOOTSTRAP:
            raise ConfigError(
                f"setting bootstrap in {origin} is {value} resamples, too few for a 95% interval: give at least "
                f"{MIN_BOOTSTRAP} (the default is 200), or 0 for no interval (point estimates only).")
        return value
    if isinstance(default, float):
        return _finite(value, f"setting {name} in {origin}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"setting {name} in {origin} must be one of {_CHOICES[name]}, got {value!r}.")
    return value


def _integer(name: str, value, origin: str) -> int:
    """A whole number: ``2.7`` or ``"2.7"`` is an error, not 2."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if isinstance(value, bool) or not math.isfinite(f) or f != int(f):
        raise ConfigError(f"setting {name} in {origin} must be a whole number, got {value!r}.")
    return int(f)


def _finite(value, what: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if isinstance(value, bool) or not math.isfinite(f):
        raise ConfigError(f"{what} must be a finite number, got {value!r}.")
    return f


def read_toml_settings(path: str | Path, *, section_optional: bool = True) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"claims config {str(path)!r} {'is a directory' if p.is_dir() else 'does not exist'} "
                          f"(looked at {p.resolve()}); expected a TOML file.")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); TOML files are UTF-8. "
                          "Re-save the file as UTF-8.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc}).") from exc
    tool = data.get("tool")
    tool = tool.get("mechclaims") if isinstance(tool, dict) else None
    if tool is not None and not isinstance(tool, dict):
        raise ConfigError(f"{p}: tool.mechclaims is {tool!r}; expected a table ([tool.mechclaims] with one "
                          "setting per line).")
    if tool is not None and section_optional:
        # A [tool.mechclaims] table is read alone: a setting beside it at the top level (a
        # [thresholds] table, bootstrap = ...) would be dropped without a word, so refuse the mix.
        stray = sorted(k for k in data if k in _FIELDS)
        if stray:
            named = ", ".join(f"[{k}]" if isinstance(data[k], dict) else k for k in stray)
            moved = ", ".join(f"[tool.mechclaims.{k}]" if isinstance(data[k], dict) else f"{k} under [tool.mechclaims]"
                              for k in stray)
            raise ConfigError(
                f"{p} holds both a [tool.mechclaims] table and mechclaims settings at its top level ({named}); "
                f"only [tool.mechclaims] would be read and {named} silently dropped. Move them ({moved}), or drop "
                "[tool.mechclaims] and keep every setting at the top level.")
    return dict(tool) if tool is not None else (dict(data) if section_optional else {})


def normalise_thresholds(raw: Mapping[str, Any], origin: str) -> dict[str, dict[str, float]]:
    """{"C3": 0.1, "C6": {"min_share": 0.03}, "C8.frac_negative": 0.25} ->
    {"C3": {"*": 0.1}, "C6": {"min_share": 0.03}, "C8": {"frac_negative": 0.25}}."""
    out: dict[str, dict[str, float]] = {}
    for key, val in (raw or {}).items():
        cid, _, check = str(key).partition(".")
        if isinstance(val, Mapping):
            for ck, cv in val.items():
                out.setdefault(cid, {})[str(ck)] = _finite(cv, f"threshold {key}.{ck} in {origin}")
        else:
            out.setdefault(cid, {})[check or "*"] = _finite(val, f"threshold {key} in {origin}")
    return out


def build_config(cli: Mapping[str, Any], *, claims_config: str | None = None,
                 pyproject: str | Path | None = None) -> ClaimsConfig:
    """Merge the layers into one frozen config (no file is opened but the TOML ones; sources,
    probe and prompts are resolved by ``runspec.resolve_run``)."""
    merged: dict[str, Any] = {}
    tables: dict[str, dict[str, dict[str, float]]] = {name: {} for name in _TABLES}
    layers = []
    if pyproject and Path(pyproject).is_file():
        layers.append((read_toml_settings(pyproject, section_optional=False), str(pyproject)))
    if claims_config:
        layers.append((read_toml_settings(claims_config), str(claims_config)))
    layers.append(({k: v for k, v in cli.items() if v is not None}, "the command line"))
    for values, origin in layers:
        for name, value in values.items():
            if name in _TABLES:
                for cid, checks in normalise_thresholds(value, f"[{name}] of {origin}").items():
                    tables[name].setdefault(cid, {}).update(checks)
                continue
            merged[name] = _coerce(name, value, origin)
    for name, table in tables.items():
        merged[name] = MappingProxyType({k: MappingProxyType(v) for k, v in table.items()})
    return ClaimsConfig(**merged)
