"""The module graph has no cycle, not even through an import inside a function: each module can be read (and
loaded) after the ones it names. And the floors stay in order: the path of a module says which process it runs in
(docs/ARCHITECTURE.md), and a floor imports only the floors below it. Read from the source with ast: nothing is
imported."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


# which floors each floor may import; the client (the commands a person runs) may import every one
MAY_IMPORT = {"core": {"core"}, "engine": {"core", "engine"}, "trainer": {"core", "trainer"}, "tui": {"core", "tui"},
              "client": {"core", "engine", "trainer", "tui", "client", "web"},
              # the server (overnight serve): the core, and the dashboard's telemetry (psutil, NVML; no Textual)
              "web": {"core", "tui", "web"}}
# libraries a floor never imports, not even inside a function
NEVER = {"core": {"click", "textual", "textual_plotext", "torch", "peft", "accelerate", "trl", "bitsandbytes"},
         "engine": {"click", "textual", "textual_plotext", "torch", "transformers", "peft", "accelerate", "trl",
                    "bitsandbytes"},
         "trainer": {"click", "textual", "textual_plotext"},
         "tui": {"click", "torch", "transformers", "peft", "accelerate", "trl", "bitsandbytes"},
         "web": {"click", "textual", "textual_plotext", "torch", "transformers", "peft", "accelerate", "trl",
                 "bitsandbytes"}}
# the one piece of transformers the core uses: its jinja sandbox renders chat templates exactly as training does, and
# loads no torch (tests/test_lazy_imports.py); the daemon uses it through the core when it checks a drop
CORE_MAY_USE = {"transformers.utils.chat_template_utils"}


def _sources(root: Path) -> dict[str, Path]:
    files = {}
    for pkg in ("daemon", "tui"):
        for f in (root / pkg).rglob("*.py"):
            parts = f.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return files


def _imported_names(f: Path) -> set[str]:
    """Every dotted name an import anywhere in `f` names: `from a.b import c` gives a.b and a.b.c."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def module_graph(root: Path) -> dict[str, set[str]]:
    """For every module of the daemon and tui packages, the modules of those packages it imports (anywhere)."""
    files = _sources(root)
    return {m: {n for n in _imported_names(f) if n in files and n != m} for m, f in files.items()}


def floor(module: str) -> str:
    """core, engine, client, trainer or tui: the folder a module sits in (the package roots count as core)."""
    parts = module.split(".")
    if parts[0] == "tui":
        return "tui"
    if module == "daemon.__main__":
        return "client"
    return parts[1] if len(parts) > 1 else "core"


def floor_breaks(root: Path) -> list[str]:
    """Each import that goes to a floor its module's floor may not import, as `module -> module`."""
    return sorted(f"{m} -> {n}" for m, names in module_graph(root).items() for n in names
                  if floor(n) not in MAY_IMPORT[floor(m)])


def library_breaks(root: Path) -> list[str]:
    """Each import of a library a floor never imports, as `module -> library`."""
    found = []
    for m, f in _sources(root).items():
        for name in _imported_names(f):
            top = name.split(".")[0]
            if top in NEVER.get(floor(m), set()) or (top == "transformers" and floor(m) == "core"
                                                     and not any(name.startswith(ok) for ok in CORE_MAY_USE)):
                found.append(f"{m} -> {name}")
    return sorted(set(found))


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


def test_each_floor_imports_only_the_floors_below_it() -> None:
    assert floor_breaks(REPO) == []


def test_the_core_loads_no_click_textual_or_torch_and_the_daemon_no_torch_or_transformers() -> None:
    assert library_breaks(REPO) == []


def test_a_floor_break_and_a_library_break_are_found(tmp_path: Path) -> None:
    for folder in ("daemon/core", "daemon/engine", "daemon/trainer", "tui"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "daemon/core/a.py").write_text("def f():\n    from daemon.engine import b\n")
    (tmp_path / "daemon/engine/b.py").write_text("import torch.nn\n")
    (tmp_path / "daemon/trainer/c.py").write_text("from daemon.core.a import f\nfrom daemon.engine.b import g\n")
    (tmp_path / "tui/d.py").write_text("from daemon.core import a\nfrom transformers import AutoModel\n")
    assert floor_breaks(tmp_path) == ["daemon.core.a -> daemon.engine.b", "daemon.trainer.c -> daemon.engine.b"]
    assert library_breaks(tmp_path) == ["daemon.engine.b -> torch.nn", "tui.d -> transformers",
                                        "tui.d -> transformers.AutoModel"]
