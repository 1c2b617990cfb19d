"""Model sources: a string the user typed -> one typed, hashed record, resolved once.

A *model source* is one of

- a local Hugging Face directory (``save_pretrained`` output),
- a hub id (``gpt2-medium``, ``org/name``), read from the local HF cache; it is fetched only
  when the user is online (``HF_HUB_OFFLINE`` unset) and names it,
- a base plus a weights file, written ``BASE::WEIGHTS`` (``gpt2-medium::dpo.pt``), the form in
  which the paper's GPT-2 DPO checkpoint was released. In a pair, a bare weights file as the
  model means ``BASE::WEIGHTS``.
- a PEFT (LoRA) adapter directory (``adapter_config.json`` + adapter weights, as TRL saves
  with ``peft_config``), merged into a copy of its base in memory; the base is the pair's
  ``--base``, else the adapter's ``base_model_name_or_path``. Also ``BASE::ADAPTER_DIR``.
- ``organism:NAME``, one of the project's own small model organisms (``mechclaims.organism``).

A trainer's ``checkpoint-N/`` folder is a local directory (or an adapter directory); its
optimizer, scheduler, RNG and training-argument files are not part of the model's hash.

``resolve_source`` parses the string and hashes the files that define the model, without
loading any weights; the resulting ``Source`` is what every later stage takes (loading, the
cache keys, the report), so a source string is parsed exactly once per run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .cache import HASHED_SUFFIXES, sha256_file_memo, sha256_model_dir
from .errors import ModelNotFound, ModelSourceError
from .provenance import display_path

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
KINDS = ("dir", "hub", "weights", "adapter", "organism")
ORGANISM_PREFIX = "organism:"
ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_FILE_GLOBS = ("model*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


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
        if self.kind in ("weights", "adapter"):
            return f"{self.base}::{self.location}"
        if self.kind == "organism":
            return f"{ORGANISM_PREFIX}{self.location}"
        return self.location

    @property
    def label(self) -> str:
        """How the source is shown in reports: paths relative to the working directory."""
        if self.kind in ("weights", "adapter"):
            return f"{self.base.label}::{display_path(self.location)}"
        if self.kind == "dir":
            return display_path(self.location)
        return str(self)

    def describe(self) -> dict:
        return {"source": self.label, "kind": self.kind, "sha256": self.sha256,
                **({"base_source": self.base.label} if self.base is not None else {})}



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
    if source.startswith(ORGANISM_PREFIX) and "::" not in source:  # organism:gpt2-base::W is BASE::WEIGHTS
        from . import organism

        name = source[len(ORGANISM_PREFIX):]
        organism.split_name(name)  # unknown names fail here, with the list of valid ones
        return Source("organism", name)
    if "::" in source:
        base_part, weights = source.rsplit("::", 1)
        if is_adapter_dir(weights):
            return Source("adapter", str(Path(weights).expanduser().resolve()), parse_source(base_part))
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
    if is_adapter_dir(path):
        base_str = base or adapter_base(path)
        if not base_str:
            raise ModelSourceError(
                f"{source!r} is a PEFT adapter directory whose {ADAPTER_CONFIG} names no base model "
                "(base_model_name_or_path); give the base: --base BASE or BASE::" + source + ".")
        try:
            return Source("adapter", str(path.resolve()), parse_source(base_str))
        except ModelSourceError as exc:
            if base:
                raise
            raise type(exc)(f"the base of the adapter {source!r} comes from {path / ADAPTER_CONFIG} "
                            f"(base_model_name_or_path; a relative path is read from the adapter directory): "
                            f"{exc} Give the base with --base BASE (or BASE::{source}), or correct "
                            "base_model_name_or_path.") from exc
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSourceError(_no_config_message(source, path))
        return Source("dir", str(path.resolve()))
    looks_local = (source.startswith((".", "/", "~")) or os.sep + os.sep in source
                   or source.count("/") > 1 or path.suffix.lower() in HASHED_SUFFIXES)
    if path.exists():  # a file, and no weights file (handled above): not a model source
        where = f" ({path.resolve().parent})" if path.name == "config.json" else ""
        raise ModelSourceError(
            f"model path {source!r} is a file ({path.resolve()}), not a model directory; expected a local HF "
            "directory (config.json and weights, as save_pretrained writes them), BASE::WEIGHTS for a weights "
            f"file, a hub id, or organism:NAME. Pass the directory that holds the model{where}.")
    if looks_local:
        raise ModelNotFound(
            f"model path {source!r} does not exist (looked at {path.resolve()}). Expected a "
            "local HF directory, a hub id such as gpt2-medium, BASE::WEIGHTS, or organism:NAME."
        )
    return Source("hub", source)


def _no_config_message(source: str, path: Path) -> str:
    """What a directory without config.json holds, and what to pass instead."""
    names = sorted(f.name + ("/" if f.is_dir() else "") for f in path.iterdir())
    ckpts = [n for n in names if n.startswith("checkpoint-") and n.endswith("/")]
    if ckpts:
        hint = (f" It holds trainer checkpoints ({', '.join(ckpts[:3])}{', ...' if len(ckpts) > 3 else ''}): "
                "pass one of them, or run `mechclaims sweep` over this directory.")
    elif not names:
        hint = " It is empty."
    else:
        hint = (f" It holds {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}: save the model there with "
                "save_pretrained (config.json is written beside the weights), or pass the directory that has it.")
    return (f"{source!r} is a directory ({path.resolve()}) without config.json; expected a Hugging Face model "
            f"directory written by save_pretrained() (config.json and weights), or a PEFT adapter directory "
            f"({ADAPTER_CONFIG}).{hint}")


def is_adapter_dir(path) -> bool:
    """A PEFT adapter directory: ``adapter_config.json`` and no full model weights."""
    p = Path(str(path)).expanduser()
    return (p / ADAPTER_CONFIG).is_file() and not any(any(p.glob(g)) for g in _WEIGHT_FILE_GLOBS)


def adapter_base(path) -> str | None:
    """The adapter's ``base_model_name_or_path``, or None."""
    import json

    try:
        cfg = json.loads((Path(str(path)).expanduser() / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{Path(str(path)) / ADAPTER_CONFIG} is not readable JSON ({exc}); is the "
                               "adapter directory complete?") from exc
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not (isinstance(base, str) and base.strip()):
        return None
    base = base.strip()
    # A relative local path is read from the adapter directory (where the file is), not from the
    # working directory of whoever runs the claims; the working directory is kept only where the
    # path exists there and not beside the adapter (PEFT writes the path as the trainer was given it).
    local = base.startswith((".", "~")) or os.sep + os.sep in base or base.count("/") > 1
    beside = Path(str(path)).expanduser() / base
    if base.startswith(ORGANISM_PREFIX) or Path(base).expanduser().is_absolute():
        return base
    if beside.exists():
        return str(beside.resolve())
    if local and not Path(base).expanduser().exists():
        return str(beside.resolve())  # not found: the error names the path beside the adapter
    return base


def _check_weights_path(weights: str) -> str:
    path = Path(weights).expanduser()
    if path.is_dir():
        raise ModelSourceError(
            f"the weights part {weights!r} of BASE::WEIGHTS is a directory ({path.resolve()}), not a weights file; "
            "expected a .safetensors or .pt file with a state dict for the base architecture. A model directory "
            "is given on its own (--model DIR, with --base BASE); a PEFT adapter directory needs "
            f"{ADAPTER_CONFIG} and no full weights.")
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
        if spec.kind in ("weights", "adapter") and isinstance(base, Source) and str(spec.base) == str(base):
            spec = Source(spec.kind, spec.location, base)  # the pair's base, already hashed
    if spec.sha256:
        return spec
    b = resolve_source(spec.base, memo_dir=memo_dir) if spec.base is not None else None
    return Source(spec.kind, spec.location, b, _sha256(spec, b, memo_dir))


def _sha256(spec: Source, base: Source | None, memo_dir) -> str:
    """Content hash of a model source: the files that define its weights and config, hashed by
    ``cache.sha256_model_dir`` for a directory, a hub snapshot, an adapter and an organism alike,
    so the same files give the same sha256 however they are named. A sharded checkpoint whose
    index names a shard outside its directory is refused here, before any weights load."""
    if spec.kind == "organism":
        from . import organism

        return organism.organism_sha256(spec.location)
    if spec.kind == "weights":
        h = hashlib.sha256()
        h.update(base.sha256.encode())
        h.update(sha256_file_memo(spec.location, memo_dir).encode())
        return h.hexdigest()
    root = Path(spec.location) if spec.kind in ("dir", "adapter") else hub_snapshot_dir(spec.location)
    if root is None:
        return hub_id_sha256(spec.location)
    return sha256_model_dir(root, memo_dir, adapter_on=base.sha256 if spec.kind == "adapter" else None)


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


def infer_base(model: str) -> tuple[str, str]:
    """The base a fine-tuned checkpoint came from, when ``--base`` is not given: a PEFT
    adapter's ``base_model_name_or_path``, else ``config.json``'s ``_name_or_path`` when it
    names another model that resolves offline. Returns (base, where it came from)."""
    import json

    tried = []
    p = Path(str(model).rsplit("::", 1)[-1]).expanduser()
    if (p / ADAPTER_CONFIG).is_file():
        b = adapter_base(p)
        tried.append(f"{p / ADAPTER_CONFIG}: base_model_name_or_path = {b!r}")
        if b:
            return b, f"{ADAPTER_CONFIG} base_model_name_or_path"
    if (p / "config.json").is_file():
        try:
            name = json.loads((p / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            name = None
        tried.append(f"{p / 'config.json'}: _name_or_path = {name!r}")
        if isinstance(name, str) and name.strip():
            q = Path(name).expanduser()
            other = not (q.exists() and q.resolve() == p.resolve())
            if other and ((q / "config.json").is_file() or (not q.exists() and hub_snapshot_dir(name))):
                return name, "config.json _name_or_path"
            tried[-1] += " (not another model that resolves offline)"
    elif not (p / ADAPTER_CONFIG).is_file():
        tried.append(f"{p}: not a local model or adapter directory")
    raise ModelSourceError(
        f"no base model for --model {model!r}: looked at " + "; ".join(tried) + ". Give it: --base BASE "
        "(a local HF directory or hub id), or set base = \"...\" under [tool.mechclaims] in pyproject.toml.")
