"""Content-addressed, atomic, resumable on-disk results.

A result is addressed by the sha256 of a canonical JSON *key* (model, probe and prompt hashes
plus every setting that changes the numbers). Its directory holds one file per chunk of
prompts, so an interrupted run keeps every chunk it finished and resumes from the next one.
Every write goes to a temporary file in the same directory and is ``os.replace``d into place:
a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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


def sha256_file_memo(path: str | Path, memo_dir: str | Path | None) -> str:
    """sha256 of a file, memoised in ``memo_dir/file-hashes.json`` by (path, size, mtime), so a
    large checkpoint is hashed once. ``memo_dir=None`` hashes without reading or writing a memo.
    An unreadable or malformed memo is treated as absent (and rewritten), never trusted."""
    if memo_dir is None:
        return sha256_file(path)
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
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
    memo[key] = digest
    try:
        atomic_write_text(memo_file, json.dumps(memo, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs speed
    return digest


def key_digest(key: dict[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of ``key``."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class ResultCache:
    """One directory per content address, one safetensors file per finished chunk.

    ``root=None`` means caching is off: nothing is read or written.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = None if root is None else Path(root).expanduser()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def entry(self, key: dict[str, Any]) -> "CacheEntry":
        return CacheEntry(self, key)


class CacheEntry:
    def __init__(self, cache: ResultCache, key: dict[str, Any]):
        self.key = key
        self.digest = key_digest(key)
        self.dir = None if cache.root is None else cache.root / "results" / self.digest[:2] / self.digest

    def _chunk_path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:04d}.safetensors"

    def load_chunk(self, k: int) -> dict[str, np.ndarray] | None:
        if self.dir is None:
            return None
        p = self._chunk_path(k)
        if not p.exists():
            return None
        try:
            arrays, meta = load_arrays(p)
        except Exception:  # noqa: BLE001 - a damaged file is recomputed, never trusted
            return None
        if meta.get("key_digest") != self.digest:
            return None
        return arrays

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
        if self.dir is None or not _writes():
            return
        if not (self.dir / "key.json").exists():
            atomic_write_text(self.dir / "key.json", json.dumps(self.key, sort_keys=True, indent=2, default=str))
        save_arrays(self._chunk_path(k), arrays, {"key_digest": self.digest, "chunk": k})


def _writes() -> bool:
    """Only rank 0 of a data-parallel run writes the cache (``mechclaims.distributed``)."""
    from .distributed import world

    return world().is_writer
