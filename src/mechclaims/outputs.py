"""Every file a run writes, checked against every file it reads, and against each other.

The rule (issue 18): **an output never overwrites an input**, two outputs never share a path,
and every output location is proven writable before any model work, so a wrong path costs a
second, not a finished analysis. ``check`` serves the pytest plugin (``--report`` and the
``claims.json`` beside it, ``--junitxml``, pytest-html's ``--html``) and the CLI (``neurons
--out`` and its JSON sidecar, ``sweep --report`` and its JSON, ``probe train --out``). A
problem is an ``OutputPathError`` that names the option and the input: exit status 4 under
pytest and on the command line.

Same file
    Paths are compared after ``~`` expansion and resolving symlinks; an existing output is also
    compared by inode, so a hard link to an input is that input. An input directory (a model or
    adapter directory, an organism, a hub snapshot) owns every path below it. Of the result
    cache only its own entries (``results/`` and the file-hash memo) are protected: a report may
    live beside them.

Symlinks
    An output that is a symlink is written *through*, to the file it points to, as
    ``open(path, "w")`` and pytest's JUnit writer do (``cache._atomic_write`` replaces the
    link's target, not the link). So the target is what is checked: a link to an input is
    refused, a link to a regular file (or to a path not yet there) is fine.

What may already be at an output path
    Our outputs are written atomically: a temporary file in the same directory is renamed over
    the path, which replaces whatever directory entry is there. A character or block device, a
    FIFO or a socket would become a regular file (run as root, ``--report /dev/null`` would
    leave the machine without a /dev/null), so only a regular file or nothing is accepted, and
    ``_atomic_write`` refuses the rest again itself. Outputs that pytest writes (``--junitxml``,
    ``--html``) are opened in place, so a device there is written, not replaced:
    ``--junitxml /dev/null`` (discard the XML) is allowed. A directory is refused everywhere.

Writable
    A temporary file is created (and removed) in the nearest existing directory of each output:
    ``os.access`` answers yes to root for ``/proc`` and misses full or odd file systems. A write
    that still fails later (the disk filled during the run) goes through ``writing``, which
    turns the ``OSError`` into an ``OutputPathError`` naming the option, the path and the
    system's reason; the atomic write has left no partial file.

pytest's own writers
    pytest writes ``--junitxml`` and ``--html`` at the session's end, even after a usage error,
    so the plugin checks them before the inputs are resolved (against the inputs as the options
    name them, ``config_inputs``) and again after, and unregisters the writer of a refused path
    (the error's ``options``). Not covered: pytest-html's ``generate_report_on_test`` ini
    option, which writes its page at session start, before any claim is collected.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputPathError

#: Input kinds: a file; a directory all of whose paths are inputs; the result cache.
FILE, TREE, CACHE = "file", "tree", "cache"


@dataclass(frozen=True)
class Output:
    """A file the run writes. ``option``: how the user names it (``--report``); ``in_place``:
    pytest opens it with ``open(path, "w")`` rather than our atomic replace; ``note``: said when
    its location cannot be written (e.g. that a default path is relative to the working dir)."""

    option: str
    path: str | Path | None
    in_place: bool = False
    note: str = ""


@dataclass(frozen=True)
class Input:
    """A path the run reads; ``kind``: ``FILE``, ``TREE`` (a model directory) or ``CACHE``."""

    option: str
    path: str | Path | None
    kind: str = FILE


def inputs(pairs: Iterable[tuple[str, str | Path | None]]) -> list[Input]:
    """``[(option, path), ...]`` -> file inputs (``None`` paths are dropped)."""
    return [Input(opt, p) for opt, p in pairs if p]


def source_inputs(option: str, source) -> list[Input]:
    """What a model source (a ``sources.Source``, parsed or resolved) reads: its directory or
    weights file, and its base's, down the chain (a weights file or adapter on its base)."""
    out, label = [], option
    while source is not None:
        if source.kind in ("dir", "adapter"):
            out.append(Input(label, source.location, TREE))
        elif source.kind == "weights":
            out.append(Input(label, source.location, FILE))
        elif source.kind == "organism":
            from . import organism

            out.append(Input(label, organism.layout(organism.split_name(source.location)[0]).root, TREE))
        elif source.kind == "hub":
            from .sources import hub_snapshot_dir

            snap = hub_snapshot_dir(source.location)
            if snap is not None:
                out.append(Input(label, snap, TREE))
        source, label = source.base, f"{option}'s base"
    return out


