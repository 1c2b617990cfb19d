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

Claims come in **packs**, one per paper (or team): ``claims/<pack>/__init__.py`` declares its
``PACK = register_pack(Pack(...))`` once (title, papers with arXiv id, venue and code), and every
claim in the package belongs to it. A claim module outside a pack may declare its own ``PACK``
at its top, or pass ``pack=`` to ``@claim``; otherwise it is in no pack (``""``).
"""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from .errors import ConfigError

#: A share of a reduction far outside [0, 1] (beyond [-1, 2]) means the denominator is tiny or
#: the quantities are not what the claim assumes (e.g. signed scores): not a verdict.
SHARE_RANGE = (-1.0, 2.0)
#: What a claim's metric reads: activations and weights (the attribution), or generations under
#: interventions (``mechclaims.behaviour``; perplexity is measured with them when a text is given),
#: or the depth measurements (per-token KL and prefilled generations, ``mechclaims.depth``).
NEEDS = ("A", "G", "D")
#: Claim tags, applied as pytest markers (``pytest claims/ -m gate``).
TAGS = {
    "gate": "a claim a safety release should hold (docs/gating.md: Gating in CI)",
    "exploratory": "a qualitative or descriptive finding of the paper; informative, not a gate",
}

#: The claims every mechanistic claim rests on: the probe measures toxicity (C24), DPO lowered
#: toxicity at all (C1), and the model is still fluent (C2). When one of them fails, a claim that
#: reads it is *not meaningful* (a destroyed model "passes" patching shares by accident).
PRECONDITIONS = {
    "C24": "the probe measures toxicity",
    "C1": "DPO lowers toxicity at all",
    "C2": "the fine-tune keeps fluency",
}


def default_requires(needs: str) -> tuple[str, ...]:
    """Activation claims read the model through the probe; behavioural claims also read shares of
    DPO's drop and generations that must stay fluent; depth claims read generations and shares of
    DPO's drop, not the probe."""
    return {"A": ("C24",), "G": ("C24", "C1", "C2"), "D": ("C1", "C2")}[needs]


@dataclass(frozen=True)
class Paper:
    """A paper a pack checks: what the report, the docs and ``claims.json`` cite."""

    title: str
    authors: str
    arxiv: str = ""
    venue: str = ""
    code: str = ""

    def as_dict(self) -> dict:
        return {"title": self.title, "authors": self.authors, "arxiv": self.arxiv, "venue": self.venue,
                "code": self.code}


@dataclass(frozen=True)
class Pack:
    """A claim pack: the claims of one paper (or one team), recorded once."""

    id: str
    title: str
    papers: tuple[Paper, ...] = ()
    description: str = ""

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "description": self.description,
                "papers": [p.as_dict() for p in self.papers]}


#: Every pack declared so far, by ID (``register_pack``).
PACKS: dict[str, Pack] = {}


def register_pack(pack: Pack) -> Pack:
    """Declare a pack (in its package's ``__init__.py``: ``PACK = register_pack(Pack(...))``).
    Declaring the same ID twice with other metadata is a ConfigError."""
    if not pack.id or not pack.id.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"a pack ID must be letters, digits, '-' or '_', got {pack.id!r}.")
    old = PACKS.get(pack.id)
    if old is not None and old != pack:
        raise ConfigError(f"pack {pack.id!r} is declared twice with different metadata; give one of them "
                          "another ID.")
    PACKS[pack.id] = pack
    return pack


def _pack_of(module: str) -> str:
    """The pack of a claim module: its own ``PACK``, else its package's (``claims/<pack>/``)."""
    name = module
    while name:
        pack = getattr(sys.modules.get(name), "PACK", None)
        if isinstance(pack, Pack):
            return register_pack(pack).id
        name = name.rpartition(".")[0]
    return ""


#: Every claim declared so far, by ID (filled by ``@claim`` when its module is imported), so a
#: precondition can be computed even when ``-k`` deselected it.
REGISTRY: dict[str, "ClaimSpec"] = {}

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Check:
    """One comparison of a metric value against a threshold."""

    name: str
    op: str
    threshold: float
    label: str = ""  # how the metric is shown, e.g. "max share of a ↓ group"
    #: The range inside which the value means what the claim says (a share of a reduction:
    #: SHARE_RANGE). A value outside it is flagged in the report and never counts as a pass.
    valid: tuple[float, float] | None = None
    #: False for a value that does not depend on the prompt sample (a perplexity on a fixed text,
    #: the probe's held-out accuracy): it has no bootstrap interval, and every reading uses the value.
    resampled: bool = True
    #: True for a yes/no check whose threshold is part of its meaning (1 = yes): a bare
    #: ``Cx = value`` threshold override goes to the claim's other check.
    fixed: bool = False

    def __post_init__(self):
        if self.op not in OPS:
            raise ConfigError(f"check {self.name!r}: op must be one of {sorted(OPS)}, got {self.op!r}")

    def holds(self, value: float) -> bool:
        return bool(OPS[self.op](value, self.threshold))

    def in_range(self, value: float) -> bool:
        return self.valid is None or self.valid[0] <= value <= self.valid[1]

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
    probe_metadata: Mapping[str, Any] = field(default_factory=dict)  # e.g. heldout_accuracy
    base_sha256: str = ""  # the run's base model (C24: was the probe trained on it?)
    max_new_tokens: int = 0  # T, the generated tokens per prompt (the depth claims' positions)


