"""The package itself: where it imports from, its version and metadata, and the one-way layering of its imports."""

import re
from pathlib import Path

import dsnot_lite

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_semver():
    assert re.fullmatch(r"\d+\.\d+\.\d+", dsnot_lite.__version__), dsnot_lite.__version__


def test_imported_from_this_checkout():
    assert Path(dsnot_lite.__file__).resolve().parent == ROOT / "dsnot_lite"


def test_packaging_metadata_matches():
    from importlib.metadata import version

    assert version("dsnot-lite") == dsnot_lite.__version__


# The layers of the package, lowest first; a module may import only from its own layer or below.
LAYERS = ("core", "lm", "runs", "study", "cli")
TOP_LEVEL = {"reference": "runs", "__main__": "cli", "__init__": "core"}  # modules outside the sub-packages


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[1] in LAYERS else TOP_LEVEL.get(parts[1], "core")


def _imports(path: Path, module: str) -> set[str]:
    """Every dsnot_lite module ``path`` imports, at the top or inside functions (relative ones resolved)."""
    import ast

    found = set()
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dsnot_lite.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("dsnot_lite."):
                found.add(base)
            elif base == "dsnot_lite":
                found |= {f"dsnot_lite.{a.name}" for a in node.names}
    return found


def test_imports_point_one_way_down_the_layers():
    """core -> lm -> runs -> study -> cli: no module imports from a layer above its own, and the
    tensor functions (core) import neither transformers nor anything that touches files."""
    package = ROOT / "dsnot_lite"
    upward = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(("dsnot_lite", *path.relative_to(package).with_suffix("").parts))
        own = LAYERS.index(_layer(module))
        for target in _imports(path, module):
            if LAYERS.index(_layer(target)) > own:
                upward.append(f"{module} imports {target}")
        if _layer(module) == "core":
            assert "transformers" not in path.read_text(), f"{module} (core) mentions transformers"
    assert not upward, upward
