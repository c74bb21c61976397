"""Put this folder on ``sys.path`` so test modules in sub-folders import the shared helpers
(``_tiny``, ``_tinydir``, ``oracle``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
