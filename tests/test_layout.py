"""The layout shows the architecture: imports only point down the layers, every module says what it owns."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zstagger"

# Every area has its own place; lower numbers are deeper. A module may import its own area and
# areas with a lower number, never one with a higher number (nor one with the same number: no
# two areas share a place, so two areas can never import each other). The tens are the bands
# of STYLE.md's arrows, each band below the next:
#   engine <- taxonomy/plugins/images/net/media/sources <- embedder/pipeline <- tagger
#   <- evaluation/store/review <- queue <- service <- cli
# Within a band the order is the one the imports need. Areas that later issues add have their
# place reserved already (net, media, sources, sinks, runtimes, review), so they just fit.
LAYERS = {
    # 0: the foundation, imported by everything
    "settings": 0, "errors": 1, "results": 2, "files": 3, "extras": 4,
    "compiled_cache": 5,  # compiled taxonomies and label sets, bounded by memory
    # 10: the engine: pure maths and model I/O
    "engine": 10,
    # 20: inputs and definitions: the network, images, media, taxonomies and the plugins that bring them
    "net": 20,  # every outbound request: fetcher, address policy, deadlines
    "synthetic": 21,  # generated images, for tests and benchmarks
    "images": 22,
    "taxonomy": 23,
    "product_taxonomy": 23.5,  # Shopify's published product taxonomy files to a taxonomy spec
    "hookspecs": 24, "plugins": 25, "builtin": 26, "registry": 27,
    "media": 28,  # animations and video: frames like images, judged with a taxonomy's media policy
    "sources": 29,  # reserved: image sources by scheme, registered like plugins
    # 30: what the embedder and the tagger are handed: caches, the embedding store's backends,
    # image sets, compiled taxonomies, model runtimes. The embedding store sits here (not with
    # evaluation) because every Tagger opens it from ZSTAGGER_STORE as its image cache; what
    # reads it to re-tag, diff and search is "catalogue", above the tagger.
    "embedding_cache": 30, "store": 31, "fewshot": 32,
    "trail": 33,  # a result's decision trail: which prompt, rival and threshold decided each label
    "classifier": 34,
    "runtimes": 35,  # model runtimes behind one interface: torch (engine) or a built OpenVINO directory
    # 40: one image to one vector, and an iterable through threads
    "pipeline": 40, "embedder": 41,
    "stages": 42,  # stages wrapping the embedder's for one stream: stop reading, media aside, numbered
    # 50: the facade
    "tagger": 50,
    "explain": 51,  # where in the image a label comes from (heat maps), through the Tagger
    # 60: what builds on tagging: accuracy, the stored catalogue, review, measuring
    "evaluation": 60, "catalogue": 61, "review": 62, "sinks": 63, "bench": 64, "testing": 65,
    "queue": 70,
    "service": 80,
    "cli": 90,
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
        assert LAYERS[imported] < LAYERS[own], (
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


# -- import circles between modules -------------------------------------------------------
# Layers order areas; within an area (and across areas, should a layer ever be wrong) this
# check looks at modules. It counts every import that can run: module level and function-local
# (lazy) imports alike. A lazy import only moves a circle from import time to call time and
# still ties the two modules together, so it counts. Imports under ``if TYPE_CHECKING:`` never
# run and do not count (they are how a type annotation names a class without importing it).


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path, _ in modules()}


def _imported_modules(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The zstagger modules an import statement in module ``name`` loads (a name imported
    from a package counts as that package, unless it is one of the package's modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    if node.level:
        package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    if target.split(".")[0] != "zstagger":
        return []
    return [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target for alias in node.names]


def _runnable_imports(tree: ast.AST):
    """Every import statement that can run: skips the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield from _runnable_imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runnable_imports(node)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {target for node in _runnable_imports(ast.parse(path.read_text()))
                       for target in _imported_modules(name, node) if target in MODULES and target != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    circles.append(sorted(group))
    return circles


def test_no_two_modules_import_each_other_directly_or_through_a_chain():
    graph = import_graph()
    circles = import_circles(graph)
    described = []
    for group in circles:
        ties = [f"{a} -> {b}" for a in group for b in sorted(graph[a]) if b in group]
        described.append(f"{', '.join(group)} ({'; '.join(ties)})")
    assert not circles, "import circles (break each by moving what both need below both):\n" + "\n".join(described)


def test_the_circle_check_sees_a_chain_and_ignores_type_checking_imports():
    chain = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(chain) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import y\n"
                     "def f():\n    from .z import w\n")
    assert [node.module for node in _runnable_imports(tree) if isinstance(node, ast.ImportFrom)] == ["typing", "z"]
