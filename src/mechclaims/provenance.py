"""What produced a number: package versions and machine facts, recorded next to every result;
and how reports show paths (``display_path``), without the layout of the machine that made them."""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("mechclaims", "torch", "transformers", "transformer-lens", "tokenizers", "safetensors",
            "numpy", "scikit-learn", "trl", "detoxify")


def package_versions() -> dict[str, str | None]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def display_path(path) -> str:
    """A path as reports show it, so that a report does not carry the layout of the machine
    that made it. The first rule that applies:

    1. under the working directory: relative to it (``data/prompts.jsonl``);
    2. near it, at most two levels up below a common folder other than ``/``: ``../models/gpt2``;
    3. a file of this package, of the organism fixtures, or of another installed package:
       ``<mechclaims>/data/fluency.txt``, ``<fixtures>/organism/gpt2/probe.safetensors``,
       ``<site-packages>/...``;
    4. under the home directory: ``~/...``;
    5. otherwise as given (a relative path the user wrote skips rules 3 and 4).
    """
    text = str(path)
    shown = _shown(Path(text).expanduser())
    return text if shown is None else shown


#: An absolute path inside free text: starts with ``/`` not preceded by a path or word character,
#: ends at whitespace, a quote, a bracket or punctuation that separates paths (``BASE::WEIGHTS``).
_ABS_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\"`<>|,;:()\[\]{}]+")


def display_text(text: str) -> str:
    """``text`` with every absolute path in it shown as ``display_path`` shows it (a scorer spec
    ``lexicon:/abs/lexicon.txt``, an error message quoting a path)."""
    if "/" not in text:
        return text

    def sub(m: re.Match) -> str:
        shown = _shown(Path(m.group(0)))
        return m.group(0) if shown is None else shown

    return _ABS_PATH.sub(sub, text)


def display_paths(obj):
    """A JSON-like document with ``display_text`` applied to every string value (keys kept)."""
    if isinstance(obj, str):
        return display_text(obj)
    if isinstance(obj, dict):
        return {k: display_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [display_paths(v) for v in obj]
    return obj


def _shown(p: Path) -> str | None:
    """How rules 1-4 of ``display_path`` show ``p``; None when none applies."""
    try:
        cwd = Path(os.getcwd()).resolve()
        q = (cwd / p).resolve() if not p.is_absolute() else p.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if q == cwd or cwd in q.parents:
        return q.relative_to(cwd).as_posix() or "."
    common = Path(os.path.commonpath([q, cwd]))
    if len(common.parts) > 1 and len(cwd.parts) - len(common.parts) <= 2:  # near, below a folder other than /
        return Path(os.path.relpath(q, cwd)).as_posix()
    if not p.is_absolute():  # a relative path the user wrote: as given
        return None
    for root, label in _roots():
        if q == root or root in q.parents:
            return label + ("/" + q.relative_to(root).as_posix() if q != root else "")
    return None


def _roots() -> list[tuple[Path, str]]:
    """Folders reports name by a placeholder, the most specific first."""
    import site
    import sysconfig

    here = Path(__file__).resolve().parent
    # The organism fixtures' root, by the same rule as ``organism.fixtures_root`` (this module is
    # on the ground floor and cannot import it; tests/test_report_meaning.py checks they agree).
    fixtures = Path(os.environ.get("MECHCLAIMS_FIXTURES") or here.parents[1] / "fixtures").expanduser()
    roots = [(here, "<mechclaims>"), (fixtures, "<fixtures>")]
    packages = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib")}
    try:
        packages |= {*site.getsitepackages(), site.getusersitepackages()}
    except AttributeError:  # an old virtualenv's site module
        pass
    roots += [(Path(d), "<site-packages>") for d in packages if d]
    roots.append((Path.home(), "~"))
    out = []
    for root, label in roots:
        try:
            out.append((root.resolve(), label))
        except (OSError, RuntimeError):
            continue
    return sorted(out, key=lambda rl: len(rl[0].parts), reverse=True)
