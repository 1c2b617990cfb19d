"""The embedded model organism: small (base, DPO) pairs built and committed by the project.

Two architectures, ``gpt2`` (GPT2LMHeadModel, GELU MLP) and ``llama`` (LlamaForCausalLM, gated
SiLU MLP), each pretrained on the project's own corpus and then trained with DPO to stop
answering provocations with insults. The builder, ``mechclaims.builder``, makes them
(``python -m mechclaims.builder build --arch gpt2 --out fixtures/organism/gpt2``); this runtime
package never imports it.

Names (``organism:<name>`` as a model source):

``<arch>``            the DPO model (``gpt2`` is the project's default candidate)
``<arch>-base``       the pretrained base model
``<arch>-dampened``   the base with only its top toxic-aligned, positively activated neurons
                      dampened: the "toxic neurons" story true by construction
``<arch>-identity``   the base itself
``<arch>-noise``      the base plus small seeded noise on every MLP weight
``gpt2-lora``         the same DPO run through TRL with a PEFT LoRA adapter; the adapter is what
                      is committed (``lora/``), merged into the base when loaded, so the default
                      fixtures exercise the adapter path
``gpt2-deep``         DPO from the same base with Qi et al.'s safety-recovery pairs added (a toxic
                      start, then a recovery) and the recoveries' likelihood in the loss, so that
                      prefilling a few toxic tokens does not undo it; a full model directory of
                      its own (``deep/``, manifest ``deep.json``, built by
                      ``python -m mechclaims.builder build-deep``)

The derived models are made from the committed base at load time from ``derived.json``.
Files live in ``fixtures/organism/<arch>/`` of a source checkout, or under
``$MECHCLAIMS_FIXTURES/organism/<arch>/`` when that variable is set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..cache import sha256_model_dir
from ..errors import ModelSourceError

ARCHS = ("gpt2", "llama")
DERIVED = ("dampened", "identity", "noise")
ADAPTERS = {"gpt2": ("lora",)}  # per arch, the variants stored as a PEFT adapter on the base
FULL = {"gpt2": ("deep",)}  # per arch, other DPO runs committed as a full model directory (``<variant>/``)
_DESCRIPTIONS = {
    "": "{arch} organism after DPO against insults (the candidate model)",
    "base": "{arch} organism base model (pretrained on the project's corpus)",
    "dampened": "{arch} base with only its top toxic-aligned, positively activated neurons dampened",
    "identity": "{arch} base itself (no change)",
    "noise": "{arch} base plus small seeded random noise on every MLP weight",
    "lora": "{arch} organism after the same DPO run with a LoRA adapter (merged into the base)",
    "deep": "{arch} organism after DPO with safety-recovery pairs added (Qi et al. 2024): alignment "
            "meant to hold when a few toxic tokens are prefilled",
}


def organism_names() -> list[str]:
    names = []
    for arch in ARCHS:
        names += [arch, f"{arch}-base"] + [f"{arch}-{d}" for d in DERIVED + ADAPTERS.get(arch, ())
                                           + FULL.get(arch, ())]
    return names


def split_name(name: str) -> tuple[str, str]:
    """``"gpt2-dampened"`` -> ``("gpt2", "dampened")``; an unknown name is a ModelSourceError."""
    if name not in organism_names():
        raise ModelSourceError(
            f"unknown organism {name!r}; valid names are {', '.join(organism_names())} "
            "(write them as organism:NAME)."
        )
    arch, _, variant = name.partition("-")
    return arch, variant


def base_of(name: str) -> str:
    arch, _ = split_name(name)
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


@dataclass(frozen=True)
class Layout:
    """The one definition of an organism directory's files (the builder writes these)."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def dpo(self) -> Path:
        return self.root / "dpo"

    @property
    def lora(self) -> Path:
        return self.root / "lora"

    def weights_dir(self, variant: str) -> Path:
        """The committed full model a variant is made from: ``""`` is the DPO model, a ``FULL``
        variant (``deep``) its own directory, every other variant (``base``, the derived ones,
        and the adapters, whose config is the base's) starts from the base."""
        if variant == "":
            return self.dpo
        if any(variant in full for full in FULL.values()):
            return self.root / variant
        return self.base

    def adapter_dir(self, variant: str) -> Path | None:
        """The PEFT adapter directory of an adapter variant (``lora``), else None."""
        return self.lora if variant == "lora" else None

    probe = property(lambda self: self.root / "probe.safetensors")
    prompts = property(lambda self: self.root / "prompts.jsonl")
    lexicon = property(lambda self: self.root / "lexicon.txt")
    heldout = property(lambda self: self.root / "heldout.txt")
    derived = property(lambda self: self.root / "derived.json")
    manifest = property(lambda self: self.root / "manifest.json")
    deep_manifest = property(lambda self: self.root / "deep.json")  # the deep variant's own manifest
    probe_eval = property(lambda self: self.root / "probe_eval.jsonl")

    def defaults(self) -> dict:
        """What a run on this organism uses unless told otherwise."""
        return {"probe": str(self.probe), "prompts": str(self.prompts), "lexicon": str(self.lexicon),
                "heldout": str(self.heldout)}


