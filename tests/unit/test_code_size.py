"""House rule: files under 400 lines, functions under about 80 (STYLE.md). A file or function that grew past it is
a sign two concerns share it; split it by concern rather than raising the limit."""

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "edge_inspector"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources():
    return [(path.relative_to(PACKAGE_ROOT.parent), path.read_text()) for path in sorted(PACKAGE_ROOT.rglob("*.py"))]


def test_files_stay_small():
    long = [f"{name}: {len(text.splitlines())} lines" for name, text in _sources()
            if len(text.splitlines()) > MAX_FILE_LINES]
    assert not long, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(long)


def test_functions_stay_short():
    long = [f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, text in _sources() for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
