"""A model source read without its weights: what can be wrong with it, found before loading.

``check_source(spec)`` reads what defines a checkpoint but costs no weights: ``config.json``
(the family must be supported), the tokenizer files, ``adapter_config.json``, the headers of its
``.safetensors`` files (8-byte little-endian length + JSON: every tensor's dtype, shape and
byte range) and the opcodes of its pickles (which classes and functions they name; nothing is
executed). It refuses, naming the file, what was expected and what to do:

- a ``model_type`` outside ``SUPPORTED_MODEL_TYPES`` or a model that is no causal LM;
- a directory without tokenizer files, or whose tokenizer is custom code with no ``tokenizer.json``;
- a pickle (``pytorch_model.bin``, ``adapter_model.bin``, a ``.pt`` weights file) that
  ``torch.load(weights_only=True)`` would refuse (UnsafeCheckpoint), or that is no torch file;
- a safetensors header that is not JSON, or whose byte ranges do not match the file (truncated);
- a tensor whose shape contradicts ``config.json`` (e.g. a GPT-2 ``c_fc`` saved transposed);
- a sharded index naming a shard that is not safetensors, or no shard at all.

``runspec.resolve_run`` calls it for the base and the model before anything is hashed or loaded,
so a bad input stops a run before the base is loaded (and before the cache directory is written);
``loading.load_pair`` and ``loading.load_model`` (for weights files and adapters, whose base
loads first) call it too. ``check_same_architecture`` compares two sources' ``config.json``
dimensions, and ``check_not_same`` refuses a base and model with one content hash.

The file formats themselves (safetensors headers, pickle opcodes, torch.load's errors) are read
by ``weight_files``; ``read_safetensors_header``, ``check_pickle`` and ``unsafe_pickle_message``
are re-exported here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import ConfigError, IncompatibleCheckpoints, ModelSourceError, UnsupportedModel
from .sources import ADAPTER_CONFIG, Source
from .weight_files import check_pickle, read_safetensors_header, unsafe_pickle_message

# Model families this tool reads (config.json ``model_type``); each must be a causal LM.
SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "gemma", "gemma2")
# Files of which at least one group must be present for a directory's tokenizer to be usable
# (tokenizer_config.json alone holds no vocabulary).
TOKENIZER_FILE_GROUPS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))
TOKENIZER_FILES_LOOKED_FOR = "tokenizer.json, tokenizer_config.json, vocab.json+merges.txt, tokenizer.model"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


# --------------------------------------------------------------------------------------------
# One source


def check_source(spec: Source) -> None:
    """Every check that reads no weights, for one (parsed or resolved) source; see the module
    docstring. ``organism`` sources are the project's own and skip them; a hub id that is not in
    the local cache has nothing local to read yet."""
    if spec.kind == "organism":
        return
    if spec.kind in ("weights", "adapter"):
        check_source(spec.base)
        if spec.kind == "adapter":
            check_adapter_dir(Path(spec.location))
            return
        config, where = source_config(spec.base)
        check_weights_file(Path(spec.location), config, where)
        return
    root = model_root(spec)
    if root is None or not (root / "config.json").is_file():
        return
    config = read_config(root / "config.json")
    check_family(config, str(root / "config.json"))
    if spec.kind == "hub" and os.environ.get("HF_HUB_OFFLINE", "") in ("", "0"):
        return  # online, transformers fetches what the local snapshot lacks: only its config is final
    check_tokenizer_files(root)
    check_custom_tokenizer(root)
    check_weight_files(root, config)


def model_root(spec: Source) -> Path | None:
    """The directory holding a ``dir`` or ``hub`` source's files (a hub id's local snapshot), or None."""
    if spec.kind == "dir":
        return Path(spec.location)
    if spec.kind == "hub":
        from .sources import hub_snapshot_dir

        return hub_snapshot_dir(spec.location)
    return None


def source_config(spec: Source) -> tuple[dict | None, str]:
    """(config.json as a dict, its path) of a source; (None, "") where there is none to read
    (an organism: the project's own, built consistent; a hub id not in the local cache).
    Weights and adapters use their base's."""
    if spec.kind in ("weights", "adapter"):
        return source_config(spec.base)
    root = model_root(spec)
    if root is None or not (root / "config.json").is_file():
        return None, ""
    return read_config(root / "config.json"), str(root / "config.json")


def read_config(path: Path) -> dict:
    """A JSON object file (config.json, adapter_config.json), or ModelSourceError naming it."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(
            f"{path}: could not read it ({type(exc).__name__}: {exc}); expected the JSON object that "
            "save_pretrained() writes. Re-save the model or restore the file.") from exc
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path}: got a JSON {type(config).__name__}; expected a JSON object (as "
                               "save_pretrained() writes it). Re-save the model.")
    return config


def check_family(config: dict, where: str) -> None:
    """UnsupportedModel unless ``config`` describes a causal LM of a supported family."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    causal = all(isinstance(a, str) and (a.endswith("ForCausalLM") or a == "GPT2LMHeadModel") for a in archs)
    if model_type not in SUPPORTED_MODEL_TYPES or not causal:
        raise UnsupportedModel(
            f"{where}: got model_type {model_type!r} with architectures {archs}; expected a "
            f"causal language model with model_type one of {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(architecture *ForCausalLM or GPT2LMHeadModel). Encoders (BERT, DistilBERT), "
            "encoder-decoders (T5) and other families (OPT, ...) are not supported: pick a "
            "checkpoint of a supported causal LM family."
        )


def check_tokenizer_files(directory: Path) -> None:
    """ModelSourceError unless ``directory`` holds files that define a tokenizer vocabulary."""
    if any(all((directory / name).is_file() for name in group) for group in TOKENIZER_FILE_GROUPS):
        return
    found = sorted(f.name for f in directory.iterdir() if f.is_file())
    raise ModelSourceError(
        f"{directory}: got no usable tokenizer files (found {found}); expected "
        f"{TOKENIZER_FILES_LOOKED_FOR} (a vocabulary: tokenizer.json, vocab.json+merges.txt or "
        "tokenizer.model). Without them transformers builds a stand-in tokenizer that turns "
        "every prompt into BOS alone. Save the tokenizer next to the model "
        "(tokenizer.save_pretrained(directory))."
    )


def check_custom_tokenizer(directory: Path) -> None:
    """ModelSourceError when the tokenizer is the checkpoint's own code (``auto_map`` in
    tokenizer_config.json) and there is no ``tokenizer.json`` to read instead: mechclaims never
    runs a checkpoint's code (no ``trust_remote_code``), and without it transformers fails with
    a message about converting slow tokenizers."""
    cfg_path = directory / "tokenizer_config.json"
    if (directory / "tokenizer.json").is_file() or not cfg_path.is_file():
        return
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # transformers reports an unreadable tokenizer config itself
    auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
    code = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map
    if not code:
        return
    raise ModelSourceError(
        f"{cfg_path}: its tokenizer is custom code (auto_map AutoTokenizer = {code!r}, class "
        f"{cfg.get('tokenizer_class')!r}) and {directory} has no tokenizer.json; expected a tokenizer.json "
        "(a fast tokenizer, read without running code): mechclaims never runs a checkpoint's own code. "
        "Copy tokenizer.json (and tokenizer_config.json) from the model this checkpoint was trained "
        "from, or save a fast tokenizer next to it where you have reviewed that code.")


# --------------------------------------------------------------------------------------------
# Weight files of a directory


def check_weight_files(root: Path, config: dict) -> None:
    """The weight files transformers would read from ``root``: their headers (safetensors) or
    pickle opcodes, and the tensor shapes against ``config``."""
    where = str(root / "config.json")
    index = root / SAFETENSORS_INDEX
    if index.is_file():
        tensors = {}
        for shard in _index_shards(index, root):
            tensors.update(read_safetensors_header(shard))
        check_shapes(tensors, config, where)
        return
    if (root / "model.safetensors").is_file():
        check_shapes(read_safetensors_header(root / "model.safetensors"), config, where)
        return
    pickles = sorted(root.glob("pytorch_model*.bin"))
    if not pickles:
        found = sorted(f.name for f in root.iterdir())
        raise ModelSourceError(
            f"{root}: no model weights (found {found}); expected model.safetensors, or shards named by "
            f"{SAFETENSORS_INDEX}, as save_pretrained writes them (or pytorch_model.bin). Save the "
            "model's weights into this directory, or pass the directory that holds them.")
    for f in pickles:
        check_pickle(f)


def _index_shards(index: Path, root: Path) -> list[Path]:
    """The shards ``model.safetensors.index.json`` names: each inside ``root`` and present
    (``cache.index_shards``), at least one, and each a safetensors file."""
    from .cache import index_shards

    index_shards(root)  # unreadable index, a shard outside the directory, a missing shard
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    names = sorted({str(v) for v in weight_map.values()})
    if not names:
        raise ModelSourceError(
            f"{index}: its weight_map is empty; expected tensor -> shard file entries for every weight, as "
            "save_pretrained writes them. Re-save the model (or restore the index from where it came).")
    for name in names:
        if not name.endswith(".safetensors"):
            raise ModelSourceError(
                f"{index} names the shard {name!r}, which is not a .safetensors file; expected every shard of "
                f"{SAFETENSORS_INDEX} to be safetensors (transformers would read {name!r} as a pickle, or fail "
                "on it). Re-save the model with save_pretrained (safetensors is its default), or convert the "
                "shard to .safetensors and name it so in the index.")
    return [root / os.path.normpath(n) for n in names]


# --------------------------------------------------------------------------------------------
# Tensor shapes against config.json


def config_dims(config: dict) -> dict:
    """model_type, architecture, n_layers, d_model, d_mlp and d_vocab from a config.json dict
    (the keys of the family's config class: n_embd/hidden_size, n_inner/intermediate_size, ...);
    a field the config does not give is left out."""
    def first(*keys):
        for k in keys:
            if isinstance(config.get(k), int):
                return config[k]
        return None

    d_model = first("n_embd", "hidden_size", "d_model")
    d_mlp = first("n_inner", "intermediate_size")
    if d_mlp is None and config.get("model_type") == "gpt2" and d_model is not None:
        d_mlp = 4 * d_model  # GPT2Config: n_inner None means 4 * n_embd
    archs = config.get("architectures") or []
    dims = {"model_type": config.get("model_type"), "architecture": archs[0] if archs else None,
            "n_layers": first("n_layer", "num_hidden_layers"), "d_model": d_model, "d_mlp": d_mlp,
            "d_vocab": first("vocab_size")}
    return {k: v for k, v in dims.items() if v is not None}


# (regex on the tensor name, expected shape from (d_model, d_mlp, d_vocab), what it is). GPT-2's
# Conv1D stores weights [in, out]; the Llama family's nn.Linear stores [out, in].
_GPT2_SHAPES = (
    (r"(?:^|\.)wte\.weight$", lambda m, f, v: [v, m], "the token embedding (d_vocab, d_model)"),
    (r"(?:^|\.)h\.\d+\.mlp\.c_fc\.weight$", lambda m, f, v: [m, f], "an MLP input weight (Conv1D: d_model, d_mlp)"),
    (r"(?:^|\.)h\.\d+\.mlp\.c_proj\.weight$", lambda m, f, v: [f, m],
     "an MLP output weight (Conv1D: d_mlp, d_model)"),
)
_LLAMA_SHAPES = (
    (r"(?:^|\.)embed_tokens\.weight$", lambda m, f, v: [v, m], "the token embedding (d_vocab, d_model)"),
    (r"(?:^|\.)layers\.\d+\.mlp\.(?:gate|up)_proj\.weight$", lambda m, f, v: [f, m],
     "an MLP input weight (Linear: d_mlp, d_model)"),
    (r"(?:^|\.)layers\.\d+\.mlp\.down_proj\.weight$", lambda m, f, v: [m, f],
     "an MLP output weight (Linear: d_model, d_mlp)"),
)
_SHAPES = {"gpt2": _GPT2_SHAPES, "llama": _LLAMA_SHAPES, "mistral": _LLAMA_SHAPES, "gemma": _LLAMA_SHAPES,
           "gemma2": _LLAMA_SHAPES}


_OTHER_MODEL = ("The weights and config.json describe different models: use the config.json the weights were "
                "saved with (re-save the checkpoint with save_pretrained).")


def check_shapes(tensors: dict[str, dict], config: dict | None, where: str, *, otherwise: str = _OTHER_MODEL) -> None:
    """ModelSourceError when an embedding or MLP weight's shape in a header contradicts
    ``config`` (read from ``where``); a transposed one is named as such, any other mismatch
    gets ``otherwise`` as what to do."""
    if not config:
        return
    dims = config_dims(config)
    rules = _SHAPES.get(dims.get("model_type"))
    m, f, v = dims.get("d_model"), dims.get("d_mlp"), dims.get("d_vocab")
    if rules is None or None in (m, f, v):
        return
    for name, t in tensors.items():
        for pattern, shape_of, what in rules:
            if not re.search(pattern, name.removeprefix("module.")):
                continue
            want, got = tuple(shape_of(m, f, v)), tuple(t["shape"])
            if got != want:
                turned = got == want[::-1]
                raise ModelSourceError(
                    f"{t['file']}: tensor {name!r} has shape {got}; {where} (model_type "
                    f"{dims['model_type']!r}, d_model {m}, d_mlp {f}, vocab_size {v}) expects {want} for "
                    f"{what}. " + (
                        "It is that shape transposed: the weights were written in the other layout (nn.Linear "
                        "[out, in] versus GPT-2's Conv1D [in, out]). Re-export them with save_pretrained from "
                        "the model class of this family, or transpose these matrices when converting."
                        if turned else otherwise)
                )


# --------------------------------------------------------------------------------------------
# Weights files and adapters


def check_weights_file(path: Path, config: dict | None, where: str) -> None:
    """A ``BASE::WEIGHTS`` file: a safetensors header (and shapes against the base's config),
    or a pickle that torch.load(weights_only=True) would read."""
    if path.name.lower().endswith(".safetensors"):
        check_shapes(read_safetensors_header(path), config, where,
                     otherwise="The weights do not fit the base's architecture: is it a fine-tune of this base? "
                               "Give the base it was trained from.")
    else:
        check_pickle(path)


def check_adapter_dir(path: Path) -> None:
    """A PEFT adapter directory: a readable adapter_config.json and adapter weights that PEFT
    will read without running code (a safetensors header, or a pickle of tensors only)."""
    read_config(path / ADAPTER_CONFIG)
    st, pkl = path / "adapter_model.safetensors", path / "adapter_model.bin"
    if st.is_file():
        read_safetensors_header(st)
    elif pkl.is_file():
        check_pickle(pkl, fix="Re-save the adapter with save_pretrained (PEFT writes adapter_model.safetensors) "
                              "where it came from.")
    else:
        found = sorted(f.name for f in path.iterdir())
        raise ModelSourceError(
            f"{path}: an adapter directory ({ADAPTER_CONFIG}) without adapter weights (found {found}); expected "
            "adapter_model.safetensors (or adapter_model.bin), as PEFT's save_pretrained writes them. Copy the "
            "adapter's weights into it.")


# --------------------------------------------------------------------------------------------
# Two sources


def check_same_architecture(base: Source, model: Source) -> None:
    """IncompatibleCheckpoints when the two sources' config.json files disagree on the family or a
    dimension (what ``loading.check_pair`` would find after loading both)."""
    if model.kind in ("weights", "adapter"):
        return  # a weights file or adapter takes its base's architecture (its shapes are checked against it)
    bc, bwhere = source_config(base)
    mc, mwhere = source_config(model)
    if not bc or not mc:
        return
    a, b = config_dims(bc), config_dims(mc)
    for field in ("architecture", "model_type", "n_layers", "d_model", "d_mlp", "d_vocab"):  # check_pair's order
        if field in a and field in b and a[field] != b[field]:
            raise IncompatibleCheckpoints(
                field, a[field], b[field],
                hint=f"Read from {bwhere} (base) and {mwhere} (model), before any weights were loaded: "
                     "give the base this checkpoint was fine-tuned from.")


def check_not_same(model: Source, base: Source, base_from: str) -> None:
    """ConfigError when the model and its base have one content hash: every claim compares the
    two, so with no difference every claim is undefined."""
    if model.sha256 and model.sha256 == base.sha256:
        raise ConfigError(
            f"--model {model.label} and the base {base.label} (from {base_from}) are the same model (sha256 "
            f"{model.sha256[:12]}...): every claim compares a fine-tune with its base, so with no difference "
            "between them every claim is undefined. Expected --model to be the fine-tuned checkpoint and the "
            "base the model it was trained from: check the two paths.")


def inspect_pair(model_s: str, base_s: str, base_from: str) -> None:
    """``check_source`` for a run's base and model, given as strings, and their architectures
    compared, before either is hashed or loaded. A base that came from somewhere other than
    ``--base`` (an adapter's config, config.json) says where, when it cannot be used."""
    from .sources import parse_source

    try:
        base = parse_source(base_s)
        check_source(base)
    except ModelSourceError as exc:
        if base_from.startswith("--base"):
            raise
        origin = base_from
        adapter_cfg = Path(model_s.rsplit("::", 1)[-1]).expanduser() / ADAPTER_CONFIG
        if base_from.startswith(ADAPTER_CONFIG) and adapter_cfg.is_file():
            raw = read_config(adapter_cfg).get("base_model_name_or_path")
            origin = (f"{adapter_cfg} (base_model_name_or_path = {raw!r}; a relative path there is read from the "
                      "adapter directory)")
        raise type(exc)(f"the base {base_s!r} came from {origin} of --model {model_s!r}: {exc} "
                        "Give the base with --base BASE.") from exc
    model = parse_source(model_s, base=base_s)
    check_source(model)
    check_same_architecture(base, model)


__all__ = ["SUPPORTED_MODEL_TYPES", "check_source", "check_same_architecture", "check_not_same", "inspect_pair",
           "read_safetensors_header", "check_shapes", "check_pickle", "config_dims", "unsafe_pickle_message"]
