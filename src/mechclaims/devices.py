"""Where a model runs: device maps for models larger than one device, and the batch size that a
GPU's free memory allows.

Ground floor apart from ``errors``: pure functions, no torch at import. ``loading`` reads the
device map; the statistics pass is where the automatic batch size belongs (see
``resolve_batch_size``).

Device maps are Accelerate's, as ``transformers``' ``from_pretrained(..., device_map=...)``
takes them: a strategy name (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``) or a
mapping from module names to devices (``{"transformer.h.0": 0, "transformer.h.1": 1, ...}``;
``"cpu"`` and ``"disk"`` offload). On the command line a mapping is written as JSON.

Automatic batch size (GPU only, and only when the user gave none)::

    batch = clamp(floor(free_bytes * 0.5 / bytes_per_row), 1, 256)

``free_bytes`` is ``torch.cuda.mem_get_info(device)[0]`` measured with both models loaded;
``bytes_per_row`` (``row_bytes``) is one prompt's peak during the greedy pass: its KV cache for
prompt + T tokens in every layer, the prefill's largest live activations (one layer's
residual, QKV, MLP hidden and eager attention scores over the prompt), the last position's
logits and the statistics hooks' float64 temporaries. The factor 0.5 leaves room for the
allocator's fragmentation, ``DynamicCache``'s concatenation (a layer's cache briefly exists
twice) and whatever the estimate misses. On a CPU the batch stays 32 (``DEFAULT_CPU_BATCH``):
there the batch size only trades per-call overhead against cache locality, and 32 is where
the benchmarks flatten out.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import ConfigError

#: Accelerate's named placement strategies.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
#: Source kinds (``sources.Source.kind``) that a device map applies to: transformers loads them.
DEVICE_MAP_KINDS = ("dir", "hub")
#: Device names a mapping may use besides a CUDA index (int) or ``cuda:N``.
_NAMED_DEVICES = ("cpu", "disk", "mps")

DEFAULT_CPU_BATCH = 32
AUTO_BATCH_FRACTION = 0.5
AUTO_BATCH_MIN, AUTO_BATCH_MAX = 1, 256

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


# --------------------------------------------------------------------------------------------
# Device maps


def parse_device_map(value: Any) -> str | dict[str, int | str] | None:
    """``--device-map`` as given -> what ``from_pretrained(device_map=...)`` takes, or None.

    ``""``/None -> None (one device, ``--device``); a strategy name; a JSON object string or a
    mapping of module name -> device (a CUDA index, ``cuda:N``, ``cpu``, ``disk``, ``mps``).
    Raises ConfigError for anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text in DEVICE_MAP_STRATEGIES:
            return text
        if not text.startswith("{"):
            raise ConfigError(f"--device-map {value!r}: expected one of {DEVICE_MAP_STRATEGIES} or a JSON "
                              'object of module -> device, e.g. \'{"transformer.h.0": 0, "lm_head": 1}\'.')
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--device-map: not a valid JSON object ({exc}).") from exc
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"--device-map must be a strategy name or a non-empty mapping, got {value!r}.")
    out: dict[str, int | str] = {}
    for name, dev in value.items():
        if isinstance(dev, bool) or not (
            (isinstance(dev, int) and dev >= 0)
            or (isinstance(dev, str) and (dev in _NAMED_DEVICES or _is_cuda_name(dev)))
        ):
            raise ConfigError(f"--device-map: module {name!r} is mapped to {dev!r}; a device is a CUDA "
                              f"index (0, 1, ...), cuda:N, or one of {_NAMED_DEVICES}.")
        out[str(name)] = dev
    return out


def _is_cuda_name(dev: str) -> bool:
    kind, _, index = dev.partition(":")
    return kind == "cuda" and (index == "" or index.isdigit())


def device_map_text(device_map: str | Mapping | None) -> str:
    """The canonical string of a device map (config, cache keys, reports): ``""`` for none."""
    if device_map is None:
        return ""
    if isinstance(device_map, str):
        return device_map
    return json.dumps(dict(device_map), sort_keys=True)


# TransformerLens 4.x (TransformerBridge) refuses a realised device map that puts some modules
# on a GPU and others on the CPU or disk (seen on an H200: "device_map mixes CPU/disk offload
# targets with a GPU target"). All-GPU maps and all-CPU/disk maps load.
MIXED_MAP_HELP = ("TransformerLens 4.x refuses a device map that mixes a GPU with CPU/disk offload: map every "
                  "module to a GPU (several GPUs: --device-map auto, or a JSON object of module -> cuda:N), or "
                  "every module to cpu/disk.")


