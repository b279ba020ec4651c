"""The import direction, checked: every module of the package sits in one layer of ``LAYERS``
(lowest first), and a module imports only from its own layer or lower ones.

This is the one place the layering is written down; module docstrings state their own rule and
this test is what keeps them true. What counts as an import: ``import x``, ``from x import y``,
relative imports (``from . import x``, ``from ..db import y``) and imports inside functions (a
lazy import still couples the modules; it only moves the cost). Only imports in the body of
``if TYPE_CHECKING:`` may point up: they exist for annotations and never run. The test reads
the source with ``ast``, so it sees imports only: a callback assigned at run time (the runner
calling back through its ``on_ended`` argument) is invisible to it.

Patterns match dotted module names by prefix: ``store`` covers ``store.py`` and, once it is
split into a package, ``store/__init__.py`` and ``store/jobs.py``; a ``*`` matches anything
(``shell*`` covers ``shellparse`` and the modules split out of it beside it). A module no pattern
matches fails the test ("add X to LAYERS"), and so does a pattern no module matches (a rename
left behind).

Third-party gateways: only the storage layer imports ``sqlalchemy`` (plus ``migrations/``, which
is outside the package); only the MCP layer imports ``fastmcp``/``mcp``/``mcp_types``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

PACKAGE = "mcp_background_job"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE
#: The package's own ``__init__.py`` (``__version__``), named so it can sit in a layer.
ROOT = "__init__"

#: Lowest first. A module may import from its own layer and from the layers before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # The vocabulary, and the stdlib-only helpers run as scripts (see STANDALONE).
    ("leaves", (ROOT, "errors", "jobs", "_sandbox", "_watchdog")),
    ("config", ("config", "patterns", "dburl")),
    # Pure functions over text, commands and results: no I/O, no database, no processes.
    (
        "pure",
        (
            "terminal",
            "redact",
            "shell*",
            "policy*",
            "verdict",
            "matching",
            "models",
            "argerrors",
            "checks",
            "tokens",
        ),
    ),
    # The storage gateway: the only code that builds SQL.
    ("storage", ("db", "store")),
    # Processes, their isolation and their output files.
    ("processes", ("cgroup", "isolation", "proctree", "ptyjob", "capture")),
    ("runner", ("runner",)),
    # The parts of the job operations behind the facade: admission, masking, reading, interact.
    ("app parts", ("admission", "masking", "reading", "grepping", "interaction", "remote")),
    ("app", ("app",)),
    # The only layer that knows MCP (``tools`` registered by ``server``).
    ("mcp", ("tools", "server", "stdio", "httpserve", "web")),
    # The command line for people (``serve`` hands over to the MCP layer).
    ("cli", ("cli", "commands", "history", "historygrep", "report", "worker", "tokencmd")),
]

#: Modules that import nothing from the package at all: they run as scripts (``python -I -S``).
STANDALONE = ("_sandbox", "_watchdog")

#: Third-party packages only one layer may import.
GATEWAYS: dict[str, str] = {
    "sqlalchemy": "storage",
    "fastmcp": "mcp",
    "mcp": "mcp",
    "mcp_types": "mcp",
}

#: Upward imports that exist today, each to be removed by the change that fixes it (the test
#: fails when one is gone, so the list only shrinks). Key: (importer, imported), module names.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    importer: str
    target: str  # a module of the package (dotted, relative to it), or a third-party top name
    internal: bool
    type_checking: bool


def module_name(path: Path, src: Path = SRC) -> str:
    """``store`` for store.py and store/__init__.py, ``store.jobs`` for store/jobs.py."""
    parts = path.relative_to(src).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or ROOT


def modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted(src.rglob("*.py"))}


def matches(module: str, pattern: str) -> bool:
    """``pattern`` names ``module`` or a package holding it (``*`` matches anything)."""
    return fnmatchcase(module, pattern) or fnmatchcase(module, pattern + ".*")


def layer_of(module: str) -> int | None:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(matches(module, p) for p in patterns):
            return index
    return None


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside the body (not the ``else``) of ``if TYPE_CHECKING:``."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            found.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return found


def imports(path: Path, known: dict[str, Path], src: Path = SRC) -> Iterator[Import]:
    """Every import in the file, anywhere in it, resolved to a module of the package where it
    is one (``from . import x`` is module ``x`` if there is one, else the package itself)."""
    importer = module_name(path, src)
    is_package = path.name == "__init__.py"
    here = "" if importer == ROOT else importer
    package = here if is_package else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    guarded = _type_checking_nodes(tree)

    def make(node: ast.stmt, dotted: str | None, internal: bool) -> Import:
        target = (dotted or ROOT) if internal else (dotted or "").partition(".")[0]
        return Import(path, node.lineno, importer, target, internal, id(node) in guarded)

    def internal_name(absolute: str) -> str | None:
        if absolute == PACKAGE:
            return ""
        if absolute.startswith(PACKAGE + "."):
            return absolute[len(PACKAGE) + 1 :]
        return None

    def submodule(base: str, name: str) -> str:
        candidate = f"{base}.{name}" if base else name
        return candidate if candidate in known else base

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                inside = internal_name(alias.name)
                yield make(node, alias.name if inside is None else inside, inside is not None)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                base = internal_name(node.module)
                if base is None:
                    yield make(node, node.module, internal=False)
                    continue
            else:
                parts = package.split(".") if package else []
                up = node.level - 1
                assert up <= len(parts), f"{path}:{node.lineno}: relative import beyond {PACKAGE}"
                parts = parts[: len(parts) - up]
                if node.module:
                    parts.append(node.module)
                base = ".".join(parts)
            for alias in node.names:
                yield make(node, submodule(base, alias.name), internal=True)


def all_imports(src: Path = SRC) -> tuple[Import, ...]:
    return _parsed(src)


@functools.cache  # parsed once for all the tests (~1 s of CPU)
def _parsed(src: Path) -> tuple[Import, ...]:
    known = modules(src)
    return tuple(imp for path in known.values() for imp in imports(path, known, src))


def _where(imp: Import, src: Path) -> str:
    return f"{imp.path.relative_to(src.parent)}:{imp.line}"


def _layer_name(module: str) -> str:
    index = layer_of(module)
    return "?" if index is None else f"{index} {LAYERS[index][0]}"


def upward_imports(src: Path = SRC) -> list[tuple[Import, str]]:
    """Imports that point to a higher layer (outside ``if TYPE_CHECKING:``), with a message."""
    found = []
    for imp in all_imports(src):
        if not imp.internal or imp.type_checking:
            continue
        mine, theirs = layer_of(imp.importer), layer_of(imp.target)
        if mine is None or theirs is None or theirs <= mine:
            continue
        found.append(
            (
                imp,
                f"{_where(imp, src)}: {imp.importer} (layer {_layer_name(imp.importer)}) imports "
                f"{imp.target} (layer {_layer_name(imp.target)}), a higher layer",
            )
        )
    return found


# --- the tests -------------------------------------------------------------------------------


def test_the_layers_name_every_module_and_nothing_else() -> None:
    known = modules()
    assert len(known) > 20, f"found only {sorted(known)} under {SRC}"
    unknown = [m for m in known if layer_of(m) is None]
    assert not unknown, "\n".join(
        f"{known[m].relative_to(SRC.parent)}: module {m} is in no layer: add {m} to LAYERS "
        "in tests/test_layers.py (and a line on its layer rule to its docstring)"
        for m in unknown
    )
    stale = [
        f"{p!r} (layer {name})"
        for name, patterns in LAYERS
        for p in patterns
        if not any(matches(m, p) for m in known)
    ]
    assert not stale, f"no module matches {', '.join(stale)}: remove it from LAYERS"
    for module, reason in [*KNOWN_UPWARD, *((m, "STANDALONE") for m in STANDALONE)]:
        assert module in known, f"{module} ({reason}) does not exist: update tests/test_layers.py"


def test_no_import_points_to_a_higher_layer() -> None:
    bad = [
        message
        for imp, message in upward_imports()
        if (imp.importer, imp.target) not in KNOWN_UPWARD
    ]
    assert not bad, (
        "imports against the layering (LAYERS in tests/test_layers.py, lowest first):\n"
        + "\n".join(bad)
        + "\nmove the code to the lower layer, pass it in (a constructor argument), or, if only "
        "annotations need it, import it under `if TYPE_CHECKING:`"
    )


def test_the_known_upward_imports_still_exist() -> None:
    """The list of known violations only shrinks: a fixed one must leave it."""
    present = {(imp.importer, imp.target) for imp, _ in upward_imports()}
    fixed = [f"{a} -> {b}" for a, b in KNOWN_UPWARD if (a, b) not in present]
    assert not fixed, f"fixed, remove from KNOWN_UPWARD in tests/test_layers.py: {fixed}"


def test_standalone_modules_import_nothing_from_the_package() -> None:
    bad = [
        f"{_where(imp, SRC)}: {imp.importer} imports {imp.target}, but is standalone "
        "(imports nothing from the package: see its docstring)"
        for imp in all_imports()
        if imp.internal and not imp.type_checking and layer_of(imp.importer) is not None
        if any(matches(imp.importer, m) for m in STANDALONE)
    ]
    assert not bad, "\n".join(bad)


def test_only_the_gateway_layer_imports_its_third_party_package() -> None:
    bad = []
    for imp in all_imports():
        layer = GATEWAYS.get(imp.target) if not imp.internal else None
        if layer is None:
            continue
        mine = layer_of(imp.importer)
        if mine is None or LAYERS[mine][0] != layer:
            bad.append(
                f"{_where(imp, SRC)}: {imp.importer} (layer {_layer_name(imp.importer)}) imports "
                f"{imp.target}, which only the {layer} layer may import"
            )
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The parser itself, on a package made up for it: relative, absolute, lazy, guarded."""
    src = tmp_path / PACKAGE
    (src / "store").mkdir(parents=True)
    files = {
        "__init__.py": '__version__ = "0"\n',
        "errors.py": "",
        "store/__init__.py": "from .rows import x\nfrom .. import errors\n",
        "store/rows.py": "x = 1\n",
        "config.py": (
            "from typing import TYPE_CHECKING\n"
            "import sqlalchemy.orm\n"
            f"from {PACKAGE}.store import rows\n"
            "from . import __version__\n"
            "if TYPE_CHECKING:\n"
            "    from .app import App\n"
            "else:\n"
            "    import mcp_background_job.errors\n"
            "def f() -> None:\n"
            "    from .app import App\n"
        ),
        "app.py": "",
    }
    for name, text in files.items():
        (src / name).write_text(text)
    got = {(i.importer, i.target, i.internal, i.type_checking, i.line) for i in all_imports(src)}
    assert got == {
        ("store", "store.rows", True, False, 1),
        ("store", "errors", True, False, 2),
        ("config", "typing", False, False, 1),
        ("config", "sqlalchemy", False, False, 2),
        ("config", "store.rows", True, False, 3),
        ("config", ROOT, True, False, 4),
        ("config", "app", True, True, 6),
        ("config", "errors", True, False, 8),
        ("config", "app", True, False, 10),
    }
    upward = sorted((i.importer, i.target, i.line) for i, _ in upward_imports(src))
    assert upward == [("config", "app", 10), ("config", "store.rows", 3)]


def test_patterns_match_modules_packages_and_globs() -> None:
    assert matches("store", "store") and matches("store.jobs", "store")
    assert not matches("storex", "store") and not matches("jobstore", "store")
    assert matches("shellparse", "shell*") and matches("shellwalk.nodes", "shell*")
    assert matches("policyfs", "policy*") and not matches("policy", "policyfs")
