"""mechclaims: a research finding about model internals, as an executable test.

The data path (ARCHITECTURE.md has one line per module):

    options -> config.ClaimsConfig -> runspec.RunSpec (sources, probe, prompts, scorer resolved
    once) -> analysis (stats -> attribution) -> behaviour -> suite.SuiteResult -> report / JSON /
    JUnit (plugin)

Ground floor (imports nothing above it): ``errors``, ``choices``, ``cache``, ``provenance``.
Engine: ``sources``, ``loading``, ``prompts``, ``probe``, ``stats``, ``attribution``,
``interventions``, ``perplexity``, ``scoring``. Claims: ``claim``, ``metrics``, ``config``,
``runspec``, ``analysis``, ``behaviour``, ``suite``, ``report``, ``plugin``, ``cli``.
Organisms: ``organism`` (runtime) and ``organism.build`` (a leaf that uses the engine).

Nothing here imports pytest but the plugin; importing ``mechclaims`` does not import torch.
"""

__version__ = "0.1.0"
