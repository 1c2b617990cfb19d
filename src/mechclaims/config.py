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
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .errors import MechclaimsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_ORGANISM = "gpt2"


class ConfigError(MechclaimsError):
    """A claim-run option or threshold that is unknown or malformed."""


@dataclass(frozen=True)
class ClaimsConfig:
    model: str = f"organism:{DEFAULT_ORGANISM}"
    base: str = ""
    probe: str = ""
    prompts: str = ""
    max_new_tokens: int = 20
    max_prompt_tokens: int = 32
    positions: str = "own"
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 32
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
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def json_report(self) -> Path:
        return Path(self.report).with_suffix(".json")

    def public(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "thresholds"}
        d["thresholds"] = {k: dict(v) for k, v in self.thresholds.items()}
        return d


_FIELDS = {f.name: f for f in fields(ClaimsConfig)}
_CHOICES = {"positions": ("own", "shared"), "dtype": ("float32", "bfloat16", "float16", "float64"),
            "patch_positions": ("generated", "all")}


def _coerce(name: str, value, origin: str):
    if name not in _FIELDS:
        raise ConfigError(f"unknown mechclaims setting {name!r} in {origin}; known settings: "
                          f"{sorted(_FIELDS)}.")
    default = getattr(ClaimsConfig(), name)
    try:
        if name == "thresholds":
            return value
        if isinstance(default, bool):
            if isinstance(value, str):
                value = value.lower() in ("1", "true", "yes")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name} in {origin} must be a number, got {value!r}.") from exc
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"setting {name} in {origin} must be one of {_CHOICES[name]}, got {value!r}.")
    return value


def read_toml_settings(path: str | Path, *, section_optional: bool = True) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"claims config {str(path)!r} does not exist (looked at {p.resolve()}).")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc}).") from exc
    tool = data.get("tool", {}).get("mechclaims")
    return dict(tool) if tool is not None else (dict(data) if section_optional else {})


def normalise_thresholds(raw: Mapping[str, Any], origin: str) -> dict[str, dict[str, float]]:
    """{"C3": 0.1, "C6": {"min_share": 0.03}, "C8.frac_negative": 0.25} ->
    {"C3": {"*": 0.1}, "C6": {"min_share": 0.03}, "C8": {"frac_negative": 0.25}}."""
    out: dict[str, dict[str, float]] = {}
    for key, val in (raw or {}).items():
        cid, _, check = str(key).partition(".")
        try:
            if isinstance(val, Mapping):
                for ck, cv in val.items():
                    out.setdefault(cid, {})[str(ck)] = float(cv)
            else:
                out.setdefault(cid, {})[check or "*"] = float(val)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"threshold {key} in {origin} must be a number, got {val!r}.") from exc
    return out


def build_config(cli: Mapping[str, Any], *, claims_config: str | None = None,
                 pyproject: str | Path | None = None) -> ClaimsConfig:
    """Merge the layers and resolve the organism defaults (base, probe, prompts)."""
    merged: dict[str, Any] = {}
    thresholds: dict[str, dict[str, float]] = {}
    layers = []
    if pyproject and Path(pyproject).is_file():
        layers.append((read_toml_settings(pyproject, section_optional=False), str(pyproject)))
    if claims_config:
        layers.append((read_toml_settings(claims_config), str(claims_config)))
    layers.append(({k: v for k, v in cli.items() if v is not None}, "the command line"))
    for values, origin in layers:
        for name, value in values.items():
            if name == "thresholds":
                for cid, checks in normalise_thresholds(value, origin).items():
                    thresholds.setdefault(cid, {}).update(checks)
                continue
            merged[name] = _coerce(name, value, origin)
    merged["thresholds"] = MappingProxyType({k: MappingProxyType(v) for k, v in thresholds.items()})
    return _resolve_defaults(ClaimsConfig(**merged))


def _resolve_defaults(cfg: ClaimsConfig) -> ClaimsConfig:
    from dataclasses import replace

    model = cfg.model
    if model.startswith("organism:"):
        from . import organism

        name = model[len("organism:"):]
        base = cfg.base or f"organism:{organism.base_of(name)}"
        arch = organism.base_of(name).split("-")[0]
        d = organism.organism_dir(arch)
        probe = cfg.probe or str(d / "probe.safetensors")
        prompts = cfg.prompts or str(d / "prompts.jsonl")
        scorer = f"lexicon:{d / 'lexicon.txt'}" if cfg.scorer == "auto" else cfg.scorer
        ppl_text = cfg.ppl_text or str(d / "heldout.txt")
        return replace(cfg, base=base, probe=probe, prompts=prompts, scorer=scorer, ppl_text=ppl_text)
    missing = [opt for opt, val in (("--base", cfg.base), ("--probe", cfg.probe), ("--prompts", cfg.prompts))
               if not val]
    if missing:
        raise ConfigError(
            f"--model {model!r} is not an organism, so {', '.join(missing)} must be given: the "
            "base checkpoint it was fine-tuned from, a probe direction for its d_model, and the "
            "prompts to generate from (e.g. RealToxicityPrompts' challenge subset as .jsonl)."
        )
    return cfg
