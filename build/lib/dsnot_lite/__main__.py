"""``python -m dsnot_lite``: see ``dsnot_lite.cli``."""

import sys

from dsnot_lite.cli import main

sys.exit(main())