def named_source_inputs(option: str, source: str | None, base: str | None = None) -> list[Input]:
    """What a model source *string* reads, before it is resolved: the paths it names (also when
    it does not parse) and, when it parses, ``source_inputs`` of it. Reads no weights."""
    from .sources import parse_source

    if not source:
        return []
    out = []
    for part in str(source).split("::"):  # BASE::WEIGHTS
        if part and Path(part).expanduser().exists():
            out.append(Input(option, part, TREE if Path(part).expanduser().is_dir() else FILE))
    try:
        out += source_inputs(option, parse_source(source, base=base))
    except ValueError:
        pass  # a source that does not resolve is reported where it is read
    return out


def config_inputs(cfg, defaults: dict) -> list[Input]:
    """The inputs a ``ClaimsConfig`` names, with the organism's defaults (``runspec.organism_defaults``),
    before anything is resolved or hashed: so pytest's own outputs are checked even when
    resolving the inputs fails (pytest still writes its JUnit file at the session's end)."""
    from .cache import default_cache_dir

    scorer = (cfg.scorer if cfg.scorer != "auto" else defaults.get("scorer", "")) or ""
    scorer_file = scorer.partition(":")[2]
    ins = inputs((("--probe", cfg.probe or defaults.get("probe")),
                  ("--prompts", cfg.prompts or defaults.get("prompts")),
                  ("--ppl-text", cfg.ppl_text or defaults.get("ppl_text")),
                  ("--scorer", scorer_file if scorer_file and Path(scorer_file).expanduser().exists() else None)))
    ins += named_source_inputs("--model", cfg.model, cfg.base or defaults.get("base"))
    ins += named_source_inputs("--base", cfg.base or defaults.get("base"))
    ins += named_source_inputs("--baseline", cfg.baseline, cfg.base or defaults.get("base"))
    ins.append(Input("--cache-dir", Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir(), CACHE))
    return ins


def pytest_outputs(option) -> list[Output]:
    """The files pytest itself writes, from its option namespace: ``--junitxml`` and
    pytest-html's ``--html`` (relative paths are taken from the working directory, as pytest does)."""
    return [Output(flag, getattr(option, attr), in_place=True)
            for attr, flag in (("xmlpath", "--junitxml"), ("htmlpath", "--html")) if getattr(option, attr, None)]


def check(outputs: Iterable[Output], ins: Iterable[Input]) -> None:
    """Raise ``OutputPathError`` when an output would overwrite an input or another output, is
    not a regular file (see the module's doc), or its location cannot be written. Creates and
    removes one empty temporary file per output directory; writes nothing else."""
    outs = [(o, _resolve(o.path)) for o in outputs if o.path]
    ins = [(i, _resolve(i.path)) for i in ins if i.path]
    same_inode = {}
    for i, p in ins:
        st = _stat(p)
        if i.kind == FILE and st is not None and stat.S_ISREG(st.st_mode):
            same_inode.setdefault((st.st_dev, st.st_ino), (i, p))
    seen: dict[Path, Output] = {}
    for o, p in outs:
        st = _stat(p)
        _what_is_there(o, p, st)
        _not_an_input(o, p, st, ins, same_inode)
        if st is None or stat.S_ISREG(st.st_mode):  # a device opened in place may be shared (/dev/null)
            if p in seen:
                raise _refuse(f"{seen[p].option} and {o.option} are the same file ({p}): one would silently "
                              f"replace the other; give {o.option} another path.", seen[p], o)
            seen[p] = o
    for o, p in outs:
        _writable(o, p)


def check_writable_dir(d: str | Path, option: str, note: str = "") -> None:
    """Files can be created in ``d`` (or, when it does not exist yet, in its nearest existing
    ancestor, where it will be made): proven by creating and removing a temporary file."""
    d = _resolve(d)
    _probe_dir(d, option, f"into {d}", note)


