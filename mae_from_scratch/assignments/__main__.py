"""``python -m mae_from_scratch.assignments``: the command line of ``cli``."""

import sys

from .cli import main

sys.exit(main())
