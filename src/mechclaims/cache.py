"""Content-addressed, atomic, resumable on-disk results.

A result is addressed by the sha256 of a canonical JSON *key* (model, probe and prompt hashes
plus every setting that changes the numbers). Its directory holds one file per chunk of
prompts, so an interrupted run keeps every chunk it finished and resumes from the next one.
Every write goes to a temporary file in the same directory and is ``os.replace``d into place:
a reader sees the old file or the new one, never half of one.

A chunk is never trusted for where it lies: its metadata records the sha256 of its tensors
(``arrays_sha256``: names, dtypes, shapes and bytes in name order), its chunk index and its
entry's key digest, and ``CacheEntry.load_chunk`` recomputes and compares all three. A chunk that
fails (damaged bytes, a file copied to another index or entry, one written by a mechclaims before
these digests, a non-finite value) is moved aside to ``chunk-NNNN.safetensors.bad`` with a
``CacheIntegrityWarning`` naming the file and what was wrong, and recomputed. Old entries keep
their content address (no version bump): their chunks are recomputed in place, once.

Hashing a file costs about 1.5 GB/s from the page cache and 0.8-0.9 GB/s from disk (sha256 of a
2 GiB file here: 1.4 s warm, 2.4-2.7 s cold; a 16 GB checkpoint: about 11 s warm, 18-20 s cold),
so a file's sha256 is memoised by ``sha256_file_memo`` under its path, size, mtime, inode,
device and ctime. A file replaced by another with the same size and mtime (``cp -p``, ``rsync
-a``, ``tar x``) gets a new ctime, which users cannot set, so it is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ENV_CACHE_DIR = "MECHCLAIMS_CACHE_DIR"
_UMASK = os.umask(0)
os.umask(_UMASK)


def default_cache_dir() -> Path:
    """``$MECHCLAIMS_CACHE_DIR``, else the user's cache dir (``~/.cache/mechclaims`` on Linux)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mechclaims"))


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    if path.is_symlink():  # write through the link, as open(path, "w") would (mechclaims.outputs)
        path = Path(os.path.realpath(path))
    # Defence in depth (mechclaims.outputs checks every output before a run): os.replace swaps the
    # directory entry, so a device, FIFO or socket here would become a regular file; run as root,
    # --report /dev/null would replace the machine's /dev/null.
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(mode):
            from .errors import OutputPathError

            what = "a directory" if stat.S_ISDIR(mode) else f"not a regular file ({stat.filemode(mode)})"
            raise OutputPathError(f"refusing to write {path}: it is {what}, and writing replaces what is there "
                                  "with a regular file; give a regular file path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Atomically write numpy arrays as safetensors (no pickle), with JSON metadata."""
    from safetensors.numpy import save

    payload = save(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()},
        metadata={"mechclaims": json.dumps(meta or {}, sort_keys=True)},
    )
    atomic_write_bytes(path, payload)


def load_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import safe_open

    arrays = {}
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads((f.metadata() or {}).get("mechclaims", "{}"))
        for k in f.keys():
            arrays[k] = f.get_tensor(k)
    return arrays, meta


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


MEMO_FILE = "file-hashes.json"


def _memo_key(p: Path, st: os.stat_result) -> str:
    # size and mtime alone are not enough: cp -p, rsync -a and tar keep both on another file.
    # The inode and device change when a file is replaced, the ctime on any write or replacement,
    # and no user can set a ctime. (Its granularity is the kernel's clock tick: only a rewrite in
    # place within milliseconds of the hashing, keeping size and mtime, could go unseen.)
    return f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_dev}|{st.st_ctime_ns}"


