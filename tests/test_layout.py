"""The floor plan of the package (docs/architecture.md): every module imports cleanly on its own,
nanoseek's own imports form an acyclic graph whose arrows only run down the floors, and the files
stay small enough to read.

The graph is read from each module's top-level import statements (``ast``); an import inside a
function is a lazy import, allowed only a few times and each with a comment saying why.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "nanoseek"

# Floors, lowest first: a module may import from its own floor or below, never from above.
FLOORS = [
    {"errors", "atomic", "paths", "progress", "config", "tokenizer"},
    {"model"},
    {"rewards", "tasks"},
    {"policy", "runs"},
    {"rl", "train", "evaluation"},
    {"recipes", "serve"},
    {"cli"},
]
MAX_TOP_LEVEL_FILES = 8
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_LAZY_IMPORTS = 5


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The nanoseek modules an import statement names (``from a import b`` names ``a.b`` when that
    is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            here = here[: len(here) - node.level + 1]
            base = ".".join(here + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name.startswith("nanoseek"):
            out.append(name)
    return out


def _imports(module: str) -> tuple[set[str], list[tuple[str, int]]]:
    """(top-level imports, [(lazy import, line)]) of nanoseek modules in ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    top, lazy = set(), []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(child, module):
                    if in_function:
                        lazy.append((t, child.lineno))
                    elif t != module:
                        top.add(t)
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, lazy


def _floor(module: str) -> int:
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else "__init__"
    for i, rooms in enumerate(FLOORS):
        if room in rooms:
            return i
    raise AssertionError(f"{module} is in no floor of tests/test_layout.py: add its room to FLOORS")


# One interpreter pre-imports the third-party libraries (torch alone takes ~1.5 s), then forks a
# child per module: each child starts with no nanoseek module loaded, so a module that only
# imports because another one ran first fails here. (~100 fresh interpreters would cost minutes.)
_FORK_SERVER = """
import importlib, os, sys
import numpy, torch, tokenizers, safetensors, fastapi, pydantic, tqdm  # noqa: F401
failed = []
for m in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(m)
        except BaseException as e:
            sys.stderr.write(f"{m}: {type(e).__name__}: {e}\\n")
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(m)
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    proc = subprocess.run([sys.executable, "-c", _FORK_SERVER, *MODULES], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_import_graph_is_acyclic():
    graph = {m: _imports(m)[0] for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                walk(t, path + [t])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            walk(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_arrows_only_run_down_the_floors():
    up = []
    for m in MODULES:
        if m == "nanoseek":  # the package front re-exports the public API from every floor
            continue
        for t in _imports(m)[0] | {x for x, _ in _imports(m)[1]}:
            if t != "nanoseek" and _floor(t) > _floor(m):
                up.append(f"{m} -> {t}")
    assert not up, "imports that run back up: " + ", ".join(sorted(up))


@pytest.mark.parametrize("core", ["model", "rl"])
def test_core_does_not_import_the_applications(core):
    bad = [f"{m} -> {t}" for m in MODULES if m.startswith(f"nanoseek.{core}")
           for t in _imports(m)[0] | {x for x, _ in _imports(m)[1]}
           if t.split(".")[1:2] and t.split(".")[1] in ("serve", "cli", "recipes")]
    assert not bad, bad


def test_lazy_imports_are_few_and_say_why():
    lazy = [(m, t, line) for m in MODULES for t, line in _imports(m)[1]]
    assert len(lazy) <= MAX_LAZY_IMPORTS, f"{len(lazy)} lazy imports of nanoseek modules: {lazy}"
    for m, t, line in lazy:
        lines = MODULES[m].read_text().splitlines()
        said = lines[line - 1] + (lines[line - 2] if line >= 2 else "")
        assert "#" in said, f"{m}:{line} imports {t} lazily without a comment saying why"


def test_few_top_level_files():
    files = sorted(p.name for p in PKG.glob("*.py"))
    assert len(files) <= MAX_TOP_LEVEL_FILES, files


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for m, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{m}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{m}.{node.name}: {n} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_no_private_names_imported_across_modules():
    bad = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nanoseek"):
                bad += [f"{m}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad
