"""The short option forms for the built-in claims: ``--model``, ``--base``, ``--probe``, ...

The installed ``mechclaims`` plugin registers only prefixed options (``--claims-model``, ...), so
it never changes another project's pytest run. This conftest (loaded first when you run
``pytest claims/ ...`` or ``mechclaims check ...``) adds the short forms the README uses; each
sets the same value as its prefixed option. A short form that another conftest or plugin
already defines (say your own ``--device``) is left to its owner: use the prefixed one.

Your own claim files get the same short forms with these three lines in your root conftest.py.
"""

from mechclaims.plugin import add_short_options


def pytest_addoption(parser):
    add_short_options(parser)
