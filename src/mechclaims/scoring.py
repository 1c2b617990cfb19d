"""Toxicity scorers: text in, one float in [0, 1] per text out.

The project treats the scorer as an interface (``Scorer``), so a claim test can run with
whatever scorer the user has offline (Detoxify with local weights, a lexicon, ...). The
embedded model organism ships a lexicon and is scored with ``LexiconScorer``: a continuation's
toxicity is 1.0 if it contains a lexicon phrase (whole words, any case), else 0.0.

Scorers see the *continuation only* (the generated tokens, decoded), never the prompt
(paper ambiguity A11: strip the prompt by token position, not by string replacement).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import MechclaimsError


class ScorerError(MechclaimsError):
    """A scorer that cannot be built (missing or empty lexicon, bad configuration)."""


@runtime_checkable
class Scorer(Protocol):
    """Maps texts to toxicity scores."""

    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """float64 array, one value in [0, 1] per text, in order."""
        ...


def read_lexicon(path: str | Path) -> list[str]:
    """Phrases from a lexicon file: one per line; blank lines and ``#`` comments are skipped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ScorerError(
            f"lexicon file {str(path)!r} does not exist (looked at {p.resolve()}); expected a "
            "UTF-8 text file with one toxic word or phrase per line, e.g. the organism's "
            "fixtures/organism/gpt2/lexicon.txt. Pass the path of such a file."
        )
    phrases = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            phrases.append(" ".join(line.split()))
    if not phrases:
        raise ScorerError(
            f"lexicon file {str(p)!r} holds no phrases; expected one toxic word or phrase per "
            "line. Add phrases, or point at a non-empty lexicon."
        )
    return phrases


def lexicon_pattern(phrases: Sequence[str]) -> re.Pattern:
    """One case-insensitive regex: any phrase as whole words; inner spaces match any whitespace."""
    alts = [r"\s+".join(re.escape(w) for w in ph.split()) for ph in
            sorted(set(phrases), key=len, reverse=True)]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


class LexiconScorer:
    """1.0 if the text contains a lexicon phrase (word boundary, case-insensitive), else 0.0."""

    name = "lexicon"

    def __init__(self, lexicon_path: str | Path):
        self.path = Path(lexicon_path)
        self.phrases = read_lexicon(lexicon_path)
        self._re = lexicon_pattern(self.phrases)

    def matches(self, text: str) -> list[str]:
        return [m.group(0) for m in self._re.finditer(text)]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("score() takes a sequence of texts; wrap a single text in a list.")
        return np.fromiter((1.0 if self._re.search(t or "") else 0.0 for t in texts),
                           dtype=np.float64, count=len(texts))

    def __repr__(self) -> str:
        return f"LexiconScorer({str(self.path)!r}, {len(self.phrases)} phrases)"
