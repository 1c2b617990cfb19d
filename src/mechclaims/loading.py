"""Model sources -> validated TransformerBridge pairs.

A *model source* is one of

- a local Hugging Face directory (``save_pretrained`` output),
- a hub id (``gpt2-medium``, ``org/name``), read from the local HF cache; it is fetched only
  when the user is online (``HF_HUB_OFFLINE`` unset) and names it,
- a base plus a weights file, written ``BASE::WEIGHTS`` (``gpt2-medium::dpo.pt``), the form in
  which the paper's GPT-2 DPO checkpoint was released. ``.safetensors`` is read directly;
  ``.pt``/``.bin`` only with ``torch.load(weights_only=True)``, so a pickle that carries code
  is refused. In a pair, a bare weights file as the model means ``BASE::WEIGHTS``.
- ``organism:NAME``, one of the project's own small model organisms (``mechclaims.organism``).

Every model is loaded through TransformerLens 4.x ``TransformerBridge`` over the *raw* HF
weights: no ``enable_compatibility_mode()`` (no LayerNorm folding, no centring of ``W_out``),
so the value vectors are exactly the checkpoint's ``c_proj`` / ``down_proj`` rows (paper A18).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IncompatibleCheckpoints, ModelSourceError, UnsafeCheckpoint

WEIGHT_PROCESSING = "raw HF weights (TransformerBridge default; no compatibility mode)"
DTYPES = ("float32", "bfloat16", "float16", "float64")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# Files whose bytes define a checkpoint's behaviour; hashed for the content address.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt")


@dataclass
class LoadedModel:
    """One model ready for analysis: the bridge, its HF module and tokenizer, and provenance."""

    source: str
    bridge: Any
    hf_model: Any
    tokenizer: Any
    sha256: str
    device: str
    dtype: str
    architecture: str
    info: dict = field(default_factory=dict)
    # Per layer: (decoder block, MLP output projection c_proj/down_proj) of ``hf_model``, the
    # plain HF module that shares its weights with the bridge. The projection's input is
    # hook_post, its output mlp.out.hook_out; the block's output is hook_resid_post.
    stat_modules: list = field(default_factory=list, repr=False)

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def d_mlp(self) -> int:
        return int(self.bridge.cfg.d_mlp)

    @property
    def d_vocab(self) -> int:
        return int(self.bridge.cfg.d_vocab)

    @property
    def gated(self) -> bool:
        return bool(getattr(self.bridge.cfg, "gated_mlp", False))

    def W_out(self):
        """Value vectors, ``[n_layers, d_mlp, d_model]``; row ``i`` of layer ``l`` is neuron (l, i)."""
        return self.bridge.W_out

    def b_out(self):
        """MLP output bias ``[n_layers, d_model]``; zeros for bias-free MLPs (Llama, Mistral, Gemma)."""
        import torch

        try:
            return self.bridge.b_out
        except AttributeError:
            return torch.zeros(self.n_layers, self.d_model, dtype=self.bridge.W_out.dtype)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "d_vocab": self.d_vocab,
            "gated_mlp": self.gated,
            "device": self.device,
            "dtype": self.dtype,
            "weight_processing": WEIGHT_PROCESSING,
            **({"organism": self.info} if self.info else {}),
        }


# --------------------------------------------------------------------------------------------
# Source parsing


@dataclass(frozen=True)
class SourceSpec:
    """A parsed model source. ``kind`` is one of ``dir``, ``hub``, ``weights``, ``organism``."""

    kind: str
    location: str
    base: "SourceSpec | None" = None

    def __str__(self) -> str:
        if self.kind == "weights":
            return f"{self.base}::{self.location}"
        if self.kind == "organism":
            return f"organism:{self.location}"
        return self.location


def parse_source(source: str, *, base: str | None = None) -> SourceSpec:
    """Parse a model source string; ``base`` completes a bare weights file.

    Raises ModelSourceError for a path that looks local but does not exist, or a weights file
    with no base to load it onto.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(
            f"model source {source!r} is empty; expected a local HF directory, a hub id, "
            "BASE::WEIGHTS, or organism:NAME."
        )
    source = source.strip()
    if source.startswith("organism:"):
        return SourceSpec("organism", source[len("organism:"):])
    if "::" in source:
        base_part, weights = source.rsplit("::", 1)
        return SourceSpec("weights", _check_weights_path(weights), parse_source(base_part))
    if source.lower().endswith(WEIGHT_SUFFIXES):
        if base is None:
            raise ModelSourceError(
                f"{source!r} is a bare weights file; it needs the architecture it belongs to. "
                f"Write BASE::{source} (for example gpt2-medium::{source}) or give it as the "
                "model of a pair whose --base names that architecture."
            )
        return SourceSpec("weights", _check_weights_path(source), parse_source(base))
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSourceError(
                f"{source!r} is a directory but has no config.json; expected a Hugging Face "
                "model directory written by save_pretrained()."
            )
        return SourceSpec("dir", str(path.resolve()))
    looks_local = (source.startswith((".", "/", "~")) or os.sep + os.sep in source
                   or source.count("/") > 1 or path.suffix.lower() in _HASHED_SUFFIXES)
    if looks_local:
        raise ModelSourceError(
            f"model path {source!r} does not exist (looked at {path.resolve()}). Expected a "
            "local HF directory, a hub id such as gpt2-medium, BASE::WEIGHTS, or organism:NAME."
        )
    return SourceSpec("hub", source)


