"""`python -m ekd` is `python -m ekd.train`."""

import sys

from .train import main

sys.exit(main())
