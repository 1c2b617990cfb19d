"""The built-in claims: the paper's findings as ``@claim`` tests.

In a checkout they live in ``claims/`` (``pytest claims/ --model ...``); an installed mechclaims
ships them as this package, ``mechclaims.claims``, whose directory ``mechclaims.claims_dir()``
returns. Run them from any directory with ``mechclaims check [pytest options]``.
"""