def _check_weights_path(weights: str) -> str:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelSourceError(
            f"weights file {weights!r} does not exist (looked at {path.resolve()}); expected a "
            ".safetensors or .pt file with a state dict for the base architecture."
        )
    if not path.name.lower().endswith(WEIGHT_SUFFIXES):
        raise ModelSourceError(
            f"weights file {weights!r} has an unknown suffix; expected one of {WEIGHT_SUFFIXES}."
        )
    return str(path.resolve())


# --------------------------------------------------------------------------------------------
# Opening the HF model


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelSourceError(f"dtype {dtype!r} is not supported; choose one of {DTYPES}.")
    return getattr(torch, dtype)


def open_hf(spec: SourceSpec, *, dtype: str = "float32"):
    """Open a fresh plain HF causal LM and tokenizer for ``spec``; returns (model, tokenizer, info)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a test log
    tdtype = _torch_dtype(dtype)
    if spec.kind == "organism":
        from . import organism

        hf, tok, info = organism.open_organism(spec.location, dtype=tdtype)
        return hf.eval(), tok, dict(info)
    if spec.kind == "weights":
        hf, tok, _ = open_hf(spec.base, dtype=dtype)
        state = load_state_dict(spec.location)
        _load_into(hf, state, spec.location)
        return hf.eval(), tok, {}
    try:
        hf = AutoModelForCausalLM.from_pretrained(spec.location, dtype=tdtype)
        tok = AutoTokenizer.from_pretrained(spec.location)
    except OSError as exc:
        if spec.kind == "hub":
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            raise ModelSourceError(
                f"could not load {spec.location!r}: it is not a local directory and "
                + (
                    "not in the local Hugging Face cache (HF_HUB_OFFLINE=1 is set). Download it "
                    "while online (huggingface-cli download " + spec.location + ") or pass a "
                    "local directory."
                    if offline
                    else f"the hub could not provide it ({exc})."
                )
            ) from exc
        raise ModelSourceError(f"could not load the HF model in {spec.location!r}: {exc}") from exc
    return hf.eval(), tok, {}


def load_state_dict(path: str) -> dict:
    """Read a state dict from ``.safetensors`` or, safely, from a ``.pt``/``.bin`` file.

    ``.pt`` is read with ``torch.load(weights_only=True)``: tensors and plain containers only.
    A file that needs arbitrary unpickling (classes, functions, code) raises UnsafeCheckpoint.
    Trainer-style wrappers (``{"state": ...}``, ``{"state_dict": ...}``, ``{"model": ...}``)
    and a ``module.`` prefix (DataParallel) are unwrapped.
    """
    import pickle

    import torch

    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as exc:
        if "weights_only" not in str(exc).lower() and "unpickl" not in str(exc).lower():
            raise ModelSourceError(
                f"could not read {path!r} as a torch checkpoint ({type(exc).__name__}: "
                f"{str(exc)[:200]}); is the file complete?"
            ) from exc
        raise UnsafeCheckpoint(f"refused to load {path!r}: {str(exc)[:300]}") from exc
    except (pickle.UnpicklingError, AttributeError, TypeError) as exc:
        raise UnsafeCheckpoint(
            f"refused to load {path!r}: it is not a plain tensor checkpoint and would need "
            f"arbitrary code execution to unpickle ({type(exc).__name__}: {str(exc)[:200]}). "
            "Convert it to .safetensors where it came from, or save only model.state_dict()."
        ) from exc
    for key in ("state", "state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelSourceError(
            f"{path!r} does not hold a state dict (a mapping of parameter names to tensors); "
            f"found {type(obj).__name__}."
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_into(hf, state: dict, path: str) -> None:
    """Load ``state`` into ``hf`` strictly, except for tied or derived buffers."""
    own = hf.state_dict()
    if not any(k in own for k in state) and any(f"transformer.{k}" in own for k in state):
        state = {f"transformer.{k}": v for k, v in state.items()}  # a bare GPT2Model dict
    unexpected = sorted(k for k in state if k not in own)
    tied = {"lm_head.weight"} if getattr(hf.config, "tie_word_embeddings", False) else set()
    missing = sorted(k for k in own if k not in state and k not in tied and "attn.bias" not in k
                     and "masked_bias" not in k and "rotary_emb" not in k)
    if unexpected or missing:
        raise ModelSourceError(
            f"weights file {path!r} does not match the base architecture "
            f"({type(hf).__name__}): {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}. Is it a fine-tune of this base?"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelSourceError(
                f"weights file {path!r}: {k} has shape {tuple(v.shape)}, the base has "
                f"{tuple(own[k].shape)}."
            )
    hf.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _memo_path() -> Path:
    from .cache import default_cache_dir

    return default_cache_dir() / "file-hashes.json"


def sha256_file_memo(path: str | Path, memo: bool = True) -> str:
    """sha256 of a file, memoised by (path, size, mtime) so large checkpoints are hashed once."""
    from .cache import atomic_write_text

    if not memo:
        return sha256_file(path)
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = sha256_file(p)
    memo[key] = digest
    try:
        atomic_write_text(memo_file, json.dumps(memo, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs speed
    return digest


def source_sha256(spec: SourceSpec, hf=None, info: dict | None = None, *, memo: bool = True) -> str:
    """Content hash of a model source (the files that define its weights and config)."""
    if spec.kind == "organism":
        return (info or {}).get("sha256") or hashlib.sha256(str(spec).encode()).hexdigest()
    if spec.kind == "weights":
        h = hashlib.sha256()
        h.update(source_sha256(spec.base, memo=memo).encode())
        h.update(sha256_file_memo(spec.location, memo).encode())
        return h.hexdigest()
    if spec.kind == "dir":
        root = Path(spec.location)
    else:
        root = _hub_snapshot_dir(spec.location, hf)
        if root is None:
            return hashlib.sha256(f"hub:{spec.location}".encode()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name.endswith(_HASHED_SUFFIXES):
            h.update(str(f.relative_to(root)).encode())
            h.update(sha256_file_memo(f, memo).encode())
    return h.hexdigest()


def _hub_snapshot_dir(repo_id: str, hf) -> Path | None:
    name_or_path = getattr(getattr(hf, "config", None), "_name_or_path", None)
    if name_or_path and Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot: fall back to the id
        return None


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary and special-token ids: two tokenizers with equal fingerprints
    map every string to the same ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    payload = json.dumps([vocab, special], ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading and validating


def load_model(
    source: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    base: str | None = None,
    memo: bool = True,
) -> LoadedModel:
    """Load one model source as a TransformerBridge on ``device`` in ``dtype``.

    ``base`` is only needed when ``source`` is a bare weights file.
    """
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    torch.set_grad_enabled(False)
    spec = parse_source(source, base=base)
    hf, tok, info = open_hf(spec, dtype=dtype)
    if tok.pad_token_id is None:
        # Padding is always masked; any id works, and EOS is what the paper's code used.
        tok.pad_token = tok.eos_token
    sha = source_sha256(spec, hf, info, memo=memo)
    hf.to(device)
    # The bridge rewires the module tree it is given in place (its components replace the HF
    # blocks, attention becomes eager). Give it a structural copy that *shares* every parameter
    # and buffer, so one set of weights serves two views: the bridge (TransformerLens names,
    # W_out, hooks) and the plain HF module, on which the statistics pass runs at plain
    # transformers speed with PyTorch hooks on exactly the tensors that the bridge's
    # blocks.{l}.mlp.hook_post, mlp.out.hook_out and hook_resid_post see.
    shared = {id(t): t for t in list(hf.parameters()) + list(hf.buffers())}
    wrapped = copy.deepcopy(hf, memo=shared)
    names = {id(mod): name for name, mod in wrapped.named_modules()}
    bridge = TransformerBridge.boot_transformers(
        str(spec), hf_model=wrapped, tokenizer=tok, device=device, dtype=_torch_dtype(dtype)
    )
    bridge.eval()
    stat_modules = _plain_stat_modules(bridge, hf, names)
    arch = (getattr(hf.config, "architectures", None) or [type(hf).__name__])[0]
    return LoadedModel(
        source=str(spec),
        bridge=bridge,
        hf_model=hf,
        tokenizer=tok,
        sha256=sha,
        device=str(device),
        dtype=dtype,
        architecture=arch,
        info=info,
        stat_modules=stat_modules,
    )


def _plain_stat_modules(bridge, plain, names: dict[int, str]) -> list[tuple[Any, Any]]:
    """(block, MLP output projection) of the plain HF model for each layer, found through the
    bridge's own mapping (its components keep the wrapped originals), so it works for every
    architecture TransformerLens supports without a table of module names here."""
    out = []
    for layer, block in enumerate(bridge.blocks):
        try:
            block_name = names[id(block._original_component)]
            proj_name = names[id(block.mlp.out._original_component)]
        except (AttributeError, KeyError) as exc:
            raise ModelSourceError(
                f"cannot locate layer {layer}'s block and MLP output projection in "
                f"{type(plain).__name__}; this architecture's bridge adapter is not supported."
            ) from exc
        out.append((plain.get_submodule(block_name), plain.get_submodule(proj_name)))
    return out


def check_pair(base: LoadedModel, model: LoadedModel) -> None:
    """Raise IncompatibleCheckpoints unless the two models can be compared neuron by neuron."""
    for fld in ("architecture", "n_layers", "d_model", "d_mlp", "d_vocab"):
        a, b = getattr(base, fld), getattr(model, fld)
        if a != b:
            raise IncompatibleCheckpoints(fld, a, b)
    fa, fb = tokenizer_fingerprint(base.tokenizer), tokenizer_fingerprint(model.tokenizer)
    if fa != fb:
        va, vb = base.tokenizer.get_vocab(), model.tokenizer.get_vocab()
        diff = sorted(set(va.items()) ^ set(vb.items()))[:3]
        raise IncompatibleCheckpoints(
            "tokenizer",
            f"fingerprint {fa[:12]} ({len(va)} tokens)",
            f"fingerprint {fb[:12]} ({len(vb)} tokens)",
            hint=f"First differing (token, id) entries: {diff}.",
        )


def load_pair(
    base: str,
    model: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
) -> tuple[LoadedModel, LoadedModel]:
    """Load and validate a (base, fine-tuned) pair. A bare weights file as ``model`` is loaded
    onto ``base``'s architecture."""
    b = load_model(base, device=device, dtype=dtype)
    m = load_model(model, device=device, dtype=dtype, base=base)
    check_pair(b, m)
    return b, m


