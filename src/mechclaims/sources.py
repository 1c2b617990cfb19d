"""Model sources: a string the user typed -> one typed, hashed record, resolved once.

A *model source* is one of

- a local Hugging Face directory (``save_pretrained`` output),
- a hub id (``gpt2-medium``, ``org/name``), read from the local HF cache; it is fetched only
  when the user is online (``HF_HUB_OFFLINE`` unset) and names it,
- a base plus a weights file, written ``BASE::WEIGHTS`` (``gpt2-medium::dpo.pt``), the form in
  which the paper's GPT-2 DPO checkpoint was released. In a pair, a bare weights file as the
  model means ``BASE::WEIGHTS``.
- ``organism:NAME``, one of the project's own small model organisms (``mechclaims.organism``).

``resolve_source`` parses the string and hashes the files that define the model, without
loading any weights; the resulting ``Source`` is what every later stage takes (loading, the
cache keys, the report), so a source string is parsed exactly once per run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .cache import sha256_file_memo
from .errors import ModelNotFound, ModelSourceError
from .provenance import display_path

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# Files whose bytes define a checkpoint's behaviour; hashed for the content address.
HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt")
KINDS = ("dir", "hub", "weights", "organism")
ORGANISM_PREFIX = "organism:"


@dataclass(frozen=True)
class Source:
    """A resolved model source.

    ``kind``: one of ``KINDS``; ``location``: the absolute directory, the hub id, the absolute
    weights file, or the organism name; ``base``: for ``weights``, the source whose
    architecture and tokenizer the weights load onto; ``sha256``: the content hash of the files
    that define the model (empty until resolved).
    """

    kind: str
    location: str
    base: "Source | None" = None
    sha256: str = ""

    def __str__(self) -> str:
        if self.kind == "weights":
            return f"{self.base}::{self.location}"
        if self.kind == "organism":
            return f"{ORGANISM_PREFIX}{self.location}"
        return self.location

    @property
    def label(self) -> str:
        """How the source is shown in reports: paths relative to the working directory."""
        if self.kind == "weights":
            return f"{self.base.label}::{display_path(self.location)}"
        if self.kind == "dir":
            return display_path(self.location)
        return str(self)

    def describe(self) -> dict:
        return {"source": self.label, "kind": self.kind, "sha256": self.sha256,
                **({"base_source": self.base.label} if self.base is not None else {})}


SourceSpec = Source  # the name used before sources were resolved into records


def parse_source(source: str, *, base: str | None = None) -> Source:
    """Parse a model source string (no hashing); ``base`` completes a bare weights file.

    Raises ModelSourceError for a path that looks local but does not exist, or a weights file
    with no base to load it onto.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(
            f"model source {source!r} is empty; expected a local HF directory, a hub id, "
            "BASE::WEIGHTS, or organism:NAME."
        )
    source = source.strip()
    if source.startswith(ORGANISM_PREFIX):
        from . import organism

        name = source[len(ORGANISM_PREFIX):]
        organism.split_name(name)  # unknown names fail here, with the list of valid ones
        return Source("organism", name)
    if "::" in source:
        base_part, weights = source.rsplit("::", 1)
        return Source("weights", _check_weights_path(weights), parse_source(base_part))
    if source.lower().endswith(WEIGHT_SUFFIXES):
        if base is None:
            raise ModelSourceError(
                f"{source!r} is a bare weights file; it needs the architecture it belongs to. "
                f"Write BASE::{source} (for example gpt2-medium::{source}) or give it as the "
                "model of a pair whose --base names that architecture."
            )
        return Source("weights", _check_weights_path(source), parse_source(base))
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSourceError(
                f"{source!r} is a directory but has no config.json; expected a Hugging Face "
                "model directory written by save_pretrained()."
            )
        return Source("dir", str(path.resolve()))
    looks_local = (source.startswith((".", "/", "~")) or os.sep + os.sep in source
                   or source.count("/") > 1 or path.suffix.lower() in HASHED_SUFFIXES)
    if looks_local:
        raise ModelNotFound(
            f"model path {source!r} does not exist (looked at {path.resolve()}). Expected a "
            "local HF directory, a hub id such as gpt2-medium, BASE::WEIGHTS, or organism:NAME."
        )
    return Source("hub", source)


def _check_weights_path(weights: str) -> str:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelNotFound(
            f"weights file {weights!r} does not exist (looked at {path.resolve()}); expected a "
            ".safetensors or .pt file with a state dict for the base architecture."
        )
    if not path.name.lower().endswith(WEIGHT_SUFFIXES):
        raise ModelSourceError(
            f"weights file {weights!r} has an unknown suffix; expected one of {WEIGHT_SUFFIXES}."
        )
    return str(path.resolve())


def resolve_source(source: "str | Source", *, base: "str | Source | None" = None,
                   memo_dir: str | Path | None = None) -> Source:
    """Parse and hash a model source, without loading weights. A ``Source`` that already
    carries its hash is returned as it is. ``memo_dir``: where file hashes are memoised (the
    run's cache directory; None hashes every time)."""
    if isinstance(source, Source):
        spec = source
    else:
        base_str = str(base) if isinstance(base, Source) else base
        spec = parse_source(source, base=base_str)
        if spec.kind == "weights" and isinstance(base, Source) and str(spec.base) == str(base):
            spec = Source("weights", spec.location, base)  # the pair's base, already hashed
    if spec.sha256:
        return spec
    b = resolve_source(spec.base, memo_dir=memo_dir) if spec.base is not None else None
    return Source(spec.kind, spec.location, b, _sha256(spec, b, memo_dir))


def as_source(source: "str | Source", *, base: "str | Source | None" = None,
              memo_dir: str | Path | None = None) -> Source:
    """The API boundary: library functions accept a string or a record; they work on records."""
    return resolve_source(source, base=base, memo_dir=memo_dir)


def _sha256(spec: Source, base: Source | None, memo_dir) -> str:
    """Content hash of a model source (the files that define its weights and config)."""
    if spec.kind == "organism":
        from . import organism

        return organism.organism_sha256(spec.location)
    if spec.kind == "weights":
        h = hashlib.sha256()
        h.update(base.sha256.encode())
        h.update(sha256_file_memo(spec.location, memo_dir).encode())
        return h.hexdigest()
    root = Path(spec.location) if spec.kind == "dir" else hub_snapshot_dir(spec.location)
    if root is None:
        return hub_id_sha256(spec.location)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name.endswith(HASHED_SUFFIXES):
            h.update(str(f.relative_to(root)).encode())
            h.update(sha256_file_memo(f, memo_dir).encode())
    return h.hexdigest()


def hub_id_sha256(repo_id: str) -> str:
    """The stand-in hash of a hub id that is not in the local cache (replaced once fetched)."""
    return hashlib.sha256(f"hub:{repo_id}".encode()).hexdigest()


def hub_snapshot_dir(repo_id: str) -> Path | None:
    """The local snapshot of a hub id, or None when it is not in the local HF cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot: the id is hashed instead
        return None
