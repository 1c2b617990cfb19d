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

import contextlib
import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import index_shards
from .choices import DTYPES
from .errors import IncompatibleCheckpoints, ModelSourceError, UnsafeCheckpoint
from .inspect_source import SUPPORTED_MODEL_TYPES  # noqa: F401 - re-exported: the families read
from .inspect_source import check_family as _check_family
from .inspect_source import check_custom_tokenizer as _check_custom_tokenizer
from .inspect_source import check_tokenizer_files as _check_tokenizer_files
from .inspect_source import not_safetensors_message as _not_safetensors_message
from .inspect_source import torch_load_error as _torch_load_error
from .inspect_source import torch_refusal_text as _torch_refusal_text
from .sources import Source, hub_id_sha256, parse_source, resolve_source  # noqa: F401 - parse_source re-exported

WEIGHT_PROCESSING = "raw HF weights (TransformerBridge default; no compatibility mode)"


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
    record: Source | None = None  # the resolved source this model was loaded from
    # The Accelerate device map it was loaded with ("" = whole model on ``device``, which is
    # then the device of its input embeddings), as ``devices.device_map_text`` writes it.
    device_map: str = ""

    def __post_init__(self):
        # Without its hook points the statistics pass would average nothing, silently.
        if len(self.stat_modules) != self.n_layers:
            raise ModelSourceError(
                f"a LoadedModel of {self.source} needs its (block, MLP output projection) modules for all "
                f"{self.n_layers} layers, got {len(self.stat_modules)}; build it with load_model or wrap_hf.")

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
            **({"device_map": self.device_map} if self.device_map else {}),
            "dtype": self.dtype,
            "weight_processing": WEIGHT_PROCESSING,
            **({"organism": self.info} if self.info else {}),
        }


# --------------------------------------------------------------------------------------------
# Opening the HF model


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelSourceError(f"dtype {dtype!r} is not supported; choose one of {DTYPES}.")
    return getattr(torch, dtype)


# A tokenizer with fewer tokens than this fraction of config.vocab_size is a stand-in, not the
# model's (transformers builds a 1-token tokenizer when the files are missing).
_MIN_TOKENIZER_FRACTION = 0.5