def parity_check(model: LoadedModel, tokens=None, *, tolerance: float | None = None) -> float:
    """Precondition: bridge logits equal plain transformers logits on the same tokens.

    Opens a fresh plain HF model from the same source, runs both on ``tokens`` (default: a
    fixed 2x12 sample of the vocabulary), returns the max abs difference of the logits, and
    raises NumericalError above ``tolerance`` (default 1e-4 for fp32/fp64, 5e-2 otherwise).
    """
    import torch

    from .errors import NumericalError

    if tolerance is None:
        tolerance = 1e-4 if model.dtype in ("float32", "float64") else 5e-2
    if tokens is None:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, model.d_vocab, (2, 12), generator=g)
    tokens = tokens.to(model.device)
    spec = parse_source(model.source)
    plain, _, _ = open_hf(spec, dtype=model.dtype)
    plain.to(model.device)
    with torch.no_grad():
        want = plain(tokens).logits.to(torch.float64)
        got = model.bridge(tokens, return_type="logits").to(torch.float64)
    diff = float((want - got).abs().max())
    if not diff <= tolerance:
        raise NumericalError(
            f"bridge logits differ from plain transformers logits for {model.source}: max abs "
            f"diff {diff:.3g} > tolerance {tolerance:.1g}. The TransformerBridge adapter for "
            f"{model.architecture} may not support this checkpoint; results would be wrong."
        )
    return diff
