"""The module graph has no cycle, not even through an import inside a function: each module can be read (and
loaded) after the ones it names. Read from the source with ast: nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def module_graph(root: Path) -> dict[str, set[str]]:
    """For every module of the daemon and tui packages, the modules of those packages it imports (anywhere)."""
    files = {}
    for pkg in ("daemon", "tui"):
        for f in (root / pkg).rglob("*.py"):
            parts = f.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, f in files.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[module] |= {n for n in names if n in files and n != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_no_module_imports_itself_back() -> None:
    assert cycles(module_graph(REPO)) == []


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    (tmp_path / "daemon").mkdir()
    (tmp_path / "tui").mkdir()
    (tmp_path / "daemon" / "a.py").write_text("from daemon.b import x\n")
    (tmp_path / "daemon" / "b.py").write_text("def x():\n    from daemon import c\n")
    (tmp_path / "daemon" / "c.py").write_text("import daemon.a\n")
    assert cycles(module_graph(tmp_path)) == [["daemon.a", "daemon.b", "daemon.c"]]
