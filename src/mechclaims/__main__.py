"""``python -m mechclaims ...`` (and ``torchrun ... -m mechclaims neurons ...``): the CLI."""

import sys

from .cli import main

sys.exit(main())