def open_hf(spec: Source, *, dtype: str = "float32", device_map=None, max_memory: dict | None = None,
            offload_folder: str | None = None):
    """Open a fresh plain HF causal LM and tokenizer for ``spec``; returns (model, tokenizer, info).

    ``device_map`` (with ``max_memory`` and ``offload_folder``) is handed to transformers'
    ``from_pretrained`` (Accelerate's big-model loading: ``"auto"``, ``"balanced"``, ... or a
    dict of module -> device; a string is read by ``devices.parse_device_map``). Only ``dir``
    and ``hub`` sources take one: the other kinds are assembled in memory on one device.

    Before any weights are read, a ``dir`` or ``hub`` source is checked from its config.json
    and tokenizer: ``model_type`` must be one of ``SUPPORTED_MODEL_TYPES`` and every listed
    architecture a causal LM (``*ForCausalLM`` or ``GPT2LMHeadModel``), else UnsupportedModel;
    a directory must hold tokenizer files and the tokenizer must cover at least half of
    ``config.vocab_size``, else ModelSourceError. A ``weights`` source takes its architecture
    and tokenizer from its base; ``organism`` sources are the project's own and skip the checks.

    A directory whose weights are only pickled ``pytorch_model*.bin`` files (no
    ``.safetensors``) is never handed to transformers' loader: its state dict is read with
    ``load_state_dict`` (``torch.load(weights_only=True)``) into a model built from its config,
    so a pickle that carries code raises UnsafeCheckpoint before any of it runs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a test log
    tdtype = _torch_dtype(dtype)
    placement = _placement_kwargs(spec, device_map, max_memory, offload_folder)
    if spec.kind == "organism":
        from . import organism

        hf, tok, info = organism.open_organism(spec.location, dtype=tdtype)
        return hf.eval(), tok, dict(info)
    if spec.kind == "adapter":
        return _open_adapter(spec, dtype)
    if spec.kind == "weights":
        hf, tok, _ = open_hf(spec.base, dtype=dtype)
        state = load_state_dict(spec.location)
        _load_into(hf, state, spec.location)
        return hf.eval(), tok, {}
    config, where = _read_hf_config(spec)
    _check_family(config, where)
    if placement:  # before any weight is read: the GPUs and modules the map names exist
        from .devices import check_map_devices, check_map_modules

        check_map_devices(placement["device_map"])
        check_map_modules(placement["device_map"], config, spec.label)
    if spec.kind == "dir":
        _check_tokenizer_files(Path(spec.location))
        _check_custom_tokenizer(Path(spec.location))
        index_shards(spec.location)  # a shard outside the directory is refused before any weights load
    with _hf_load_errors(spec):
        tok = AutoTokenizer.from_pretrained(spec.location)
    _check_tokenizer_size(tok, config, spec)
    pickled = _pickled_weight_files(Path(spec.location)) if spec.kind == "dir" else []
    if pickled:
        if placement:
            raise ModelSourceError(f"{spec.location!r} holds only pickled pytorch_model*.bin weights, which are "
                                   "read on one device; a device map needs .safetensors weights (re-save the "
                                   "model with save_pretrained).")
        return _open_pickled_dir(spec, pickled, tdtype).eval(), tok, {}
    if spec.kind == "dir":
        for f in sorted(Path(spec.location).glob("*.safetensors")):
            _check_safetensors_header(str(f))
    with _hf_load_errors(spec):
        hf = AutoModelForCausalLM.from_pretrained(spec.location, dtype=tdtype, **placement)
    return hf.eval(), tok, {}


def _placement_kwargs(spec: Source, device_map, max_memory, offload_folder) -> dict:
    """``from_pretrained`` keywords for a device map; {} without one."""
    from .devices import DEVICE_MAP_KINDS, parse_device_map

    device_map = parse_device_map(device_map)
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ModelSourceError("max_memory and offload_folder only apply with a device_map.")
        return {}
    if spec.kind not in DEVICE_MAP_KINDS:
        raise ModelSourceError(f"a device map applies to HF directories and hub ids, not to {spec.label!r} "
                               f"({spec.kind}); load it on one device, or save it with save_pretrained first.")
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise ModelSourceError("a device map needs Accelerate: pip install accelerate.") from exc
    kw: dict = {"device_map": device_map}
    if max_memory is not None:
        kw["max_memory"] = dict(max_memory)
    if offload_folder is not None:
        kw["offload_folder"] = str(offload_folder)
    return kw


def input_device(hf) -> str:
    """Where a model's inputs go: the device of its input embeddings (for a dispatched model
    whose embeddings are offloaded, the device they execute on)."""
    emb = hf.get_input_embeddings()
    dev = emb.weight.device
    if dev.type == "meta":
        hook = getattr(emb, "_hf_hook", None)
        dev = getattr(hook, "execution_device", None) or "cpu"
    return str(dev)


def is_offloaded(module) -> bool:
    """True when Accelerate offloaded ``module``'s own weights (they sit on the meta device and
    its hook loads them for each forward)."""
    return any(p.device.type == "meta" for p in module.parameters(recurse=False))


@contextlib.contextmanager
def materialized(module):
    """``module``'s own weights readable inside the block, also when they are offloaded: its
    Accelerate hook loads them as for a forward and puts them back afterwards."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None or not is_offloaded(module):
        yield module
        return
    hook.pre_forward(module)
    try:
        yield module
    finally:
        hook.post_forward(module, None)


