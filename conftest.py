"""Root conftest.

The claim suite's options (``--claims-model``, ...), fixtures and report come from the
``mechclaims`` pytest plugin (registered through the ``pytest11`` entry point); the short forms
(``--model``, ...) from ``claims/conftest.py``. Nothing needs to be configured here. ``pytest``
alone runs the project's own tests (``testpaths = ["tests"]`` in pyproject.toml).
"""

collect_ignore = ["fixtures", "reports", "src"]
