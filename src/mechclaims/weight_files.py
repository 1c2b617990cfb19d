"""Weight files read without running them: safetensors headers (``read_safetensors_header``:
every tensor's dtype, shape and byte range, checked against the file's size), pickle opcodes
(``check_pickle``: the classes and functions a pickle names, disassembled, never executed), and
torch.load's errors as the project words them (``torch_load_error``). Imports no torch until a
pickle is looked at."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from .errors import ModelSourceError, UnsafeCheckpoint

# safetensors refuses headers above 100 MB; a larger length field is garbage, not a header.
_MAX_HEADER = 100_000_000
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_REEXPORT = ("expected a complete .safetensors file (safetensors.torch.save_file or save_pretrained "
             "output). Re-download or re-export it.")


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
# Pickles, disassembled


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


__all__ = ["read_safetensors_header", "check_pickle", "unsafe_pickle_message", "torch_load_error", "is_pickle_file",
           "torch_reason", "torch_refusal_text", "not_safetensors_message"]
