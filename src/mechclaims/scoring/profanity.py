"""``ProfanityCheckScorer``: alt-profanity-check's probability that a text is offensive, an
independent toxicity scorer that ships its own weights, so it runs offline with nothing else.

alt-profanity-check (PyPI ``alt-profanity-check``, import name ``profanity_check``) is a TF-IDF
vectorizer (English stop words removed) and a calibrated linear SVM trained on human-labelled
offensive comments; both sit inside its wheel as ``profanity_check/data/{vectorizer,model}.joblib``.
The score is ``predict_proba`` of the offensive class (what ``profanity_check.predict_prob``
returns), a probability in [0, 1]. It is a bag-of-words model: it catches profanity and strong
insults, not mild ones whose words it never learned (measured in docs/scorers.md).

Trust: the two files are joblib pickles, unpickled here as ``profanity_check`` itself does at
import. They come from an installed package's own wheel, so loading them is the same trust as
importing that package, not a stranger's file. Only those two files, at the installed package's
location, are ever read; their sha256 are recorded in ``describe()`` and key the result cache.

Versions: each alt-profanity-check release pins the scikit-learn it pickled its model with
(1.9.1 pins ``scikit-learn==1.9.1``). A pickled scikit-learn model from another major/minor
version can predict wrongly without any error, so the scorer refuses one (``ScorerError`` naming
both versions and what to install); a patch-level difference is accepted and recorded.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ScorerError
from .common import _check_texts

DIST = "alt-profanity-check"
MODULE = "profanity_check"
MODEL_FILES = ("vectorizer.joblib", "model.joblib")
INSTALL_HINT = "pip install 'mechclaims[profanity]' (or: pip install alt-profanity-check)"

_LOADED: dict = {}  # model digest -> (vectorizer, model, sklearn version the pickles were made with)


def package_dir() -> Path:
    """The installed ``profanity_check`` package's directory, found without importing it (its
    import unpickles the model); ScorerError when it is not installed or lacks its model files."""
    import sys

    # importlib.util.find_spec looked up at call time: tests simulate an absent package through it.
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError(f"the profanity-check scorer needs the {DIST} package (import name {MODULE}), which "
                          f"is not installed in this Python ({sys.executable}); {INSTALL_HINT}.")
    d = Path(list(spec.submodule_search_locations)[0])
    missing = [f for f in MODEL_FILES if not (d / "data" / f).is_file()]
    if missing:
        raise ScorerError(f"the installed {MODULE} package at {d} lacks its model files {missing} (expected in "
                          f"{d / 'data'}); reinstall it: pip install --force-reinstall {DIST}.")
    return d


def versions() -> dict:
    """The installed alt-profanity-check, the scikit-learn it pins (None without an exact pin), and
    the installed scikit-learn."""
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        dist_version = version(DIST)
        reqs = requires(DIST) or []
    except PackageNotFoundError:  # the module without its distribution record (a copied directory)
        dist_version, reqs = None, []
    pinned = None
    for r in reqs:
        m = re.fullmatch(r"\s*scikit[-_]learn\s*==\s*([0-9][^\s;,]*)\s*", r.split(";")[0])
        if m:
            pinned = m.group(1)
    try:
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        sklearn_version = None
    return {"package": DIST, "version": dist_version, "sklearn_pinned": pinned, "sklearn": sklearn_version}


def _minor(v: str | None) -> tuple:
    return tuple(v.split(".")[:2]) if v else ()


def _refuse_sklearn(made_with: str, installed: str | None, how: str) -> ScorerError:
    return ScorerError(
        f"alt-profanity-check's model was pickled with scikit-learn {made_with} ({how}) but scikit-learn "
        f"{installed} is installed; a scikit-learn model unpickled by another minor version can predict "
        f"wrongly without an error. Install the matching one: pip install scikit-learn=={made_with} (or an "
        f"alt-profanity-check release built for scikit-learn {installed}).")


def check_installed() -> dict:
    """Cheap, before any model loads: the package is installed with its model files, and the
    scikit-learn it pins has the installed major.minor. Returns ``versions()``."""
    package_dir()
    v = versions()
    if v["sklearn"] is None:
        raise ScorerError(f"the profanity-check scorer needs scikit-learn, which is not installed; {INSTALL_HINT}.")
    if v["sklearn_pinned"] and _minor(v["sklearn_pinned"]) != _minor(v["sklearn"]):
        raise _refuse_sklearn(v["sklearn_pinned"], v["sklearn"], f"{DIST} {v['version']} pins it")
    return v


def model_files() -> dict[str, str]:
    """{file name: sha256} of the installed package's model files."""
    from ..cache import sha256_file

    d = package_dir() / "data"
    return {f: sha256_file(d / f) for f in MODEL_FILES}


