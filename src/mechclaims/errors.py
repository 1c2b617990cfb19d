"""Errors a user can act on: each says what was given, what was expected, what to do."""


class MechclaimsError(Exception):
    """Base class of every error mechclaims raises on purpose."""


class ModelSourceError(MechclaimsError):
    """A model source string or path that cannot be resolved or loaded."""


class IncompatibleCheckpoints(MechclaimsError):
    """The base and candidate models cannot be compared neuron by neuron."""

    def __init__(self, field: str, base_value, model_value, hint: str = ""):
        self.field, self.base_value, self.model_value = field, base_value, model_value
        msg = (
            f"base and model differ in {field}: base has {base_value!r}, model has {model_value!r}. "
            "A neuron-level comparison needs two checkpoints of one architecture "
            "(the model should be a fine-tune of the base)."
        )
        super().__init__(msg + (" " + hint if hint else ""))


class UnsafeCheckpoint(MechclaimsError):
    """A file that would need arbitrary code execution (pickle) to load."""


class ProbeError(MechclaimsError):
    """A probe file or vector that is unusable (wrong shape, non-finite, unknown format)."""


class PromptError(MechclaimsError):
    """A prompt file that is missing, empty or malformed."""


class NumericalError(MechclaimsError):
    """A statistic came out NaN or infinite; we refuse to report it silently."""
