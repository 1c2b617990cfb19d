"""Errors a user can act on: each says what was given, what was expected, what to do.

One hierarchy under ``MechclaimsError``. As in Hypothesis, each class also inherits the
builtin it refines (``ValueError``, ``FileNotFoundError``, ``TypeError``,
``ArithmeticError``), so a caller can catch either the project's type or the builtin.

Every class except ``NumericalError`` is a *setup* error: the inputs are wrong, not the
model. The pytest plugin stops the session once on a setup error (exit status 4, pytest's
usage error); exit status 1 always means that claims failed.

This module is the ground floor: it imports nothing from the project.
"""


class MechclaimsError(Exception):
    """Base class of every error mechclaims raises on purpose."""

    #: True when the error is about the inputs (a broken setup), not about a result.
    setup = True


class ConfigError(MechclaimsError, ValueError):
    """A claim-run option, setting or threshold that is unknown or malformed."""


class ModelSourceError(MechclaimsError, ValueError):
    """A model source string or path that cannot be resolved or loaded."""


class ModelNotFound(ModelSourceError, FileNotFoundError):
    """A model path, weights file or adapter directory that does not exist."""


class UnsupportedModel(ModelSourceError):
    """A checkpoint outside the supported families (causal LMs: GPT-2, Llama, Mistral, Gemma)."""


class IncompatibleCheckpoints(MechclaimsError, ValueError):
    """The base and candidate models cannot be compared neuron by neuron."""

    def __init__(self, field: str, base_value, model_value, hint: str = ""):
        self.field, self.base_value, self.model_value = field, base_value, model_value
        msg = (
            f"base and model differ in {field}: base has {base_value!r}, model has {model_value!r}. "
            "A neuron-level comparison needs two checkpoints of one architecture "
            "(the model should be a fine-tune of the base)."
        )
        super().__init__(msg + (" " + hint if hint else ""))


class UnsafeCheckpoint(MechclaimsError, ValueError):
    """A file that would need arbitrary code execution (pickle) to load."""


class ProbeError(MechclaimsError, ValueError):
    """A probe file or vector that is unusable (wrong shape, non-finite, unknown format)."""


class PromptError(MechclaimsError, ValueError):
    """A prompt file that is missing, empty or malformed."""


class ScorerError(MechclaimsError, ValueError):
    """A toxicity scorer that cannot be built or that returned unusable scores."""


class PerplexityError(MechclaimsError, ValueError):
    """A perplexity text or setting that cannot be used."""


class InterventionError(MechclaimsError, ValueError):
    """An intervention (patch, ablation, edit) that does not fit the model."""


class OutputPathError(MechclaimsError, ValueError):
    """An output path that would overwrite an input or another output, or cannot be written."""


class InputTypeError(MechclaimsError, TypeError):
    """A library function called with an argument of the wrong type."""


class NumericalError(MechclaimsError, ArithmeticError):
    """A statistic came out NaN or infinite; we refuse to report it silently."""

    setup = False
