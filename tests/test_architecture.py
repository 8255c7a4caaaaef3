"""The package's shape: imports point down the layers, files and functions stay readable, and the
README's table of stages is the stage list's."""

import ast
from pathlib import Path

import pytest

import webly
from webly.app.stages import STAGES, markdown_rows

SRC = Path(webly.__file__).parent
ROOT = SRC.parent.parent
# lowest first; a module may import its own layer and those below, never one above
LAYERS = [
    ("webly", "webly.core"),  # the machinery every stage shares
    ("webly.data",),  # the method's library: data -> labels -> training -> inference
    ("webly.labels",),
    ("webly.training",),
    ("webly.inference",),
    ("webly.app",),  # the applications built on it
    ("webly.app.stages",),
    ("webly.app.launch",),
    ("webly.app.pipeline",),
    ("webly.app.runs",),
    ("webly.app.explorer",),
    ("webly.app.report",),
    ("webly.app.plan", "webly.app.own"),
    ("webly.app.demo",),
    ("webly.app.cli",),
]


def layer(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (rank, len(p))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every webly import in the file, inside functions too."""
    return imports_of(ast.parse(path.read_text()))


MODULES = sorted(SRC.rglob("*.py"))


def eager_imports(path: Path) -> list[str]:
    """webly modules a file imports when it is imported (not inside functions or TYPE_CHECKING)."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out += [m for _, m in imports_of(node)]
    return out


def imports_of(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every webly import under `tree`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("webly")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("webly"):
            # `from webly.core import faults` imports webly.core.faults
            names = [f"{node.module}.{a.name}" for a in node.names]
            out += [(node.lineno, n if n.rsplit(".", 1)[0] == "webly" else node.module)
                    for n in names]
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path):
    me = module_name(path)
    if me == "webly":
        # the package root is the public face (`webly.load`): it reaches the layers above only
        # on use, so `import webly` loads nothing but itself
        assert eager_imports(path) == []
        return
    up = [f"line {ln}: {me} imports {m}" for ln, m in imports(path) if layer(m) > layer(me)]
    assert not up, "\n".join(up)


def import_graph() -> dict[str, set[str]]:
    """module -> the webly modules it imports (inside functions and TYPE_CHECKING too)."""
    names = {module_name(p): p for p in MODULES}

    def owner(m: str) -> str:  # `from webly.core import faults` names a module; a class does not
        while m not in names and "." in m:
            m = m.rsplit(".", 1)[0]
        return m

    graph = {}
    for me, path in names.items():
        graph[me] = {owner(m) for _, m in imports(path)} - {me}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_lazy_imports_included():
    found = cycles(import_graph())
    assert not found, "import cycles (an import inside a function is still one):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_cycle_check_catches_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from webly.inference.predict import predict\n")
    assert [layer(m) for _, m in imports(bad)] == [layer("webly.inference")] > [layer("webly.data")]


def test_no_module_over_400_lines_no_function_over_80():
    long_files = [f"{module_name(p)}: {n}" for p in MODULES
                  if (n := len(p.read_text().splitlines())) > 400]
    long_functions = []
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_functions.append(f"{module_name(p)}.{node.name}: {n}")
    assert not long_files and not long_functions, (long_files, long_functions)


def test_readme_lists_every_stage_as_the_stage_list_says():
    readme = (ROOT / "README.md").read_text()
    missing = [row for row in markdown_rows() if row not in readme]
    assert not missing, "README's stage table is stale; missing rows:\n" + "\n".join(missing)
    assert len(markdown_rows()) == len(STAGES)
