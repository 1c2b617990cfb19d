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
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from .errors import ConfigError, IncompatibleCheckpoints, ModelSourceError, UnsafeCheckpoint, UnsupportedModel
from .sources import ADAPTER_CONFIG, Source

# Model families this tool reads (config.json ``model_type``); each must be a causal LM.
SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "gemma", "gemma2")
# Files of which at least one group must be present for a directory's tokenizer to be usable
# (tokenizer_config.json alone holds no vocabulary).
TOKENIZER_FILE_GROUPS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))
TOKENIZER_FILES_LOOKED_FOR = "tokenizer.json, tokenizer_config.json, vocab.json+merges.txt, tokenizer.model"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# safetensors refuses headers above 100 MB; a larger length field is garbage, not a header.
_MAX_HEADER = 100_000_000
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_REEXPORT = ("expected a complete .safetensors file (safetensors.torch.save_file or save_pretrained "
             "output). Re-download or re-export it.")


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
# safetensors headers


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors a safetensors file declares, ``{name: {"dtype", "shape", "data_offsets",
    "file"}}``, read from its header alone (the first 8 + N bytes), after checking that the
    declared byte ranges tile the rest of the file exactly. ModelSourceError naming the file
    otherwise: a truncated file, a header that is not JSON, sizes that do not add up."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelSourceError(f"{str(path)!r} is truncated or not a safetensors file: it has {size} "
                                   f"bytes, fewer than the 8 of the header length; {_REEXPORT}")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise ModelSourceError(
                f"{str(path)!r} is truncated or not a safetensors file: its first 8 bytes give a header of {n} "
                f"bytes, but {size - 8} bytes follow them; {_REEXPORT}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelSourceError(
            f"{str(path)!r} is truncated or not a safetensors file: its {n}-byte header is not JSON "
            f"({type(exc).__name__}: {exc}); {_REEXPORT}") from exc
    if not isinstance(header, dict):
        raise ModelSourceError(f"{str(path)!r} is truncated or not a safetensors file: its header is a JSON "
                               f"{type(header).__name__}, not an object of tensors; {_REEXPORT}")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, t in tensors.items():
        spans.append((*_tensor_span(path, name, t), name))
        t["file"] = str(path)
    data = size - 8 - n
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise ModelSourceError(
                f"{str(path)!r}: its header leaves bytes {end}..{begin} of the data unused or used twice (at "
                f"tensor {name!r}); expected tensors that tile the data. The file is damaged: {_REEXPORT}")
        end = stop
    if end != data:
        raise ModelSourceError(
            f"{str(path)!r} is truncated or not a safetensors file: its header declares {end} bytes of tensor "
            f"data, the file holds {data} after the header"
            f"{' (it was cut short)' if data < end else ' (extra bytes at the end)'}; {_REEXPORT}")
    return tensors


def _tensor_span(path: Path, name: str, t) -> tuple[int, int]:
    """(begin, end) of one header entry, checked against its dtype and shape."""
    ok = (isinstance(t, dict) and isinstance(t.get("dtype"), str) and isinstance(t.get("shape"), list)
          and all(isinstance(d, int) and d >= 0 for d in t["shape"])
          and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
          and all(isinstance(o, int) for o in t["data_offsets"]) and 0 <= t["data_offsets"][0] <= t["data_offsets"][1])
    if not ok:
        raise ModelSourceError(f"{str(path)!r}: the header entry of tensor {name!r} is {t!r}; expected "
                               "{dtype, shape, data_offsets: [begin, end]}. The file is damaged: " + _REEXPORT)
    begin, end = t["data_offsets"]
    itemsize = _DTYPE_BYTES.get(t["dtype"])
    if itemsize is not None:
        need = itemsize
        for d in t["shape"]:
            need *= d
        if end - begin != need:
            raise ModelSourceError(
                f"{str(path)!r}: tensor {name!r} ({t['dtype']} {t['shape']}) needs {need} bytes, its header gives "
                f"it {end - begin} (data_offsets [{begin}, {end}]); the header does not match the data. "
                + _REEXPORT)
    return begin, end


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
# Weights files, adapters and pickles


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


def check_pickle(path: Path, *, fix: str = "") -> None:
    """UnsafeCheckpoint when the pickle in ``path`` names classes or functions that
    ``torch.load(weights_only=True)`` refuses; ModelSourceError when ``path`` is neither torch's
    zip format nor a pickle. The pickle is disassembled, never run. A file whose globals cannot
    be listed (a TorchScript archive, a damaged pickle) is left to ``torch.load`` at load time."""
    import zipfile

    bad = None
    if zipfile.is_zipfile(path):
        from torch.serialization import get_unsafe_globals_in_checkpoint

        try:
            bad = get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - torchscript, no data.pkl: torch.load decides
            return
    else:
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:1] != b"\x80":  # PROTO: every pickle torch or Python 3 writes starts with it
            raise ModelSourceError(_not_torch_message(path, head))
        bad = _legacy_unsafe_globals(path)
    if bad:
        raise UnsafeCheckpoint(unsafe_pickle_message(
            str(path), f"It names {', '.join(sorted(bad))}, which torch.load(weights_only=True) does not allow "
                       "(a pickle of tensors names none of them).", fix=fix))