def check_map_devices(device_map, *, cuda_count: int | None = None, mps_available: bool | None = None) -> None:
    """Every device a module -> device map names must exist on this machine: a CUDA index ``N``
    (the same as ``cuda:N``) below ``torch.cuda.device_count()``, ``mps`` where MPS is available;
    ``cpu`` and ``disk`` always. A strategy name (``auto``, ...) places on what exists. Without this
    a map naming a missing GPU is ignored or fails deep inside Accelerate. ``cuda_count`` and
    ``mps_available`` replace the machine's in tests."""
    if not isinstance(device_map, Mapping):
        return
    if cuda_count is None or mps_available is None:
        import torch

        if cuda_count is None:
            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if mps_available is None:
            mps = getattr(torch.backends, "mps", None)
            mps_available = bool(mps and mps.is_available())
    here = ("this machine has no CUDA device" if cuda_count == 0 else
            f"this machine has {cuda_count} CUDA device(s): 0 .. {cuda_count - 1}")
    for name, dev in device_map.items():
        index = dev if isinstance(dev, int) and not isinstance(dev, bool) else None
        if isinstance(dev, str) and _is_cuda_name(dev):
            index = int(dev.partition(":")[2] or 0)
        if index is not None and index >= cuda_count:
            raise ConfigError(
                f"--device-map: module {name!r} is mapped to {dev!r} (cuda:{index}), but {here}. Map it to a "
                "GPU that exists, or to \"cpu\"/\"disk\" on a machine without one, or use --device-map auto.")
        if dev == "mps" and not mps_available:
            raise ConfigError(f"--device-map: module {name!r} is mapped to 'mps', but MPS is not available on this "
                              "machine; map it to \"cpu\" or a CUDA device.")


def check_map_modules(device_map, config: Mapping | None, label: str) -> None:
    """Every module a device map names must be in the model's module tree, and the map must place
    every weight (Accelerate's rule; transformers 5 silently ignores an unknown name and loads an
    unplaced module wherever it likes). The tree is built from ``config`` (the model's
    config.json) on the meta device: no weights are read and no memory is taken.

    ``""`` (the whole model), module names and parameter names are accepted as keys. Nothing is
    checked for a strategy name, without a config, or for a config transformers cannot build (the
    loader reports that one). Raises ConfigError naming the unknown or unplaced modules and a few
    valid top-level names."""
    if not isinstance(device_map, Mapping) or not config:
        return
    tree = _module_tree(json.dumps(dict(config), sort_keys=True, default=str))
    if tree is None:
        return
    names, params, top = tree
    unknown = [k for k in device_map if k != "" and k not in names]
    if unknown:
        import difflib

        hints = []
        for k in unknown[:3]:
            close = difflib.get_close_matches(k, names, n=1)
            if close:
                hints.append(f"{k!r} -> {close[0]!r}?")
        raise ConfigError(
            f"--device-map names {len(unknown)} module(s) that {label} does not have: "
            f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}"
            f"{' (' + '; '.join(hints) + ')' if hints else ''}. Its top-level modules are "
            f"{', '.join(top[:8])}{' ...' if len(top) > 8 else ''}; map those (or \"\" for the whole model), or "
            "use --device-map auto.")
    if "" in device_map:
        return
    keys = tuple(device_map)
    unplaced = [p for p in params if not any(p == k or p.startswith(k + ".") for k in keys)]
    if unplaced:
        shown = _shallowest(unplaced, params)
        raise ConfigError(
            f"--device-map places no device for {len(unplaced)} weight(s) of {label}: "
            f"{', '.join(shown[:6])}{' ...' if len(shown) > 6 else ''}. Every weight needs a device: add those "
            "modules to the map (or \"\" for the rest of the model), or use --device-map auto.")


def _shallowest(unplaced: list[str], params: tuple[str, ...]) -> list[str]:
    """The shallowest module prefixes whose weights are all unplaced (``transformer.h.1`` rather
    than each of its twelve weights)."""
    missing, out = set(unplaced), []
    for p in unplaced:
        parts = p.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            under = [q for q in params if q == prefix or q.startswith(prefix + ".")]
            if all(q in missing for q in under):
                if prefix not in out:
                    out.append(prefix)
                break
    return out


@functools.lru_cache(maxsize=8)
def _module_tree(config_json: str) -> tuple[frozenset, tuple[str, ...], list[str]] | None:
    """(module, parameter and buffer names; unique parameter names; top-level module names) of
    the model a config.json describes, built on the meta device. None when it cannot be built."""
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(**json.loads(config_json))
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()  # not applied under init_empty_weights; a tied lm_head is placed with its owner
    except Exception:  # noqa: BLE001 - an unknown family or a broken config: the loader says which
        return None
    names = frozenset(
        [n for n, _ in model.named_modules() if n]
        + [n for n, _ in model.named_parameters(remove_duplicate=False)]
        + [n for n, _ in model.named_buffers(remove_duplicate=False)])
    params = tuple(n for n, _ in model.named_parameters())  # tied weights once: placed with their owner
    top = []
    for a, child in model.named_children():
        for b, grandchild in (list(child.named_children()) or [("", None)]):
            name = f"{a}.{b}" if b else a
            n = len(list(grandchild.children())) if grandchild is not None else 0
            # A list of blocks is mapped block by block: show "transformer.h.0 .. transformer.h.11".
            listed = n and all(k.isdigit() for k, _ in grandchild.named_children())
            top.append(f"{name}.0 .. {name}.{n - 1}" if listed else name)
    return names, params, top


