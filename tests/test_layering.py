"""The engine is sans-I/O and stands alone: nothing under engine/ imports relay or terminal, and
only engine/storage/ touches async I/O libraries. Imports are read with ast, not by importing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
FORBIDDEN = ("accord.relay", "accord.terminal", "relay", "terminal")
IO_LIBRARIES = ("asyncio", "aiosqlite", "sqlite3", "socket", "websockets", "accord.engine.storage")


def package_of(path: Path) -> str:
    """The installed package of an engine file: engine/ is installed as accord.engine."""
    folders = path.relative_to(ENGINE.parent).parts[:-1]  # ("engine",) or ("engine", "storage")
    return ".".join(("accord", *folders))


def imported_modules(source: str, package: str) -> list[str]:
    """Absolute names of every module ``source`` imports (relative imports resolved against
    ``package``), including ``importlib.import_module("...")`` and ``__import__("...")`` calls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return found


def is_within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


ENGINE_FILES = sorted(ENGINE.rglob("*.py"))


def test_engine_files_are_found() -> None:
    names = {p.name for p in ENGINE_FILES}
    assert {"model.py", "sync.py", "protocol.py", "replica.py", "sqlite.py"} <= names


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ENGINE.parent)))
def test_engine_module_imports_neither_relay_nor_terminal(path: Path) -> None:
    modules = imported_modules(path.read_text(), package_of(path))
    offending = [m for m in modules if is_within(m, FORBIDDEN)]
    assert offending == [], f"{path.name} imports {offending}: the engine must not depend on relay or terminal"


@pytest.mark.parametrize(
    "path", [p for p in ENGINE_FILES if "storage" not in p.parts], ids=lambda p: str(p.relative_to(ENGINE.parent))
)
def test_engine_modules_outside_storage_do_no_io(path: Path) -> None:
    modules = imported_modules(path.read_text(), package_of(path))
    offending = [m for m in modules if is_within(m, IO_LIBRARIES)]
    assert offending == [], f"{path.name} imports {offending}: only engine/storage/ may do I/O"


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("import accord.relay.server", "accord.engine", True),
        ("from accord.terminal import client", "accord.engine", True),
        ("from ..relay import connection", "accord.engine", True),
        ("from ...terminal.link import Link", "accord.engine.storage", True),
        ("import importlib\nimportlib.import_module('accord.relay.cli')", "accord.engine", True),
        ("from .model import Status", "accord.engine", False),
        ("from ..errors import CorruptRecord", "accord.engine.storage", False),
        ("import relaxing", "accord.engine", False),
    ],
)
def test_the_import_check_catches_every_spelling(source: str, package: str, expected: bool) -> None:
    assert any(is_within(m, FORBIDDEN) for m in imported_modules(source, package)) is expected