@dataclass(frozen=True)
class ClaimSpec:
    """A declared claim, as ``@claim`` records it in ``REGISTRY``: statement, checks, source, the
    paper's value, tags, and the claims it rests on (``preconditions``)."""

    id: str
    slug: str
    statement: str
    checks: tuple[Check, ...]
    source: str
    paper_value: str
    metric: Callable = field(compare=False)
    applies: Callable | None = field(default=None, compare=False)
    family: str = ""
    needs: str = "A"  # one of NEEDS
    tags: tuple[str, ...] = ()  # keys of TAGS
    #: The kinds of intervention set a behavioural metric reads (``behaviour.SET_KINDS``); None:
    #: all. Only the kinds some selected claim reads are generated.
    interventions: tuple[str, ...] | None = None
    #: Claims whose failure makes this one not meaningful (``PRECONDITIONS``); None: the default
    #: for what the metric reads (``default_requires``).
    requires: tuple[str, ...] | None = None
    #: ``explain(ctx) -> str``: why the claim failed, when the checks' values alone cannot say
    #: (C24: which model the probe was trained on); added to the reason of a failure.
    explain: Callable | None = field(default=None, compare=False)
    #: ``scope(subject, ctx) -> str``: what the verdict covers, when a claim reads only some of
    #: what its statement names (S2: the prefixes that could be measured); added to the reason
    #: of every measured result, so that a pass says what it checked.
    scope: Callable | None = field(default=None, compare=False)
    #: The ID of the pack the claim belongs to (``PACKS``); "" for none.
    pack: str = ""

    @property
    def preconditions(self) -> tuple[str, ...]:
        req = self.requires if self.requires is not None else default_requires(self.needs)
        return tuple(r for r in req if r != self.id)

    @property
    def is_gate(self) -> bool:
        return "gate" in self.tags

    def with_thresholds(self, overrides: dict[str, float]) -> "ClaimSpec":
        names = {c.name for c in self.checks}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"claim {self.id} has no check named {unknown}; its checks are {sorted(names)}")
        return replace(self, checks=tuple(replace(c, threshold=float(overrides.get(c.name, c.threshold)))
                                          for c in self.checks))


def claim(id: str, slug: str, *, statement: str, checks: list[Check], source: str, paper_value: str,
          applies: Callable | None = None, needs: str = "A", tags: tuple[str, ...] = (),
          interventions: tuple[str, ...] | None = None, requires: tuple[str, ...] | None = None,
          explain: Callable | None = None, scope: Callable | None = None, pack: "str | Pack | None" = None):
    """Declare a claim; returns a pytest test function named like the metric function.

    ``requires``: the precondition claims (default ``default_requires(needs)``; ``()`` for none).
    ``explain(ctx)``: a sentence added to the reason when the claim fails ("" for none).
    ``scope(subject, ctx)``: what the verdict covers, added to the reason of every measured
    result ("" for nothing to add).
    ``pack``: the claim's pack (a ``Pack`` or a registered ID); default: the ``PACK`` of the
    metric's module or package. ``interventions``: for ``needs="G"``, the intervention kinds
    read; for ``needs="D"``, the depth parts read (``mechclaims.depth.PARTS``).
    """

    if needs not in NEEDS:
        raise ConfigError(f"claim {id}: needs must be one of {NEEDS}, got {needs!r}.")
    unknown = sorted(set(tags) - set(TAGS))
    if unknown:
        raise ConfigError(f"claim {id}: unknown tags {unknown}; known tags: {sorted(TAGS)}.")

    if isinstance(pack, Pack):
        pack = register_pack(pack).id
    elif pack is not None and pack not in PACKS:
        raise ConfigError(f"claim {id}: unknown pack {pack!r}; declare it with register_pack(Pack(...)) first "
                          f"(known: {sorted(PACKS)}).")

    def decorate(metric: Callable):
        spec = ClaimSpec(id=id, slug=slug, statement=statement, checks=tuple(checks), source=source,
                         paper_value=paper_value, metric=metric, applies=applies,
                         family=metric.__module__.rsplit(".", 1)[-1], needs=needs, tags=tuple(tags),
                         interventions=None if interventions is None else tuple(interventions),
                         requires=None if requires is None else tuple(requires), explain=explain, scope=scope,
                         pack=pack if pack is not None else _pack_of(metric.__module__))
        REGISTRY[id] = spec

        def test(mechclaims_claims):
            mechclaims_claims.verify(spec.id)

        test.__name__ = metric.__name__
        test.__qualname__ = metric.__qualname__
        test.__module__ = metric.__module__
        test.__doc__ = f"[{id}] {statement}\n\nSource: {source}. Paper: {paper_value}."
        test.mechclaims_spec = spec
        return test

    return decorate