@contextmanager
def writing(option: str, path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (a full disk, a directory removed during the
    run) into an ``OutputPathError`` naming ``option``, the path and the system's reason."""
    try:
        yield
    except OSError as exc:
        raise write_error(option, path, exc) from exc


_HINTS = {errno.ENOSPC: "free some space or choose another location",
          errno.EDQUOT: "free some space (the disk quota is used up) or choose another location",
          errno.EROFS: "the file system is read-only: choose another location",
          errno.EACCES: "choose a location you may write to", errno.EPERM: "choose a location you may write to"}


def write_error(option: str, path: str | Path, exc: OSError) -> OutputPathError:
    code = errno.errorcode.get(exc.errno, "")
    reason = (exc.strerror or str(exc)) + (f" ({code})" if code else "")
    return OutputPathError(
        f"could not write {option} {Path(path).expanduser().absolute()}: {reason}; no partial file was left "
        f"(writes go to a temporary file, renamed into place when complete); "
        f"{_HINTS.get(exc.errno, 'choose another location')}.")


# --- internals ----------------------------------------------------------------------------------


def _resolve(p: str | Path) -> Path:
    return Path(os.path.abspath(Path(p).expanduser())).resolve()


def _stat(p: Path) -> os.stat_result | None:
    try:
        return os.stat(p)
    except OSError:
        return None


def _refuse(message: str, *outputs: Output) -> OutputPathError:
    """The error, with ``options``: the outputs it is about (the plugin silences pytest's own
    writers among them, which would otherwise still write at the session's end)."""
    exc = OutputPathError(message)
    exc.options = tuple(o.option for o in outputs)
    return exc


def _not_an_input(o: Output, p: Path, st, ins, same_inode) -> None:
    for i, ip in ins:
        if i.kind == FILE and p == ip:
            raise _refuse(f"{o.option} {p} would overwrite {i.option} ({ip}): an output never replaces an input; "
                          f"give {o.option} another path.", o)
        if i.kind == TREE and (p == ip or ip in p.parents):
            raise _refuse(f"{o.option} {p} is inside {i.option} ({ip}), a directory the run reads as a model: an "
                          f"output never goes into an input; give {o.option} a path outside it.", o)
        if i.kind == CACHE and _in_cache(p, ip):
            raise _refuse(f"{o.option} {p} is one of the result cache's own files ({i.option} {ip}); give "
                          f"{o.option} a path outside {ip / 'results'}.", o)
    if st is not None and (st.st_dev, st.st_ino) in same_inode:
        i, ip = same_inode[(st.st_dev, st.st_ino)]
        raise _refuse(f"{o.option} {p} is the same file as {i.option} ({ip}), a hard link: writing it would "
                      f"change the input; give {o.option} another path.", o)


def _in_cache(p: Path, cache: Path) -> bool:
    from .cache import MEMO_FILE

    results = cache / "results"
    return p in (cache, cache / MEMO_FILE, results) or results in p.parents


_KINDS = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"),
          (stat.S_ISSOCK, "socket"))


def _what_is_there(o: Output, p: Path, st) -> None:
    if st is None or stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(f"{o.option} {p} is a directory; expected a file path.", o)
    if o.in_place and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        return  # pytest opens it and writes into it: /dev/null discards, nothing is replaced
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "special file")
    raise _refuse(f"{o.option} {p} is a {kind}, not a regular file: the output is written to a temporary file and "
                  f"renamed over the path, which would replace the {kind} with a regular file; give a regular file "
                  "path.", o)


def _writable(o: Output, p: Path) -> None:
    st = _stat(p)
    if o.in_place and st is not None and not stat.S_ISFIFO(st.st_mode):
        # pytest opens an existing file in place: it must open for writing (no truncation here).
        try:
            os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            raise _refuse(f"{o.option}: cannot write {p} ({exc.strerror or exc}){o.note}; choose a writable "
                          "location.", o) from None
        return
    if st is None or not stat.S_ISFIFO(st.st_mode):
        try:
            _probe_dir(p.parent, o.option, p, o.note)
        except OutputPathError as exc:
            raise _refuse(str(exc), o) from None


def _probe_dir(d: Path, option: str, target, note: str) -> None:
    anc = d
    try:
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise OutputPathError(f"{option}: cannot write {target}: {anc} is a file, not a directory{note}; "
                                  "choose a writable location.")
        fd, tmp = tempfile.mkstemp(dir=anc, prefix=".mechclaims-write-test-")
    except OSError as exc:
        raise OutputPathError(f"{option}: cannot write {target}: cannot create a file in {anc} "
                              f"({exc.strerror or exc}){note}; choose a writable location.") from None
    os.close(fd)
    os.unlink(tmp)


__all__ = ["Output", "Input", "FILE", "TREE", "CACHE", "inputs", "source_inputs", "named_source_inputs",
           "config_inputs", "pytest_outputs", "check",
           "check_writable_dir", "writing", "write_error"]


def not_a_report(path) -> str | None:
    """None when ``path`` is a regular file that a mechclaims run wrote as its claim report (or an empty
    file); else why not."""
    import json

    path = Path(path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return None  # empty: nothing to lose (a placeholder, or a writability check's file)
    if path.suffix.lower() == ".json":
        if st.st_size > 256 * 2**20:
            return "larger than any claims.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            return f"not readable as JSON: {type(exc).__name__}"
        schema = doc.get("schema") if isinstance(doc, dict) else None
        ok = isinstance(schema, str) and schema.startswith("mechclaims.claims/")
        return None if ok else f"its schema is {schema!r}, not mechclaims.claims/N"
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", "replace")
    # Every claims.html this project has written starts <title>mechclaims: N failed, ...
    return None if "<title>mechclaims: " in head else "no <title>mechclaims: ...</title> in its first 4 KB"
