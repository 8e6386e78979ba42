"""The package's layers, as a table: which package may import which (ARCHITECTURE.md draws the same picture).

Every ``import`` in ``edge_inspector/`` counts, lazy ones inside functions too (a lazy import is still a
dependency; it only moves the failure to run time). Imports under ``if TYPE_CHECKING:`` are ignored. A new upward
import, a new package that is not in the table, a package cycle or a file-level import cycle fails here with the
importing file named. Change the table only together with ARCHITECTURE.md, and say why in the commit.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "edge_inspector"

# The contract: both halves use it; it uses only the stdlib, numpy, yaml and pydantic.
CONTRACT = {"__init__", "errors", "log", "config", "results", "bundle", "preprocess"}
# Compile-time code may check what ships against the run-time engines and decision, nothing else of the run time.
SHIPPED_CHECKS = {"engines", "pipeline.decision"}

ALLOWED: dict[str, set[str]] = {
    # contract, bottom up
    "__init__": set(),
    "errors": set(),
    "log": {"errors"},
    "config": {"errors"},
    "results": {"errors"},
    "bundle": {"__init__", "errors", "log", "config"},
    "preprocess": {"errors", "bundle"},
    # run time: never torch (test_import_boundaries.py); capture, engines and publish never see each other
    "engines": CONTRACT,
    "capture": CONTRACT,
    "publish": CONTRACT,
    "pipeline": CONTRACT | {"engines", "capture", "publish"},
    "ops": CONTRACT | {"engines", "capture", "publish", "pipeline"},
    # compile time, lower -> upper: model, data -> training -> export -> quantization -> workflows
    "model": CONTRACT,
    "data": CONTRACT,
    "training": CONTRACT | {"model", "data"} | SHIPPED_CHECKS,
    "export": CONTRACT | {"model", "data"} | SHIPPED_CHECKS,
    "quantization": CONTRACT | {"model", "data", "training", "export"} | SHIPPED_CHECKS,
    "workflows": CONTRACT | {"model", "data", "training", "export", "quantization"} | SHIPPED_CHECKS,
    # the top: one module per subcommand, each a thin shell
    "cli": {"*"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _imports(module: str, path: Path) -> set[str]:
    """The package's own modules that ``module`` imports (``from x import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str:
    """edge_inspector.pipeline.loop -> 'pipeline'; edge_inspector.config -> 'config'; edge_inspector -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _allowed(importer: str, imported: str) -> bool:
    rules = ALLOWED[_layer(importer)]
    target = imported.split(".", 1)[1] if "." in imported else "__init__"
    return "*" in rules or _layer(imported) in rules or any(target == r or target.startswith(r + ".") for r in rules)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_package_is_in_the_table():
    unknown = sorted({_layer(m) for m in MODULES} - set(ALLOWED))
    assert not unknown, f"packages without a row in ALLOWED (add one, and to ARCHITECTURE.md): {unknown}"


def test_imports_follow_the_layers():
    wrong = sorted(f"{MODULES[a].relative_to(PACKAGE_ROOT.parent)} imports {b}"
                   for a, targets in IMPORTS.items() for b in targets
                   if _layer(a) != _layer(b) and _layer(a) in ALLOWED and not _allowed(a, b))
    assert not wrong, "imports against the layer table:\n" + "\n".join(wrong)


def test_no_package_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, targets in IMPORTS.items():
        graph[_layer(a)].update(_layer(b) for b in targets if _layer(b) != _layer(a))
    assert _cycles(graph) == []


def test_no_file_cycles():
    # A package's __init__ re-exporting its own modules is not a cycle worth failing on.
    graph = {a: {b for b in targets if MODULES[b].name != "__init__.py"} for a, targets in IMPORTS.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("importer, imported, allowed", [
    ("edge_inspector.publish.mqtt", "edge_inspector.pipeline.loop", False),   # run time: publish looks down only
    ("edge_inspector.pipeline.line", "edge_inspector.ops.http", False),        # ops is handed the line
    ("edge_inspector.export.qdq", "edge_inspector.quantization.units", False),  # export sits below quantization
    ("edge_inspector.engines.ort", "edge_inspector.model.haloae", False),     # run time never reaches torch code
    ("edge_inspector.training.metrics", "edge_inspector.pipeline.decision", True),
    ("edge_inspector.training.metrics", "edge_inspector.pipeline.loop", False),
    ("edge_inspector.cli.run", "edge_inspector.pipeline.line", True),
])
def test_the_table_refuses_the_cycles_issue_12_found(importer, imported, allowed):
    assert _allowed(importer, imported) is allowed


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