def mixes_gpu_and_offload(device_map) -> bool:
    """True when a module -> device map puts modules both on an accelerator and on cpu/disk."""
    if not isinstance(device_map, Mapping):
        return False
    kinds = {"offload" if str(v) in ("cpu", "disk") else "gpu" for v in device_map.values()}
    return kinds == {"offload", "gpu"}


def placement_key(device: str, device_map=None) -> dict:
    """Where a model ran, as cache keys record it, computable before any model is loaded.

    Without a map: the device type (``cuda:0`` and ``cuda:3`` run the same kernels). With one:
    ``device_type: "map"`` plus the map as given, canonical (a strategy such as ``auto`` is
    keyed by its name: a layer computes the same on any GPU of one type, so only a placement
    that moves layers between device types, GPU or CPU, can change the last bits of a sum).
    """
    text = device_map_text(parse_device_map(device_map or None))
    return {"device_type": "map", "device_map": text} if text else {"device_type": str(device).split(":")[0]}


# --------------------------------------------------------------------------------------------
# Automatic batch size


@dataclass(frozen=True)
class RowShape:
    """What one prompt's memory during the greedy pass depends on."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    kv_width: int      # n_kv_heads * d_head (== d_model without grouped-query attention)
    d_vocab: int
    dtype_bytes: int

    @classmethod
    def of(cls, model) -> RowShape:
        """From a ``LoadedModel`` (its TransformerLens config)."""
        cfg = model.cfg
        n_heads = int(cfg.n_heads)
        d_head = int(getattr(cfg, "d_head", None) or cfg.d_model // n_heads)
        n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
        return cls(n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), d_mlp=int(cfg.d_mlp),
                   n_heads=n_heads, kv_width=n_kv * d_head, d_vocab=int(cfg.d_vocab),
                   dtype_bytes=_DTYPE_BYTES.get(str(model.dtype), 4))


def row_bytes(shape: RowShape, prompt_tokens: int, new_tokens: int) -> int:
    """Estimated peak bytes one batch row needs during the greedy pass (see the module doc)."""
    if prompt_tokens < 1 or new_tokens < 1:
        raise ConfigError(f"prompt_tokens and new_tokens must be >= 1, got {prompt_tokens}, {new_tokens}.")
    b, s, p = shape.dtype_bytes, prompt_tokens + new_tokens, prompt_tokens
    kv_cache = 2 * (shape.n_layers + 1) * s * shape.kv_width * b   # K and V; +1: one layer's cat copy
    # Prefill, one layer alive at a time: residual, LN out, QKV, attention out, MLP hidden (pre
    # and post activation), MLP out; eager attention scores and their softmax over the prompt.
    prefill = p * (7 * shape.d_model + 2 * shape.d_mlp) * b + 2 * shape.n_heads * p * p * b
    logits = shape.d_vocab * (b + 4)     # logits_to_keep=1, plus a float32 copy for the argmax
    # The statistics' float64 per-row partials (hook_post, MLP out, resid_post, every layer),
    # twice: ``take`` stacks them before summing rows by chunk.
    hooks = 2 * shape.n_layers * (shape.d_mlp + 2 * shape.d_model) * 8
    return int(kv_cache + prefill + logits + hooks)


def auto_batch_size(free_bytes: int, bytes_per_row: int, *, fraction: float = AUTO_BATCH_FRACTION,
                    lo: int = AUTO_BATCH_MIN, hi: int = AUTO_BATCH_MAX) -> int:
    """``clamp(floor(free_bytes * fraction / bytes_per_row), lo, hi)``."""
    if bytes_per_row <= 0:
        raise ConfigError(f"bytes_per_row must be positive, got {bytes_per_row}.")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}.")
    n = math.floor(max(int(free_bytes), 0) * fraction / bytes_per_row)
    return max(lo, min(hi, n))


def resolve_batch_size(requested: int | None, device: str, shape: RowShape, prompt_tokens: int,
                       new_tokens: int, *, mem_get_info: Callable[[Any], tuple[int, int]] | None = None) -> int:
    """The batch size the statistics pass should use.

    ``requested`` (the user's ``--batch-size``/``batch_size``) always wins. Otherwise: on a CUDA
    device ``auto_batch_size(free, row_bytes(...))`` with ``free`` from
    ``torch.cuda.mem_get_info(device)`` (``mem_get_info`` replaces it in tests); anywhere else
    ``DEFAULT_CPU_BATCH``. Call it after both models are loaded, so ``free`` excludes their
    weights.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {requested!r}.")
        return int(requested)
    if not str(device).startswith("cuda"):
        return DEFAULT_CPU_BATCH
    if mem_get_info is None:
        import torch

        mem_get_info = torch.cuda.mem_get_info
    free, _total = mem_get_info(device)
    return auto_batch_size(free, row_bytes(shape, prompt_tokens, new_tokens))
