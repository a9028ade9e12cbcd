"""``python -m socketloop``: see ``socketloop._cli``."""

import sys

from ._cli import main

sys.exit(main())