@contextlib.contextmanager
def _hf_load_errors(spec: Source):
    """Turn transformers' errors for a ``dir``/``hub`` source into ModelSourceError types."""
    import pickle

    from .errors import MechclaimsError

    try:
        yield
    except MechclaimsError:
        raise
    except pickle.UnpicklingError as exc:  # a hub snapshot holding a pickle that carries code
        raise UnsafeCheckpoint(
            f"refused to load {spec.location!r}: its weights are a pickle that "
            f"torch.load(weights_only=True) refuses. {_torch_refusal_text(exc)} Use a "
            "checkpoint with .safetensors weights (convert it where it came from)."
        ) from exc
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
    except Exception as exc:  # noqa: BLE001 - e.g. SafetensorError from a broken weights file
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ModelSourceError(
            f"could not load the weights of {spec.location!r}: a .safetensors file is truncated "
            f"or not a safetensors file ({exc}); expected complete weights files. "
            "Re-download or re-save the model."
        ) from exc


def _read_hf_config(spec: Source) -> tuple[dict, str]:
    """config.json of a ``dir`` (read as JSON) or ``hub`` source (through AutoConfig, which
    reads the local cache offline), and where it was read, without touching any weights."""
    if spec.kind == "dir":
        path = Path(spec.location) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelSourceError(
                f"{path}: could not read the model config ({type(exc).__name__}: {exc}); expected "
                "the config.json JSON object that save_pretrained() writes. Re-save the model or "
                "restore the file."
            ) from exc
        if not isinstance(config, dict):
            raise ModelSourceError(
                f"{path}: got a JSON {type(config).__name__}; expected a JSON object (the "
                "config.json that save_pretrained() writes). Re-save the model."
            )
        return config, str(path)
    from transformers import AutoConfig

    with _hf_load_errors(spec):
        try:
            config = AutoConfig.from_pretrained(spec.location)
        except (ValueError, KeyError) as exc:  # a model_type transformers does not know
            from .errors import UnsupportedModel

            raise UnsupportedModel(
                f"{spec.location!r}: transformers cannot read its config ({exc}); expected a "
                f"causal LM with model_type one of {SUPPORTED_MODEL_TYPES}. Use a checkpoint of "
                "a supported family."
            ) from exc
    return config.to_dict(), f"{spec.location} (config.json)"


def _check_tokenizer_size(tok, config: dict, spec: Source) -> None:
    """ModelSourceError when the tokenizer is far smaller than the model's vocabulary."""
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        return
    n = len(tok)
    if n < _MIN_TOKENIZER_FRACTION * vocab_size:
        raise ModelSourceError(
            f"{spec.location}: got a tokenizer of {n} tokens for a model with vocab_size "
            f"{vocab_size}; expected at least {_MIN_TOKENIZER_FRACTION:.0%} of it (the "
            "model's own tokenizer). The tokenizer files are missing or belong to another "
            "model: save the model's tokenizer with it (tokenizer.save_pretrained(...))."
        )


def _pickled_weight_files(directory: Path) -> list[Path]:
    """``pytorch_model*.bin`` weight files of a directory that has no ``.safetensors`` weights."""
    if any(directory.glob("*.safetensors")):
        return []
    return sorted(directory.glob("pytorch_model*.bin"))


