"""Where the project and the read-only material beside it (``../shared``) are."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
REFERENCE_DIR = SHARED / "reference" / "official-dsnot"
E2E_DIR = SHARED / "reference" / "official-e2e"
SPEC = SHARED / "spec" / "dsnot.md"
