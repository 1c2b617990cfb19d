"""mechclaims: a research finding about model internals, as an executable test.

The data path (ARCHITECTURE.md has one line per module):

    options -> config.ClaimsConfig -> runspec.RunSpec (sources, probe, prompts, scorer resolved
    once) -> analysis (stats -> attribution) -> behaviour -> suite.SuiteResult -> report / JSON /
    JUnit (plugin)

Ground floor (imports nothing above it): ``errors``, ``choices``, ``cache``, ``provenance``.
Engine: ``sources``, ``loading``, ``prompts``, ``probe``, ``stats``, ``attribution``,
``interventions``, ``perplexity``, ``scoring``. Claims: ``claim``, ``metrics``, ``config``,
``runspec``, ``analysis``, ``behaviour``, ``suite``, ``report``, ``plugin``, ``cli``.
Organisms: ``organism`` (runtime) and ``builder`` (makes them; a leaf that uses the engine).

Nothing here imports pytest but the plugin; importing ``mechclaims`` does not import torch.
"""

__version__ = "0.1.0"


def claims_dir():
    """The directory of the built-in claims (the package ``mechclaims.claims``) as a ``Path``.

    In an installed wheel it is inside the package; in a checkout (editable install) it is the
    repository's ``claims/``. ``mechclaims check`` runs pytest on it; ``mechclaims sweep`` and
    the TRL callback load their claims from it unless given another directory."""
    import importlib.util
    from pathlib import Path

    from .errors import ConfigError

    try:
        spec = importlib.util.find_spec("mechclaims.claims")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    # src/ on sys.path without an install (PYTHONPATH=src): the checkout's claims/ beside it
    checkout = Path(__file__).resolve().parents[2] / "claims"
    if (checkout / "__init__.py").is_file():
        return checkout
    raise ConfigError(f"the built-in claims were not found: no package mechclaims.claims and no {checkout}; "
                      "reinstall mechclaims (pip install mechclaims, or pip install -e . in a checkout).")
