"""``python -m mechclaims.organism build|check|curve``: the old spelling of
``python -m mechclaims.builder``, kept working.

An entry script sits above everything, so it may import the builder; the runtime package
``mechclaims.organism`` itself never does (tests/test_architecture.py)."""

import sys

from mechclaims.builder.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
