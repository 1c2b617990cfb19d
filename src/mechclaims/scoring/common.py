"""The scorer interface and what every scorer shares: ``Scorer`` (``name`` and ``score(texts)``),
``ScoreResult`` (the values with the record of the scorer that produced them), ``score_texts``,
and ``decode_continuations`` (the continuation alone, cut by token position, never the prompt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InputTypeError, ScorerError


@runtime_checkable
class Scorer(Protocol):
    """Maps texts to toxicity scores."""

    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """float64 array, one value per text, in order. Units are the scorer's own
        (``describe()["units"]``): probabilities in [0, 1] for Detoxify and the lexicon,
        projections for ``ProbeScorer``."""
        ...


@dataclass
class ScoreResult:
    """Scores together with the scorer that produced them.

    ``values``: float64, one per text. ``scorer_name``: the scorer's ``name``.
    ``details``: the scorer's ``describe()`` (kind, units, files, settings).
    """

    values: np.ndarray
    scorer_name: str
    details: dict = field(default_factory=dict)

    @classmethod
    def of(cls, scorer, values) -> "ScoreResult":
        desc = scorer.describe() if hasattr(scorer, "describe") else {"name": scorer.name}
        return cls(np.asarray(values, dtype=np.float64), str(scorer.name), dict(desc))

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def mean(self) -> float:
        return float(self.values.mean())

    def to_dict(self) -> dict:
        return {"scorer": self.scorer_name, "details": self.details, "n": len(self),
                "mean": self.mean() if len(self) else None, "values": self.values.tolist()}


def score_texts(scorer, texts: Sequence[str]) -> ScoreResult:
    """``scorer.score(texts)`` wrapped in a ScoreResult that records the scorer."""
    return ScoreResult.of(scorer, scorer.score(texts))


def _check_texts(texts) -> None:
    if isinstance(texts, str):
        raise InputTypeError("score() takes a sequence of texts; wrap a single text in a list.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ScorerError(f"text {i} is a {type(t).__name__}, expected str.")


def _rows(token_ids) -> list[list[int]]:
    """Token ids as a list of int lists: a 2-D tensor/array, or a sequence of 1-D sequences."""
    if hasattr(token_ids, "detach"):
        token_ids = token_ids.detach().cpu().numpy()
    if isinstance(token_ids, np.ndarray):
        if token_ids.ndim != 2:
            raise ScorerError(f"expected token ids of shape [n, T]; got shape {token_ids.shape}.")
        return [[int(x) for x in row] for row in token_ids]
    return [[int(x) for x in (r.detach().cpu().tolist() if hasattr(r, "detach") else r)] for r in token_ids]


def decode_continuations(tokenizer, continuation_tokens) -> list[str]:
    """Decode only the continuation token ids, one string per row, special tokens skipped.

    ``continuation_tokens``: ``[n, T]`` (tensor, array) or a list of id lists: the *generated*
    tokens alone (``ModelStats.continuations``, ``greedy_generate``'s output), already cut from
    the prompt by token position. The prompt is never decoded here, so no prompt text can leak
    into the scored string, whatever the tokenizer does when it re-decodes a prompt.
    """
    return [tokenizer.decode(row, skip_special_tokens=True) for row in _rows(continuation_tokens)]