def sha256_file_memo(path: str | Path, memo_dir: str | Path | None) -> str:
    """sha256 of a file, memoised in ``memo_dir/file-hashes.json`` by (path, size, mtime, inode,
    device, ctime), so a large checkpoint is hashed once (see the module docstring for what
    hashing costs). ``memo_dir=None`` hashes without reading or writing a memo.
    An unreadable or malformed memo is treated as absent (and rewritten), never trusted."""
    if memo_dir is None:
        return sha256_file(path)
    p = Path(path).resolve()
    key = _memo_key(p, p.stat())
    memo_file = Path(memo_dir).expanduser() / MEMO_FILE
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    digest = memo.get(key)
    if isinstance(digest, str) and len(digest) == 64:
        return digest
    digest = sha256_file(p)
    if _memo_key(p, p.stat()) != key:  # the file changed while it was read: hash it, do not memoise
        return digest
    # One record per path: the entries of the file's earlier versions go.
    memo = {k: v for k, v in memo.items() if not k.startswith(f"{p}|")}
    memo[key] = digest
    try:
        atomic_write_text(memo_file, json.dumps(memo, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs speed
    return digest


# --------------------------------------------------------------------------------------------
# Model directories: the files that define a model, and their one content hash. Every way of
# naming a model (a directory, a hub snapshot, an organism, an adapter) hashes through here, so
# the same files give the same sha256 however they are named.

# Files whose bytes define a checkpoint's behaviour; hashed for the content address.
HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt")
# Trainer state in checkpoint-N/ folders: not the model, and large (optimizer.pt), so not hashed.
NOT_MODEL_FILES = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "training_args.bin", "trainer_state.json")
NOT_MODEL_PREFIXES = ("rng_state",)
#: The folder a checkpoint's own claim report goes in (``checkpoint-N/mechclaims/claims.json``, the
#: TRL callback's): not the model, so writing it does not change the checkpoint's sha256.
REPORT_DIR = "mechclaims"
#: Sharded-checkpoint indexes (model.safetensors.index.json, pytorch_model.bin.index.json).
INDEX_GLOB = "*.index*.json"


def is_model_file(f: Path) -> bool:
    return (f.name.endswith(HASHED_SUFFIXES) and f.name not in NOT_MODEL_FILES
            and not f.name.startswith(NOT_MODEL_PREFIXES))


def index_shards(root: str | Path) -> list[Path]:
    """The shard files named by the weight maps of ``root``'s sharded-checkpoint indexes, as
    paths inside ``root``. transformers loads whatever an index names; a shard outside the
    directory (an absolute path, ``../x.safetensors``) would be loaded without being part of the
    directory's hash, so it is refused (ModelSourceError), as is an index naming a missing shard."""
    from .errors import ModelSourceError

    root = Path(root)
    shards: set[Path] = set()
    for index in sorted(root.glob(INDEX_GLOB)):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelSourceError(f"{index}: not a readable sharded-checkpoint index ({exc}); expected JSON "
                                   "with a weight_map of tensor -> shard file, as save_pretrained writes it. "
                                   "Re-save the model or remove the broken index.") from exc
        if not isinstance(weight_map, dict):
            raise ModelSourceError(f"{index}: has no weight_map object; expected tensor -> shard file, as "
                                   "save_pretrained writes it. Re-save the model or remove the broken index.")
        for name in sorted({str(v) for v in weight_map.values()}):
            rel = os.path.normpath(name)
            if not name.strip() or os.path.isabs(name) or rel == ".." or rel.startswith(".." + os.sep):
                raise ModelSourceError(
                    f"{index} names the shard {name!r}, which lies outside the model directory {root}; "
                    "expected shard files inside it, named relative to it (as save_pretrained writes "
                    "them). Move the shard into the directory and name it by its file name in the index.")
            shard = root / rel
            if not shard.is_file():
                raise ModelSourceError(f"{index} names the shard {name!r}, which does not exist (looked at "
                                       f"{shard}); the checkpoint is incomplete: copy or download the shard.")
            shards.add(shard)
    return sorted(shards)


def sha256_model_dir(root: str | Path, memo_dir: str | Path | None = None, *, adapter_on: str | None = None) -> str:
    """Content hash of a model directory: for each model file (``is_model_file``, in any
    subfolder, plus every shard its index names) in path order, its relative path and sha256.
    ``adapter_on``: for a PEFT adapter directory, the sha256 of the base it is merged into (the
    adapter's files alone do not define the model). File hashes are memoised in ``memo_dir``."""
    root = Path(root)
    files = {f for f in root.rglob("*") if f.is_file() and is_model_file(f)
             and REPORT_DIR not in f.relative_to(root).parts[:-1]} | set(index_shards(root))
    h = hashlib.sha256()
    if adapter_on is not None:
        h.update(f"adapter on {adapter_on}".encode())
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode())
        h.update(sha256_file_memo(f, memo_dir).encode())
    return h.hexdigest()