def _legacy_unsafe_globals(path: Path) -> list[str] | None:
    """The refused globals of a legacy (non-zip) torch file: its first four pickles (magic number,
    protocol, system info, the object), disassembled by torch's own opcode reader; None when
    that reader is unavailable or the stream is not what it expects."""
    try:
        from torch import _weights_only_unpickler as wo

        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
        found: set[str] = set()
        with open(path, "rb") as f:
            for _ in range(4):
                found |= wo.get_globals_in_pkl(f)
        return sorted(found - allowed)
    except Exception:  # noqa: BLE001 - private torch API or an odd stream: torch.load decides
        return None


def _not_torch_message(path: Path, head: bytes) -> str:
    hint = ""
    try:
        read_safetensors_header(path)
        hint = " It is a safetensors file: give it the .safetensors suffix."
    except (ModelSourceError, OSError):
        pass
    return (f"{str(path)!r} is not a torch checkpoint: it is neither torch.save's zip format nor a pickle "
            f"(it starts with {head!r}); expected a file written by torch.save holding a state dict of "
            "tensors. It may be truncated or another format under a .pt/.bin name: re-download or "
            f"re-export it, preferably as .safetensors.{hint}")


def unsafe_pickle_message(path: str, detail: str, *, fix: str = "") -> str:
    """The one message for a pickle that torch.load(weights_only=True) refuses, found before
    loading (``detail``: the globals it names) or by torch.load (``detail``: torch's reason)."""
    return (f"refused to load {path!r}: it is a pickle that torch.load(weights_only=True) will not read, and "
            f"reading it any other way (the unrestricted unpickler) allows arbitrary code execution. {detail} "
            + (fix or "Convert it to .safetensors where it came from, or save only model.state_dict() (tensors)."))


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


# --------------------------------------------------------------------------------------------
# torch.load's errors, as the project words them


def torch_load_error(path: str, exc: BaseException, error: type = ModelSourceError) -> Exception:
    """The error for a file that ``torch.load(weights_only=True)`` could not read: a pickle
    that it refuses (UnsafeCheckpoint), or a file that is no torch checkpoint at all."""
    if "unsupported global" in str(exc).lower() or is_pickle_file(path):
        return UnsafeCheckpoint(unsafe_pickle_message(path, torch_refusal_text(exc)))
    return error(
        f"{path!r} is not a torch checkpoint: torch.load could not read it "
        f"({type(exc).__name__}: {torch_reason(exc)[:200]}); expected a file written by "
        "torch.save holding a state dict of tensors. It may be truncated or another format "
        "under a .pt/.bin name: re-download or re-export it, preferably as .safetensors."
    )


def is_pickle_file(path: str) -> bool:
    """True when ``path`` is a pickle stream: a raw pickle (protocol 2+), or torch's zip format
    holding one. Checked with ``pickletools.dis``, which decodes opcodes and executes none."""
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.endswith(".pkl")]
                if not pkl:
                    return False
                stream = io.BytesIO(z.read(pkl[0]))
        else:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        with stream, open(os.devnull, "w") as sink:
            if stream.read(1) != b"\x80":  # PROTO: every pickle torch or Python 3 writes
                return False
            stream.seek(0)
            pickletools.dis(stream, out=sink)
        return True
    except Exception:  # noqa: BLE001 - any decoding failure: not a pickle
        return False


def _first_paragraph(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of its message
    return text.strip().split("\n\n")[0].strip()


def torch_reason(exc: BaseException) -> str:
    """The first sentence of torch's ``WeightsUnpickler error``, else its first paragraph."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    if reason and reason.group(1).strip():
        return re.split(r"(?<=\.)\s+", reason.group(1).strip())[0]
    return _first_paragraph(exc)


def torch_refusal_text(exc: BaseException) -> str:
    """torch's reason for refusing a pickle and its warning that ``weights_only=False`` can run
    arbitrary code, kept whole (not cut mid-sentence)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]
    parts = [f"torch: {torch_reason(exc).rstrip('.')}."]
    for i, s in enumerate(sentences):
        if "arbitrary code" in s:
            warning = s.removeprefix("(1) ")
            if i + 1 < len(sentences) and sentences[i + 1].startswith("Do it only"):
                warning += " " + sentences[i + 1]
            parts.append("torch warns: " + warning)
            break
    return " ".join(parts)


def not_safetensors_message(path: str, exc: BaseException) -> str:
    return f"{path!r} is truncated or not a safetensors file ({type(exc).__name__}: {exc}); {_REEXPORT}"


__all__ = ["SUPPORTED_MODEL_TYPES", "check_source", "check_same_architecture", "check_not_same", "inspect_pair",
           "read_safetensors_header", "check_shapes", "check_pickle", "config_dims", "unsafe_pickle_message"]