def _open_pickled_dir(spec: Source, files: list[Path], tdtype):
    """Build the model from config and load pickled weights through ``load_state_dict``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with _hf_load_errors(spec):
        config = AutoConfig.from_pretrained(spec.location)
    hf = AutoModelForCausalLM.from_config(config, dtype=tdtype)
    state: dict = {}
    for f in files:
        state.update(load_state_dict(str(f)))
    _load_into(hf, state, str(files[0]) if len(files) == 1 else spec.location)
    return hf


def _open_adapter(spec: Source, dtype: str):
    """A PEFT adapter merged into a fresh copy of its base (``merge_and_unload``): the statistics
    run on the merged weights, exactly as if the fine-tune had been saved in full. PEFT reads
    the adapter weights with ``torch.load(weights_only=True)`` or safetensors."""
    from .adapters import merge_adapter

    import pickle

    hf, tok, _ = open_hf(spec.base, dtype=dtype)
    try:
        merged = merge_adapter(hf, spec.location, base_label=str(spec.base))
    except pickle.UnpicklingError as exc:
        # adapter_model.bin that torch.load(weights_only=True) refuses: the message pytorch_model.bin
        # gets (file, reason, what to do), not torch's raw text.
        raise _torch_load_error(str(Path(spec.location) / "adapter_model.bin"), exc) from exc
    return merged.eval(), tok, {"adapter": spec.location, "merged": "peft merge_and_unload"}


def load_state_dict(path: str) -> dict:
    """Read a state dict from ``.safetensors`` or, safely, from a ``.pt``/``.bin`` file.

    ``.pt`` is read with ``torch.load(weights_only=True)``: tensors and plain containers only.
    A pickle that needs arbitrary unpickling (classes, functions, code) raises UnsafeCheckpoint;
    a file that is not a pickle at all (truncated, or another format renamed) and a truncated
    or garbage ``.safetensors`` raise ModelSourceError.
    Trainer-style wrappers (``{"state": ...}``, ``{"state_dict": ...}``, ``{"model": ...}``)
    and a ``module.`` prefix (DataParallel) are unwrapped.
    """
    import torch

    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all unreadable
            raise ModelSourceError(_not_safetensors_message(path, exc)) from exc
    obj = safe_torch_load(path)
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


def _check_safetensors_header(path: str) -> None:
    """ModelSourceError unless ``path`` has a valid safetensors header covering the file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all unreadable
        raise ModelSourceError(_not_safetensors_message(path, exc)) from exc


def safe_torch_load(path, *, error: type = ModelSourceError):
    """``torch.load(weights_only=True)``: tensors and plain containers only. A pickle that would
    need code raises UnsafeCheckpoint; a file that is no torch file raises ``error``."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises KeyError, EOFError, RuntimeError, ...
        raise _torch_load_error(str(path), exc, error) from exc


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
    source: "str | Source",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    base: "str | Source | None" = None,
    memo: bool = True,
    memo_dir: str | Path | None = None,
    device_map=None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load one model source as a TransformerBridge on ``device`` in ``dtype``.

    ``source`` is a resolved ``Source`` record (what a run passes) or a string, resolved here.
    ``base`` is only needed when ``source`` is a bare weights file. File hashes are memoised in
    ``memo_dir`` (default: the default cache dir; ``memo=False``: no memo).

    ``device_map`` (``dir``/``hub`` sources): Accelerate places the layers (see ``open_hf``)
    and ``device`` is ignored; the LoadedModel's ``device`` is then where its inputs go, the
    device of the input embeddings.
    """
    import torch

    torch.set_grad_enabled(False)
    if memo and memo_dir is None:
        from .cache import default_cache_dir

        memo_dir = default_cache_dir()
    from .devices import device_map_text, parse_device_map

    spec = resolve_source(source, base=base, memo_dir=memo_dir if memo else None)
    if spec.kind in ("weights", "adapter"):
        # Their base loads first: read the weights file's header / the adapter's files now, so a
        # bad one is refused before the base's weights are (a run did this in resolve_run).
        from .inspect_source import check_source

        check_source(spec)
    device_map = parse_device_map(device_map)
    hf, tok, info = open_hf(spec, dtype=dtype, device_map=device_map, max_memory=max_memory,
                            offload_folder=offload_folder)
    check_finite_weights(hf, spec.label, dtype)
    if device_map is not None:
        device = input_device(hf)
    if tok.pad_token_id is None:
        # Padding is always masked; any id works, and EOS is what the paper's code used.
        tok.pad_token = tok.eos_token
    if spec.kind == "hub" and spec.sha256 == hub_id_sha256(spec.location):
        # Not in the local cache when resolved, fetched just now (online): hash the snapshot.
        spec = resolve_source(Source("hub", spec.location), memo_dir=memo_dir if memo else None)
    try:
        loaded = wrap_hf(hf, tok, spec, device=device, dtype=dtype, info=info)
    except ValueError as exc:
        if device_map is None or "hf_device_map is unsupported" not in str(exc):
            raise
        from .devices import MIXED_MAP_HELP

        placed = sorted({str(v) for v in getattr(hf, "hf_device_map", {}).values()})
        raise ModelSourceError(f"{spec.label}: --device-map {device_map_text(device_map)!r} placed its modules on "
                               f"{', '.join(placed)}. {MIXED_MAP_HELP} With 'auto', a model that does not fit "
                               "on the visible GPUs spills to the CPU: add GPUs or use a smaller dtype.") from exc
    loaded.device_map = device_map_text(device_map)
    return loaded


