"""`python -m ekd` is `python -m ekd.train`."""

import sys

from .train.__main__ import main

sys.exit(main())