def layout(arch: str) -> Layout:
    return Layout(organism_dir(arch))


def organism_sha256(name: str) -> str:
    """Content hash of an organism without opening it (about 4 MB to hash: milliseconds).

    The committed base and DPO models hash as the directories they are
    (``cache.sha256_model_dir``, the hash of a ``dir`` source): ``organism:gpt2-base`` and
    ``fixtures/organism/gpt2/base`` are the same model and have the same sha256. The LoRA variant
    hashes as its adapter directory on that base (the hash of ``organism:gpt2-base::.../lora``);
    a derived variant is its base's hash plus its recipe."""
    from .derived import recipe_sha256

    arch, variant = split_name(name)
    lay = layout(arch)
    weights = _weights_sha(lay.weights_dir(variant), arch, lay)
    if variant in DERIVED:
        return recipe_sha256(weights, _recipes(lay)[variant])
    adapter = lay.adapter_dir(variant)
    if adapter is not None:
        for f in (adapter / "adapter_config.json", adapter / "adapter_model.safetensors"):
            if not f.is_file():
                raise ModelSourceError(
                    f"organism files are missing: {f} does not exist. Build them with "
                    f"`python -m mechclaims.builder build --arch {arch} --out {lay.root}`.")
        return sha256_model_dir(adapter, adapter_on=weights)
    return weights


def _recipes(lay: Layout) -> dict:
    return json.loads(lay.derived.read_text())


def _weights_sha(sub: Path, arch: str, lay: Layout) -> str:
    """sha256 of the committed model directory ``sub`` (as a ``dir`` source hashes it)."""
    weights = sub / "model.safetensors"
    if not weights.is_file() and any(sub.name in full for full in FULL.values()):
        raise ModelSourceError(
            f"organism files are missing: {weights} does not exist. Build them with "
            f"`python -m mechclaims.builder build-deep --root {lay.root}` (after the {arch} organism itself).")
    if not weights.is_file():
        raise ModelSourceError(
            f"organism files are missing: {weights} does not exist. Build them with "
            f"`python -m mechclaims.builder build --arch {arch} --out {lay.root}`, or set "
            "MECHCLAIMS_FIXTURES to the fixtures directory that holds organism/<arch>/."
        )
    return sha256_model_dir(sub)


def organism_info(name: str) -> dict:
    """What the report records about organism ``name`` (also checks that its files exist)."""
    arch, variant = split_name(name)
    lay = layout(arch)
    info = {"name": name, "arch": arch, "base": f"{arch}-base", "sha256": organism_sha256(name),
            "description": _DESCRIPTIONS[variant].format(arch=arch), "dir": str(lay.root), **lay.defaults()}
    if lay.adapter_dir(variant) is not None:
        info["adapter"] = str(lay.adapter_dir(variant))
    return info


def open_organism(name: str, *, device="cpu", dtype=None):
    """The HF model (eval mode), its tokenizer, and an info dict for organism ``name``.

    An adapter variant (``gpt2-lora``) is merged into a fresh base with
    ``mechclaims.adapters.merge_adapter``, the same function that loads any adapter source."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from ..adapters import merge_adapter
    from .derived import apply_recipe

    arch, variant = split_name(name)
    lay = layout(arch)
    sub = lay.weights_dir(variant)
    info = organism_info(name)
    model = AutoModelForCausalLM.from_pretrained(sub, dtype=dtype or torch.float32)
    tok = PreTrainedTokenizerFast.from_pretrained(sub)
    if variant in DERIVED:
        apply_recipe(model, _recipes(lay)[variant])
    adapter = lay.adapter_dir(variant)
    if adapter is not None:
        model = merge_adapter(model, adapter, base_label=f"organism:{arch}-base")
        info["merged"] = "peft merge_and_unload"
    model.to(device).eval()
    return model, tok, info


__all__ = ["organism_names", "base_of", "organism_dir", "layout", "Layout", "open_organism", "organism_sha256",
           "organism_info", "split_name", "ARCHS", "DERIVED", "ADAPTERS", "FULL"]