def check_finite_weights(hf, label: str, dtype: str = "") -> None:
    """ModelSourceError naming the model and the first parameter holding NaN or inf: one cheap
    ``torch.isfinite`` pass over the loaded weights, so a corrupt checkpoint is named before any
    generation (otherwise the statistics pass finds NaN activations, far from the cause).
    Offloaded parameters (on the meta device, loaded per forward) are not read here."""
    import torch

    for name, p in hf.named_parameters():
        if p.device.type == "meta" or not p.is_floating_point():
            continue
        finite = torch.isfinite(p)
        if bool(finite.all()):
            continue
        bad = int((~finite).sum())
        nan = int(torch.isnan(p).sum())
        raise ModelSourceError(
            f"model {label}: weight {name} ({list(p.shape)}, {p.dtype}) holds {bad} non-finite values ({nan} NaN, "
            f"{bad - nan} inf) of {p.numel()}; expected finite weights. The checkpoint is corrupt or diverged"
            + (f" (or it overflowed when cast to {dtype}: try --dtype float32)" if dtype in ("float16", "bfloat16")
               else "")
            + ": use an earlier checkpoint, or re-export this one from a run whose weights are finite.")


def wrap_hf(hf, tok, spec: Source, *, device: str = "cpu", dtype: str = "float32", info: dict | None = None
            ) -> LoadedModel:
    """A ``LoadedModel`` around an HF causal LM already in memory (the organism builder uses
    this): the bridge, and the plain module's hook points for the statistics pass."""
    from transformer_lens.model_bridge import TransformerBridge

    if getattr(hf, "hf_device_map", None) is None:
        hf.to(device)
    # else: dispatched by Accelerate across devices (a device map); its hooks move activations
    # between them, and moving the whole model would undo the placement.
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
        sha256=spec.sha256,
        device=str(device),
        dtype=dtype,
        architecture=arch,
        info=info or {},
        stat_modules=stat_modules,
        record=spec,
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
    device_map=None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
) -> tuple[LoadedModel, LoadedModel]:
    """Load and validate a (base, fine-tuned) pair. A bare weights file as ``model`` is loaded
    onto ``base``'s architecture. ``device_map`` etc.: as in ``load_model``, for both."""
    def placement(which: str) -> dict:
        # Each model offloads into its own subfolder: the two share parameter names.
        folder = None if offload_folder is None else str(Path(offload_folder) / which)
        return dict(device_map=device_map, max_memory=max_memory, offload_folder=folder)

    from .inspect_source import check_same_architecture, check_source

    pb = base if isinstance(base, Source) else parse_source(base)
    pm = model if isinstance(model, Source) else parse_source(model, base=str(base))
    check_source(pb)  # both read without their weights, before either loads
    check_source(pm)
    check_same_architecture(pb, pm)
    b = load_model(base, device=device, dtype=dtype, **placement("base"))
    m = load_model(model, device=device, dtype=dtype, base=base, **placement("model"))
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
    spec = model.record or resolve_source(model.source, memo_dir=None)
    plain, _, _ = open_hf(spec, dtype=model.dtype, device_map=model.device_map or None)
    if getattr(plain, "hf_device_map", None) is None:
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