def model_sha256(files: dict[str, str] | None = None) -> str:
    """One digest of both model files (their names and sha256, ``model_files()`` by default), for
    cache keys: another model, or another scorer, never reuses these scores."""
    import hashlib

    return hashlib.sha256(repr(sorted((files or model_files()).items())).encode()).hexdigest()


def _load(files: dict[str, str]):
    """The vectorizer and model, unpickled once per process (per model digest), with the
    scikit-learn version they were pickled with (the installed one when sklearn did not warn)."""
    key = repr(sorted(files.items()))
    if key in _LOADED:
        return _LOADED[key]
    import joblib
    import sklearn
    from sklearn.exceptions import InconsistentVersionWarning

    d = package_dir() / "data"
    made_with = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        vectorizer = joblib.load(d / "vectorizer.joblib")
        model = joblib.load(d / "model.joblib")
    for w in caught:
        if issubclass(w.category, InconsistentVersionWarning):
            made_with.add(str(w.message.original_sklearn_version))
        else:  # not ours to judge: pass it on as it was
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for v in sorted(made_with):
        if _minor(v) != _minor(sklearn.__version__):
            raise _refuse_sklearn(v, sklearn.__version__, "recorded in the pickle")
    if list(getattr(model, "classes_", [])) != [0, 1]:
        raise ScorerError(f"alt-profanity-check's model has classes {list(getattr(model, 'classes_', []))}, "
                          "expected [0, 1] (1 = offensive); this release is not one the scorer knows. "
                          f"Install a known one: {INSTALL_HINT}.")
    _LOADED[key] = (vectorizer, model, ", ".join(sorted(made_with)) or sklearn.__version__)
    return _LOADED[key]


class ProfanityCheckScorer:
    """alt-profanity-check's probability that a text is offensive (``predict_proba``, class 1)."""

    name = "profanity-check"

    def __init__(self):
        self.versions = check_installed()
        self.files = model_files()
        self._vectorizer, self._model, self.sklearn_pickled = _load(self.files)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        p = np.asarray(self._model.predict_proba(self._vectorizer.transform(texts))[:, 1], dtype=np.float64)
        if p.shape != (len(texts),) or not np.isfinite(p).all():
            from ..errors import NumericalError

            raise NumericalError(f"alt-profanity-check returned {p.shape} values, some not finite, for "
                                 f"{len(texts)} texts; expected one probability per text.")
        return np.clip(p, 0.0, 1.0)

    def describe(self) -> dict:
        v = self.versions
        return {"name": self.name, "kind": "bag-of-words classifier (TF-IDF + calibrated linear SVM)",
                "units": "probability that the text is offensive", "package": v["package"],
                "version": v["version"], "sklearn": v["sklearn"], "sklearn_pinned": v["sklearn_pinned"],
                "sklearn_pickled": self.sklearn_pickled, "model_sha256": model_sha256(self.files),
                "files": {f"profanity_check/data/{f}": sha for f, sha in self.files.items()}}

    def __repr__(self) -> str:
        return f"ProfanityCheckScorer({DIST} {self.versions['version']}, sklearn {self.versions['sklearn']})"