def key_digest(key: dict[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of ``key``."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class CacheIntegrityWarning(UserWarning):
    """A cached chunk failed its integrity check; it is moved aside and recomputed, never used."""


def _canonical(a) -> np.ndarray:
    """C-contiguous, little-endian: how safetensors stores an array, so a digest taken before
    the save equals the one taken after the load."""
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of a chunk's content: for each array in name order, its name, dtype and shape
    (one JSON line), then its bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = _canonical(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\n")
        h.update(a.tobytes())
    return h.hexdigest()


def _nonfinite(arrays: dict[str, np.ndarray], allowed) -> str:
    """'N non-finite value(s) in NAME' for the first float array (not in ``allowed``) holding
    NaN or inf, else ''."""
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if name not in allowed and a.dtype.kind in "fc" and not np.isfinite(a).all():
            return f"{int((~np.isfinite(a)).sum())} non-finite value(s) in {name!r}"
    return ""


class ResultCache:
    """One directory per content address, one safetensors file per finished chunk.

    ``root=None`` means caching is off: nothing is read or written.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = None if root is None else Path(root).expanduser()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def entry(self, key: dict[str, Any], *, nonfinite_ok: tuple[str, ...] = ()) -> "CacheEntry":
        """The entry of ``key``. ``nonfinite_ok``: the arrays that may hold NaN by design (a
        perplexity not measured); any other non-finite value makes a chunk bad."""
        return CacheEntry(self, key, nonfinite_ok=nonfinite_ok)


class CacheEntry:
    def __init__(self, cache: ResultCache, key: dict[str, Any], *, nonfinite_ok: tuple[str, ...] = ()):
        self.key = key
        self.digest = key_digest(key)
        self.dir = None if cache.root is None else cache.root / "results" / self.digest[:2] / self.digest
        self.nonfinite_ok = tuple(nonfinite_ok)

    def _chunk_path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:04d}.safetensors"

    def load_chunk(self, k: int) -> dict[str, np.ndarray] | None:
        """Chunk ``k``, or None when it is absent or fails its check (then it is moved aside with
        a CacheIntegrityWarning and the caller recomputes it)."""
        if self.dir is None:
            return None
        p = self._chunk_path(k)
        if not p.exists():
            return None
        try:
            arrays, meta = load_arrays(p)
        except Exception as exc:  # noqa: BLE001 - a damaged file is recomputed, never trusted
            return self._reject(p, f"it is not a readable safetensors file ({type(exc).__name__}: {exc})")
        problem = self._problem(k, arrays, meta)
        return self._reject(p, problem) if problem else arrays

    def _problem(self, k: int, arrays: dict, meta) -> str:
        if not isinstance(meta, dict):
            return "its metadata is not a JSON object"
        if meta.get("key_digest") != self.digest:
            return (f"it belongs to another cache entry (key digest {str(meta.get('key_digest'))[:12]}, "
                    f"expected {self.digest[:12]}): a file copied between entries")
        if meta.get("chunk") != k:
            return f"it holds chunk {meta.get('chunk')!r}, not chunk {k}: a file copied to another index"
        if "sha256" not in meta:
            return "it carries no content digest (written by an earlier mechclaims)"
        if arrays_sha256(arrays) != meta["sha256"]:
            return "its tensor bytes do not match their recorded sha256 (the file is damaged)"
        bad = _nonfinite(arrays, self.nonfinite_ok)
        return f"it holds {bad}" if bad else ""

    def _reject(self, p: Path, why: str) -> None:
        aside = p.with_name(p.name + ".bad")
        moved = ""
        if _writes():  # rank 0 owns the cache directory; every rank recomputes
            try:
                os.replace(p, aside)
                moved = f"; moved aside to {aside.name}"
            except OSError:
                pass
        warnings.warn(f"mechclaims cache: ignoring {p}: {why}{moved}. The chunk is recomputed.",
                      CacheIntegrityWarning, stacklevel=3)
        return None

    def load_meta(self) -> dict | None:
        if self.dir is None or not (self.dir / "meta.json").exists():
            return None
        try:
            return json.loads((self.dir / "meta.json").read_text())
        except ValueError:
            return None

    def save_meta(self, meta: dict) -> None:
        if self.dir is not None and _writes():
            atomic_write_text(self.dir / "meta.json", json.dumps(meta, sort_keys=True, default=str))

    def save_chunk(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        """Write chunk ``k`` with its key digest, index and content sha256. A chunk holding a
        non-finite value (outside ``nonfinite_ok``) is not written: it would be refused on read."""
        if self.dir is None or not _writes():
            return
        arrays = {name: _canonical(a) for name, a in arrays.items()}
        if _nonfinite(arrays, self.nonfinite_ok):
            return
        if not (self.dir / "key.json").exists():
            atomic_write_text(self.dir / "key.json", json.dumps(self.key, sort_keys=True, indent=2, default=str))
        save_arrays(self._chunk_path(k), arrays, {"key_digest": self.digest, "chunk": k,
                                                  "sha256": arrays_sha256(arrays)})


def _writes() -> bool:
    """Only rank 0 of a data-parallel run writes the cache (``mechclaims.distributed``)."""
    from .distributed import world

    return world().is_writer
