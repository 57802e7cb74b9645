"""The house stays walkable: no import circles, no private names across modules, small
modules and functions (docs/architecture.md).

The import graph is read with ``ast`` from the sources of ``usr/``, ``plumbing/`` and
``porcelain/``, counting imports inside functions too: a lazy import that closes a loop
is still a loop (it only moves the failure to the hour the function first runs).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("usr", "plumbing", "porcelain")
#: "no module of usr/ is over about 600 lines"
MODULE_LINES = 600
#: "no function longer than about 80 lines in usr/sync/, usr/merge.py, usr/store/"
FUNCTION_LINES = 80
FUNCTION_DIRS = ("usr/sync", "usr/store", "usr/merge.py", "usr/merge_content.py")
#: A longer function says why in its docstring with this phrase.
NOT_SPLIT = "Not split:"


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: dict[str, int] = field(default_factory=dict)  # module -> first line
    private: list[str] = field(default_factory=list)  # "line: what"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _load() -> dict[str, Module]:
    mods: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = _module_name(path)
            mods[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    for mod in mods.values():
        _read_imports(mod, mods)
    return mods


def _base_of(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = mod.name.split(".")
    if mod.path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _read_imports(mod: Module, mods: dict[str, Module]) -> None:
    """Edges to our modules, and every private name taken from one of them."""
    aliases: dict[str, str] = {}  # local name -> our module it is bound to
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods:
                    mod.imports.setdefault(a.name, node.lineno)
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(mod, node)
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in mods:
                    mod.imports.setdefault(full, node.lineno)
                    aliases[a.asname or a.name] = full
                elif base in mods:
                    mod.imports.setdefault(base, node.lineno)
                    if _private(a.name):
                        mod.private.append(f"{node.lineno}: from {base} import {a.name}")
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = _dotted(node.value)
            target = aliases.get(owner or "", owner if owner in mods else None)
            if target is not None and target != mod.name:
                mod.private.append(f"{node.lineno}: {owner}.{node.attr} ({target})")
    mod.imports.pop(mod.name, None)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _circles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in mods:
        if start in index:
            continue
        work = [(start, iter(sorted(mods[start].imports)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in mods:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(mods[nxt].imports))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def mods() -> dict[str, Module]:
    return _load()


def test_the_import_graph_has_no_circle(mods: dict[str, Module]) -> None:
    circles = _circles(mods)
    detail = []
    for component in circles:
        members = set(component)
        for name in component:
            for target, line in sorted(mods[name].imports.items()):
                if target in members:
                    detail.append(f"{name}:{line} imports {target}")
    assert not circles, "import circles:\n" + "\n".join(detail)


def test_no_private_name_crosses_a_module_boundary(mods: dict[str, Module]) -> None:
    crossing = [f"{m.name}:{p}" for m in mods.values() for p in m.private]
    assert not crossing, "private names imported across modules:\n" + "\n".join(crossing)


def test_errors_depends_on_nothing_of_ours(mods: dict[str, Module]) -> None:
    assert mods["usr.errors"].imports == {}


def test_the_library_never_imports_the_cli(mods: dict[str, Module]) -> None:
    """``porcelain -> plumbing -> usr``: the library knows no command (``python -m usr``,
    the entry point, is the one module of ``usr`` that starts the CLI)."""
    wrong = [
        f"{m.name} imports {t}"
        for m in mods.values()
        if m.name.split(".")[0] == "usr" and m.name != "usr.__main__"
        for t in m.imports
        if t.split(".")[0] in ("plumbing", "porcelain")
    ]
    assert not wrong, "\n".join(wrong)


def test_modules_of_usr_are_small(mods: dict[str, Module]) -> None:
    big = [
        f"{m.path.relative_to(REPO)}: {n} lines"
        for m in mods.values()
        if m.name.startswith("usr") and (n := len(m.path.read_text().splitlines())) > MODULE_LINES
    ]
    assert not big, f"modules over {MODULE_LINES} lines:\n" + "\n".join(big)


def test_functions_fit_on_a_few_screens(mods: dict[str, Module]) -> None:
    long = []
    for m in mods.values():
        rel = m.path.relative_to(REPO).as_posix()
        if not any(rel == d or rel.startswith(d + "/") for d in FUNCTION_DIRS):
            continue
        for node in ast.walk(m.tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > FUNCTION_LINES and NOT_SPLIT not in (ast.get_docstring(node) or ""):
                long.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert not long, f"functions over {FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_every_module_says_what_it_owns(mods: dict[str, Module]) -> None:
    """Each module of the sync and the store opens with a docstring (what it owns)."""
    silent = [
        m.name
        for m in mods.values()
        if m.name.startswith(("usr.sync.", "usr.store."))
        and not (ast.get_docstring(m.tree) or "").strip()
    ]
    assert not silent, "modules without a docstring: " + ", ".join(silent)


def test_the_checker_sees_a_circle_and_a_private_import(tmp_path: Path) -> None:
    """The checks above can fail: a planted circle and a planted private import are found."""
    a = Module("usr.a", tmp_path / "a.py", ast.parse("from usr.b import _hidden\n"))
    b = Module("usr.b", tmp_path / "b.py", ast.parse("def f():\n    import usr.a\n"))
    c = Module("usr.c", tmp_path / "c.py", ast.parse("from usr import b\nb._x()\n"))
    planted = {"usr.a": a, "usr.b": b, "usr.c": c}
    for mod in planted.values():
        _read_imports(mod, planted)
    assert _circles(planted) == [["usr.a", "usr.b"]]
    assert a.private == ["1: from usr.b import _hidden"]
    assert c.private == ["2: b._x (usr.b)"]
