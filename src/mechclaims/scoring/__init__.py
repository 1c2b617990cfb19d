"""Toxicity scorers: texts in, one float64 per text out, with a record of which scorer it was.

The project treats the scorer as an interface (``Scorer``: ``name`` and ``score(texts)``), so a
claim test can run with whatever scorer the user has offline:

``LexiconScorer``   1.0 if a text contains a lexicon phrase (whole words, any case), else 0.0.
                    The embedded model organism ships its lexicon and is scored with it.
``DetoxifyScorer``  Detoxify (Yang et al.'s HEAD scorer: ``Detoxify("original")`` ``toxicity``),
                    run from local files only; a probability in [0, 1].
``ProbeScorer``     the mean projection of the final-norm residual stream onto the probe
                    direction, read by a LoadedModel. A cheap proxy that needs nothing else;
                    its values are projections in scorer-specific units, *not* probabilities,
                    so claims compare them only as relative reductions (base vs DPO).
``ProfanityCheckScorer`` alt-profanity-check's probability of offensive text: a TF-IDF + linear
                    SVM model shipped inside its wheel (offline, independent of the model pair).

Every scorer has ``describe() -> dict`` (its name, kind, units and the files/settings behind
it); ``score_texts(scorer, texts)`` returns a ``ScoreResult(values, scorer_name, details)``
that carries that record with the values, and ``ScoreResult.of(scorer, values)`` wraps values
obtained another way (``ProbeScorer.score_continuations``).

Scorers see the *continuation only*, never the prompt (paper ambiguity A11: the paper's code
removed the prompt with ``str.replace``, which leaves prompt text behind when the prompt was
truncated or re-decodes differently). ``decode_continuations`` decodes only the generated
token ids, cut by token position.

Detoxify checkpoints are torch pickles (a dict of its config and state dict). ``DetoxifyScorer``
reads them with ``torch.load(weights_only=True)``: plain containers and tensors only, so a file
that would need code to unpickle is refused, never unpickled (the refusal says how to strip a
checkpoint you trust down to its config and state dict). It reads a
file only when the user names it (``checkpoint=``) or when it sits in the torch-hub cache under
the official release file name (where ``Detoxify()`` itself would put it).
"""

from __future__ import annotations

# The package's API, as it was when it was one module: ``from mechclaims.scoring import X`` and
# ``scoring.SCORERS`` / ``scoring._plugin_state`` reach the very objects the submodules use.
from ..errors import InputTypeError, MechclaimsError, ScorerError
from .common import Scorer, ScoreResult, decode_continuations, score_texts
from .detoxify import DETOXIFY_RELEASE_URL, DETOXIFY_RELEASES, DetoxifyScorer
from .lexicon import LexiconScorer, lexicon_pattern, read_lexicon
from .probe import PROBE_READ_AT, CalibratedProbeScorer, ProbeScorer
from .profanity import ProfanityCheckScorer, check_installed
from .registry import (
    AUTO,
    AUTO_RULE,
    NO_SCORER_REASON,
    PLUGIN_GROUP,
    SCORERS,
    ScorerEntry,
    load_plugin_scorers,
    make_scorer,
    register_scorer,
    resolve_scorer_spec,
    scorer_digest,
    scorer_help,
)

# Private helpers, re-exported explicitly (``_x as _x``) so that callers of the one-module
# ``scoring`` keep working; new code imports them from their own module.
from .common import _check_texts as _check_texts, _rows as _rows
from .detoxify import (
    _ANY_TOKENIZER_FILE as _ANY_TOKENIZER_FILE,
    _DETOXIFY_CLASS_NAMES as _DETOXIFY_CLASS_NAMES,
    _TOKENIZER_FILES as _TOKENIZER_FILES,
    _check_hf_dir as _check_hf_dir,
    _describe_sets as _describe_sets,
    _detoxify_class as _detoxify_class,
    _hf_cache_snapshot as _hf_cache_snapshot,
    _tokenizer_file_sets as _tokenizer_file_sets,
    _torch_hub_dir as _torch_hub_dir,
)
from .probe import _prompt_rows as _prompt_rows
from .registry import (
    _BUILTIN_FACTORIES as _BUILTIN_FACTORIES,
    _code_digest as _code_digest,
    _has_intercept as _has_intercept,
    _plugin_state as _plugin_state,
    _split_spec as _split_spec,
    _usage as _usage,
)

__all__ = [
    "AUTO", "AUTO_RULE", "DETOXIFY_RELEASES", "DETOXIFY_RELEASE_URL", "NO_SCORER_REASON", "PLUGIN_GROUP",
    "PROBE_READ_AT", "SCORERS", "CalibratedProbeScorer", "DetoxifyScorer", "InputTypeError", "LexiconScorer",
    "MechclaimsError", "ProbeScorer", "ProfanityCheckScorer", "ScoreResult", "Scorer", "ScorerEntry", "ScorerError",
    "decode_continuations", "lexicon_pattern", "load_plugin_scorers", "make_scorer", "read_lexicon",
    "register_scorer", "resolve_scorer_spec", "score_texts", "scorer_digest", "scorer_help",
]


# --------------------------------------------------------------------------------------------
# The built-in scorers, registered in this order (the order ``--scorer``'s help lists them in).


def _check_lexicon(arg, **_):
    if not arg:
        raise ScorerError("the lexicon scorer needs a file: --scorer lexicon:PATH (one phrase per line).")
    read_lexicon(arg)


def _check_detoxify(arg, **_):
    if arg is not None and arg not in DETOXIFY_RELEASES:
        raise ScorerError(f"unknown Detoxify variant {arg!r}; expected one of {sorted(DETOXIFY_RELEASES)}.")


def _check_probe(arg, probe=None):
    if arg is not None:
        raise ScorerError(f"the probe scorer takes no argument, got probe:{arg}; it reads --probe.")
    if probe is not None and not _has_intercept(probe):
        raise ScorerError(
            "--scorer probe needs a probe that carries its logistic-regression intercept (metadata "
            "'intercept'), so that its scores are probabilities in [0, 1]; this probe has none. Train one "
            "with mechclaims.probe.train_probe, or pass --scorer detoxify[:variant] or --scorer lexicon:PATH.")


def _check_profanity(arg, **_):
    if arg is not None:
        raise ScorerError(f"the profanity-check scorer takes no argument, got profanity-check:{arg}; "
                          "pass --scorer profanity-check.")
    check_installed()


def _probe_factory(arg, *, base=None, probe=None):
    if base is None or probe is None:
        raise ScorerError("the probe scorer needs the base model and the probe.")
    return CalibratedProbeScorer(base, probe)


register_scorer("lexicon", lambda arg, **_: LexiconScorer(arg),
                "lexicon:PATH: 1.0 when a continuation contains a phrase of the file", _check_lexicon)
register_scorer("detoxify", lambda arg, **_: DetoxifyScorer(arg or "original"),
                "detoxify[:original|unbiased|multilingual]: Detoxify's toxicity, from local files",
                _check_detoxify)
register_scorer("probe", _probe_factory,
                "probe: the probe's calibrated probability (needs a probe with an intercept)", _check_probe)
register_scorer("profanity-check", lambda arg, **_: ProfanityCheckScorer(),
                "profanity-check: alt-profanity-check's probability of offensive text (its own offline "
                "model; pip install 'mechclaims[profanity]')", _check_profanity)

# The built-in factories, as registered above: a name re-registered by the user is the user's scorer.
_BUILTIN_FACTORIES.update({name: entry.factory for name, entry in SCORERS.items()})
