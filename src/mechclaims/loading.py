"""Model sources -> validated TransformerBridge pairs.

A *model source* (a local HF directory, a hub id, ``BASE::WEIGHTS``, a PEFT adapter or
``organism:NAME``; see ``mechclaims.opening``) is opened as a plain HF module by
``opening.open_hf`` and wrapped here as a ``LoadedModel``.

Every model is loaded through TransformerLens 4.x ``TransformerBridge`` over the *raw* HF
weights: no ``enable_compatibility_mode()`` (no LayerNorm folding, no centring of ``W_out``),
so the value vectors are exactly the checkpoint's ``c_proj`` / ``down_proj`` rows (paper A18).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IncompatibleCheckpoints, ModelSourceError
from .inspect_source import SUPPORTED_MODEL_TYPES  # noqa: F401 - re-exported: the families read
# Re-exported: these lived here before opening.py. load_model and parity_check call ``open_hf``
# through this module's name, so a test that patches ``loading.open_hf`` still sees those calls.
from .opening import (  # noqa: F401
    _torch_dtype,
    input_device,
    is_offloaded,
    load_state_dict,
    materialized,
    open_hf,
    safe_torch_load,
)
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
