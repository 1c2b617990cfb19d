"""Model sources -> the plain Hugging Face module and tokenizer, before any TransformerLens.

``open_hf`` is the one place a resolved ``sources.Source`` becomes an HF causal LM. A source is

- a local Hugging Face directory (``save_pretrained`` output),
- a hub id (``gpt2-medium``, ``org/name``), read from the local HF cache; it is fetched only
  when the user is online (``HF_HUB_OFFLINE`` unset) and names it,
- a base plus a weights file, written ``BASE::WEIGHTS`` (``gpt2-medium::dpo.pt``), the form in
  which the paper's GPT-2 DPO checkpoint was released. ``.safetensors`` is read directly;
  ``.pt``/``.bin`` only with ``torch.load(weights_only=True)``, so a pickle that carries code
  is refused. In a pair, a bare weights file as the model means ``BASE::WEIGHTS``.
- a PEFT adapter, merged into a fresh copy of its base (``adapters.merge_adapter``),
- ``organism:NAME``, one of the project's own small model organisms (``mechclaims.organism``).

Also here: safe weight reading (``load_state_dict``, ``safe_torch_load``), and Accelerate's
device-map placement (``device_map`` for ``dir``/``hub`` sources; ``input_device``,
``is_offloaded``, ``materialized`` for a dispatched model). ``loading`` wraps what this opens.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .cache import index_shards
from .choices import DTYPES
from .errors import ModelSourceError, UnsafeCheckpoint
from .inspect_source import SUPPORTED_MODEL_TYPES
from .inspect_source import check_family as _check_family
from .inspect_source import check_custom_tokenizer as _check_custom_tokenizer
from .inspect_source import check_tokenizer_files as _check_tokenizer_files
from .sources import Source
from .weight_files import not_safetensors_message as _not_safetensors_message
from .weight_files import torch_load_error as _torch_load_error
from .weight_files import torch_refusal_text as _torch_refusal_text


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


# --------------------------------------------------------------------------------------------
# Device-map placement


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


# --------------------------------------------------------------------------------------------
# Reading each kind: transformers' errors, config, tokenizer, pickled weights, adapters


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


# --------------------------------------------------------------------------------------------
# Weights files, read safely


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

