"""The layout shows the architecture: imports only point down the layers, every module says what it owns."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zstagger"

# Lower numbers are deeper. A module may import its own layer and the ones below it, never above.
LAYERS = {
    "errors": 0, "settings": 0, "results": 0, "files": 0, "extras": 0, "compiled_cache": 0,
    "engine": 1,
    "taxonomy": 2, "hookspecs": 2, "plugins": 2, "registry": 2, "builtin": 2, "images": 2, "synthetic": 2, "embedding_cache": 2, "fewshot": 2,
    "store": 2,  # below the tagger, which opens it from ZSTAGGER_STORE; what reads it to re-tag is "catalogue"
    "classifier": 3,
    "tagger": 4,
    "evaluation": 5, "catalogue": 5, "bench": 5, "testing": 5,
    "queue": 6,
    "service": 7,
    "cli": 8,
}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def area(parts: tuple[str, ...]) -> str | None:
    return parts[0] if parts and parts[0] != "__init__" else None


def internal_imports(path: Path, parts: tuple[str, ...]):
    """(line, imported area) for every import of another zstagger area, relative or absolute."""
    tree = ast.parse(path.read_text())
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:  # from . import x, y
                    for alias in node.names:
                        name = ([*target, alias.name] or [None])[0]
                        # `from .. import __version__`: the package root, not an area
                        yield node.lineno, None if not target and not (PACKAGE / name).exists() and not (
                            PACKAGE / f"{name}.py").exists() else name
                    continue
                yield node.lineno, target[0] if target else None
            elif node.module and node.module.split(".")[0] == "zstagger":
                names = node.module.split(".")[1:]
                yield node.lineno, names[0] if names else None
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "zstagger" and len(names) > 1:
                    yield node.lineno, names[1]


@pytest.mark.parametrize("path,parts", list(modules()), ids=lambda v: "/".join(v) if isinstance(v, tuple) else "")
def test_imports_point_down_the_layers(path, parts):
    own = area(parts)
    if own is None:
        return  # zstagger/__init__.py re-exports the public API from every layer, lazily
    assert own in LAYERS, f"{own} has no layer: add it to LAYERS in tests/test_layout.py"
    for line, imported in internal_imports(path, parts):
        if imported is None or imported == own:
            continue
        assert imported in LAYERS, f"{path.name}:{line} imports unknown area {imported}"
        assert LAYERS[imported] <= LAYERS[own], (
            f"zstagger/{'/'.join(parts)}.py:{line} imports {imported} (layer {LAYERS[imported]}) "
            f"from {own} (layer {LAYERS[own]}): imports must point down"
        )


def test_settings_import_nothing_from_the_package():
    path = PACKAGE / "settings.py"
    assert not [imported for _, imported in internal_imports(path, ("settings",))]


def test_the_queue_never_imports_the_service_and_the_engine_nothing_above_it():
    for path, parts in modules():
        imported = {name for _, name in internal_imports(path, parts)}
        if parts[0] == "queue":
            assert "service" not in imported and "cli" not in imported, path
        if parts[0] == "engine":
            assert imported <= {"engine", "errors", "settings"}, (path, imported)


@pytest.mark.parametrize("path", [p for p, _ in modules()], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_opens_with_a_docstring(path):
    if path.name == "__main__.py":
        return
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring saying what it owns"
