"""The shape of the code base: no import loop among Tally's own modules, and no function
too long to read in one sitting (but deliberately unrolled decoders, each marked)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Folder -> the package it is installed as (pyproject.toml [tool.setuptools] package-dir).
MAX_FUNCTION_LINES = 100
UNROLLED = "# unrolled:"  # the mark (and reason) of a decoder kept long on purpose, in its first lines
PACKAGES = {"tally": "tally", "producers": "tally.producers", "streams": "tally.streams",
            "sinks": "tally.sinks", "schemas": "tally.schemas", "infra": "tally.infra", "api": "tally.api",
            "ops": "tally.ops"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, at module level or inside functions (a loop
    through a function-level import is still a loop: it only hides until that call)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_loop_among_tally_modules():
    mods = modules()
    known = set(mods)
    graph = {name: imports(name, path, known) for name, path in mods.items()}
    assert sum(map(len, graph.values())) > 100  # the graph was really built
    assert cycles(graph) == []


def test_the_graph_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def long_functions(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    out = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = node.end_lineno - node.lineno + 1
            marked = any(UNROLLED in line for line in lines[node.lineno - 1:node.lineno + 10])
            if size > MAX_FUNCTION_LINES and not marked:
                out.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({size} lines)")
    return out


def test_no_function_over_100_lines_outside_bench_but_marked_decoders():
    paths = [*modules().values(), *(REPO / "tests").rglob("*.py")]
    assert [f for path in paths for f in long_functions(path)] == []
    unrolled = REPO / "streams" / "avro_bytes.py"
    assert UNROLLED in unrolled.read_text()  # the one decoder kept long, and marked


# docs/architecture.md, "Where things live": each folder imports only folders above it.
LAYERS = ["tally", "tally.infra", "tally.schemas", "tally.producers.collector", "tally.producers.sdk",
          "tally.streams", "tally.sinks", "tally.api", "tally.ops"]


def layer(module: str) -> int:
    return max(i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + "."))


def test_each_folder_imports_only_the_folders_below_it_in_the_map():
    mods = modules()
    known = set(mods)
    upward = [f"{name} -> {target}" for name, path in mods.items() for target in imports(name, path, known)
              if layer(target) > layer(name)]
    assert upward == []
