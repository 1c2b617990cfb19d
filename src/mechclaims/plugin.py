"""pytest plugin entry point (``pytest11``).

The claim suite's options (``--model``, ``--base``, ``--probe`` ...), session fixtures and the
HTML claim report are registered here. It must stay cheap to import: torch and transformers
are imported lazily inside fixtures, so ``pytest --help`` stays fast.

The claims themselves are not written yet (the "claim suite" issue); until then this plugin
registers nothing, and the engine is used through ``mechclaims neurons`` or the library.
"""
