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


# The layers of the package and their rank, lowest first; a module may import only from its own
# layer or a lower rank. ``study`` (the study engine) and ``tutorial`` (what the notebooks use) sit
# side by side on one rank: neither imports the other.
LAYERS = {"core": 0, "lm": 1, "runs": 2, "plots": 3, "study": 4, "tutorial": 4, "cli": 5}
TOP_LEVEL = {"reference": "runs", "__main__": "cli", "__init__": "core"}  # modules outside the sub-packages


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[1] in LAYERS else TOP_LEVEL.get(parts[1], "core")


def _modules():
    package = ROOT / "dsnot_lite"
    for path in sorted(package.rglob("*.py")):
        yield path, ".".join(("dsnot_lite", *path.relative_to(package).with_suffix("").parts))


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
            if base.startswith("dsnot_lite.") or base == "dsnot_lite":
                folder = ROOT.joinpath(*base.split("."))
                # `from dsnot_lite.study import refinement` imports the module study/refinement.py
                modules = {f"{base}.{a.name}" for a in node.names if (folder / f"{a.name}.py").is_file()}
                found |= modules or ({base} if base != "dsnot_lite" else set())
    return found


def test_imports_point_one_way_down_the_layers():
    """core -> lm -> runs -> plots -> study | tutorial -> cli: no module imports from a layer above
    its own or from the layer beside it, and the tensor functions (core) import neither
    transformers nor anything that touches files."""
    upward = []
    for path, module in _modules():
        own = _layer(module)
        for target in _imports(path, module):
            theirs = _layer(target)
            if LAYERS[theirs] > LAYERS[own] or (LAYERS[theirs] == LAYERS[own] and theirs != own):
                upward.append(f"{module} imports {target}")
        if _layer(module) == "core":
            assert "transformers" not in path.read_text(), f"{module} (core) mentions transformers"
    assert not upward, upward


def test_no_import_cycles_between_modules():
    """No module reaches itself through its own imports (top-level or inside functions): a cycle
    means two modules are one idea split in two, or a definition sits in the wrong one."""
    graph = {module: {t for t in _imports(path, module) if t != module} for path, module in _modules()}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == trail[0]:
                cycles.append(" -> ".join([*trail, nxt]))
            elif nxt not in trail and len(trail) < 12:
                visit(nxt, [*trail, nxt])

    for module in graph:
        visit(module, [module])
    assert not cycles, cycles[:5]
