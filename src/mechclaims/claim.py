"""A claim: a paper's finding as a metric, thresholds, and the paper's own figure.

Claims are declared in ``claims/`` by decorating the metric function::

    @claim("C3", "v2-toxic-neuron-share",
           statement="The top-128 toxic neurons that DPO dampened give a small share ...",
           checks=[Check("share", "<", 0.10)],
           source="v2 abstract; figures/eda_activation.ipynb cells 6, 8",
           paper_value="GPT-2 medium: 0.049 (2.333 / 47.963)")
    def test_C3_v2_toxic_neuron_share(a, ctx):
        return {"share": v2_toxic_share(a)["share"]}

The decorator returns a pytest test (it takes the plugin's ``mechclaims_claims`` fixture by
name; this module never imports pytest). The metric maps an ``Attribution`` (recomputed for
every bootstrap resample of prompt chunks) and a ``ClaimContext`` to one value per check.
``applies`` returns a reason to skip (a claim that does not apply is skipped, never passed).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Callable

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Check:
    """One comparison of a metric value against a threshold."""

    name: str
    op: str
    threshold: float
    label: str = ""  # how the metric is shown, e.g. "max share of a ↓ group"

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"check {self.name!r}: op must be one of {sorted(OPS)}, got {self.op!r}")

    def holds(self, value: float) -> bool:
        return bool(OPS[self.op](value, self.threshold))

    def bound(self, lo: float, hi: float) -> float:
        """The interval end that must satisfy the check under --strict (the pessimistic one)."""
        return hi if self.op in ("<", "<=") else lo


@dataclass(frozen=True)
class ClaimContext:
    """What a metric may need besides the attribution."""

    n_layers: int
    d_mlp: int
    gated_mlp: bool
    top_k: int = 128


@dataclass(frozen=True)
class ClaimSpec:
    id: str
    slug: str
    statement: str
    checks: tuple[Check, ...]
    source: str
    paper_value: str
    metric: Callable = field(compare=False)
    applies: Callable | None = field(default=None, compare=False)
    family: str = ""
    needs: str = "A"  # A: activations and weights; G: generation + scorer; P: perplexity

    @property
    def nodeid_name(self) -> str:
        return f"{self.id}-{self.slug}"

    def with_thresholds(self, overrides: dict[str, float]) -> "ClaimSpec":
        names = {c.name for c in self.checks}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise KeyError(f"claim {self.id} has no check named {unknown}; its checks are {sorted(names)}")
        return replace(self, checks=tuple(replace(c, threshold=float(overrides.get(c.name, c.threshold)))
                                          for c in self.checks))


def claim(id: str, slug: str, *, statement: str, checks: list[Check], source: str, paper_value: str,
          applies: Callable | None = None, needs: str = "A"):
    """Declare a claim; returns a pytest test function named like the metric function."""

    def decorate(metric: Callable):
        spec = ClaimSpec(id=id, slug=slug, statement=statement, checks=tuple(checks), source=source,
                         paper_value=paper_value, metric=metric, applies=applies,
                         family=metric.__module__.rsplit(".", 1)[-1], needs=needs)

        def test(mechclaims_claims):
            mechclaims_claims.verify(spec.id)

        test.__name__ = metric.__name__
        test.__qualname__ = metric.__qualname__
        test.__module__ = metric.__module__
        test.__doc__ = f"[{id}] {statement}\n\nSource: {source}. Paper: {paper_value}."
        test.mechclaims_spec = spec
        return test

    return decorate


def is_finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
