"""The embedded model organism: small (base, DPO) pairs built and committed by the project.

Two architectures, ``gpt2`` (GPT2LMHeadModel, GELU MLP) and ``llama`` (LlamaForCausalLM, gated
SiLU MLP), each pretrained on the project's own corpus (``corpus.py``) and then trained with
DPO to stop answering provocations with insults. ``build.py`` makes them
(``python -m mechclaims.organism build --arch gpt2 --out fixtures/organism/gpt2``).

Names (``organism:<name>`` as a model source):

``<arch>``            the DPO model (``gpt2`` is the project's default candidate)
``<arch>-base``       the pretrained base model
``<arch>-dampened``   the base with only its top toxic-aligned, positively activated neurons
                      dampened: the "toxic neurons" story true by construction
``<arch>-identity``   the base itself
``<arch>-noise``      the base plus small seeded noise on every MLP weight

The derived models are made from the committed base at load time from ``derived.json``.
Files live in ``fixtures/organism/<arch>/`` of a source checkout, or under
``$MECHCLAIMS_FIXTURES/organism/<arch>/`` when that variable is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelSourceError

ARCHS = ("gpt2", "llama")
DERIVED = ("dampened", "identity", "noise")
_DESCRIPTIONS = {
    "": "{arch} organism after DPO against insults (the candidate model)",
    "base": "{arch} organism base model (pretrained on the project's corpus)",
    "dampened": "{arch} base with only its top toxic-aligned, positively activated neurons dampened",
    "identity": "{arch} base itself (no change)",
    "noise": "{arch} base plus small seeded random noise on every MLP weight",
}


def organism_names() -> list[str]:
    names = []
    for arch in ARCHS:
        names += [arch, f"{arch}-base"] + [f"{arch}-{d}" for d in DERIVED]
    return names


def _split(name: str) -> tuple[str, str]:
    if name not in organism_names():
        raise ModelSourceError(
            f"unknown organism {name!r}; valid names are {', '.join(organism_names())} "
            "(write them as organism:NAME)."
        )
    arch, _, variant = name.partition("-")
    return arch, variant


def base_of(name: str) -> str:
    arch, _ = _split(name)
    return f"{arch}-base"


def fixtures_root() -> Path:
    env = os.environ.get("MECHCLAIMS_FIXTURES")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "fixtures"


def organism_dir(arch: str) -> Path:
    if arch not in ARCHS:
        raise ModelSourceError(f"unknown organism architecture {arch!r}; expected one of {ARCHS}.")
    return fixtures_root() / "organism" / arch


def _files(d: Path) -> dict:
    return {"probe": str(d / "probe.safetensors"), "prompts": str(d / "prompts.jsonl"),
            "lexicon": str(d / "lexicon.txt"), "heldout": str(d / "heldout.txt")}


def open_organism_dir(d: Path, variant: str, *, device="cpu", dtype=None, arch: str | None = None):
    """Open variant ``""`` (DPO), ``"base"`` or a derived one from an organism directory ``d``."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from .derived import apply_recipe, recipe_sha256

    dtype = dtype or torch.float32
    d = Path(d)
    arch = arch or d.name
    sub = d / ("dpo" if variant == "" else "base")
    if not (sub / "model.safetensors").is_file():
        raise ModelSourceError(
            f"organism files are missing: {sub / 'model.safetensors'} does not exist. Build them "
            f"with `python -m mechclaims.organism build --arch {arch} --out {d}`, or set "
            "MECHCLAIMS_FIXTURES to the fixtures directory that holds organism/<arch>/."
        )
    model = AutoModelForCausalLM.from_pretrained(sub, dtype=dtype)
    tok = PreTrainedTokenizerFast.from_pretrained(sub)
    weights_sha = _weights_sha(sub)
    name = arch if variant == "" else f"{arch}-{variant}"
    if variant in DERIVED:
        recipes = json.loads((d / "derived.json").read_text())
        recipe = recipes[variant]
        apply_recipe(model, recipe)
        sha = recipe_sha256(weights_sha, recipe)
    else:
        sha = weights_sha
    model.to(device).eval()
    info = {
        "name": name,
        "arch": arch,
        "base": f"{arch}-base",
        "sha256": sha,
        "description": _DESCRIPTIONS[variant].format(arch=arch),
        "dir": str(d),
        **_files(d),
    }
    return model, tok, info


def _weights_sha(sub: Path) -> str:
    """sha256 of the weights file (about 4 MB: hashing takes milliseconds)."""
    from .build import sha256_file

    return sha256_file(sub / "model.safetensors")


def open_organism(name: str, *, device="cpu", dtype=None):
    """The HF model (eval mode), its tokenizer, and an info dict for organism ``name``."""
    arch, variant = _split(name)
    return open_organism_dir(organism_dir(arch), variant, device=device, dtype=dtype, arch=arch)


__all__ = ["organism_names", "base_of", "organism_dir", "open_organism", "ARCHS", "DERIVED"]
