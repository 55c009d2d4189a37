"""The package's import picture runs one way: no circle between modules, and nothing in the library
imports the CLI (`cli/` renders what the library returns; the library never reaches up into it);
and no module grows past 500 lines.

The picture is drawn from the source with `ast`, so it counts every import: at module level, inside
functions and under `TYPE_CHECKING` (a circle hidden in a function is still a circle to a reader).
Run this file as a script to print the picture.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "exo_gpu_plugins": ROOT / "exo_gpu_plugins",
    "exo_gpu_vulkan": ROOT / "vulkan_plugin" / "python" / "exo_gpu_vulkan",
}
CLI = "exo_gpu_plugins.cli"
# `python -m exo_gpu_plugins` is the CLI's own entry point, not library code.
ENTRY_POINTS = {"exo_gpu_plugins.__main__"}


def module_name(package: str, folder: Path, path: Path) -> str:
    parts = [package, *path.relative_to(folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            found[module_name(package, folder, path)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of `known` that `name` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module.
            targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            targets = targets or [base]
        else:
            continue
        for target in targets:
            found = target
            while found and found not in known:
                found = found.rpartition(".")[0]
            if found and found != name:
                yield found


def picture() -> dict[str, set[str]]:
    """Module -> the modules it imports (within the packages)."""
    found = modules()
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def in_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def test_no_module_imports_itself_in_a_circle() -> None:
    found = cycles(picture())
    assert not found, "import circles: " + "; ".join(" <-> ".join(group) for group in found)


def test_nothing_outside_cli_imports_cli() -> None:
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in picture().items()
        if not in_cli(name) and name not in ENTRY_POINTS
        for target in targets
        if in_cli(target)
    )
    assert not upward, f"the library imports the CLI: {upward}"


def test_no_module_is_over_500_lines() -> None:
    """One idea per module: a module past 500 lines holds several."""
    long = {
        name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, f"modules over 500 lines: {long}"


def test_the_picture_sees_function_level_and_type_checking_imports() -> None:
    graph = picture()
    assert "exo_gpu_plugins.errors" in graph["exo_gpu_plugins.backend"]
    # cli/__init__ imports its commands inside a function: the picture still has the arrow.
    assert any(target.startswith(CLI + ".") for target in graph[CLI])


if __name__ == "__main__":
    for name, targets in sorted(picture().items()):
        print(f"{name} -> {', '.join(sorted(targets)) or '-'}")
    for group in cycles(picture()):
        print("CIRCLE:", " <-> ".join(group))
