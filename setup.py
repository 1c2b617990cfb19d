"""The one thing pyproject.toml cannot say: the package list over two source roots.

``src/`` holds ``mechclaims`` and its subpackages; ``claims/`` (the built-in claims, kept at the
top of a checkout so that ``pytest claims/`` runs them) is the package ``mechclaims.claims``, with
any claim packs below it (``claims/<pack>/__init__.py`` -> ``mechclaims.claims.<pack>``). Both
the wheel and an editable install (``pip install -e .``) map them through ``package-dir`` in
pyproject.toml, so ``import mechclaims.claims`` works in either.
"""

from setuptools import find_packages, setup

CLAIMS = ["mechclaims.claims"] + [f"mechclaims.claims.{p}" for p in find_packages("claims")]

setup(packages=find_packages("src") + CLAIMS)
