"""What produced a number: package versions and machine facts, recorded next to every result."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

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
    """A path as reports show it: relative to the working directory when it lies under it,
    so a report does not carry the layout of the machine that made it."""
    import os
    from pathlib import Path

    p = Path(str(path))
    try:
        return p.resolve().relative_to(Path(os.getcwd()).resolve()).as_posix()
    except (ValueError, OSError):
        return str(p)
