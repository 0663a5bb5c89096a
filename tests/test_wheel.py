"""The built wheel holds real files: every module of accord, engine/, relay/ and terminal/, and
relay/static/*, byte for byte, under ``accord/``.

In the repository accord/engine, accord/relay and accord/terminal are symlinks to the top-level
folders (README, "Layout"). A build must copy the files behind them; a wheel that held the links,
or missed a folder behind one, would install an ``accord`` that cannot import.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINKED = ("engine", "relay", "terminal")
# What a checkout may hold besides the sources: never part of the build, and build/ would even
# leak stale files from an earlier build into the wheel.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".cache", "node_modules", "build", "*.egg-info", "__pycache__",
                                     ".*_cache", ".hypothesis", "*.sqlite*")


def expected_files() -> dict[str, Path]:
    """Every file the wheel must hold under ``accord/``, mapped to the source file it copies."""
    files = {f"accord/{p.name}": p for p in (ROOT / "accord").glob("*.py")}
    for folder in LINKED:
        for path in (ROOT / folder).rglob("*.py"):
            files[f"accord/{path.relative_to(ROOT).as_posix()}"] = path
    for path in (ROOT / "relay" / "static").iterdir():
        files[f"accord/relay/static/{path.name}"] = path
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this Python, so the wheel cannot be built")
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy (links kept as links): an in-tree build writes build/ and accord.egg-info into the checkout.
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCES)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    (built,) = (tmp / "dist").glob("accord-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_the_repository_links_accord_subpackages_to_the_top_level_folders() -> None:
    for folder in LINKED:
        link = ROOT / "accord" / folder
        assert link.is_symlink() and os.readlink(link) == f"../{folder}", f"accord/{folder} must be the symlink ../{folder}"


def test_wheel_holds_no_symlinks(wheel: zipfile.ZipFile) -> None:
    links = [info.filename for info in wheel.infolist() if stat.S_ISLNK(info.external_attr >> 16)]
    assert links == []


def test_wheel_holds_every_module_and_static_file_byte_for_byte(wheel: zipfile.ZipFile) -> None:
    expected = expected_files()
    assert {"accord/engine/model.py", "accord/engine/storage/sqlite.py", "accord/relay/server.py",
            "accord/relay/static/board.html", "accord/terminal/client.py"} <= set(expected)
    packaged = {name for name in wheel.namelist() if name.startswith("accord/")}
    assert sorted(set(expected) - packaged) == [], "missing from the wheel"
    assert sorted(packaged - set(expected)) == [], "in the wheel but not a module or static file of the repository"
    differing = [name for name, source in expected.items() if wheel.read(name) != source.read_bytes()]
    assert differing == []


def test_wheel_claims_only_the_accord_import_name(wheel: zipfile.ZipFile) -> None:
    top_level = {name.split("/")[0] for name in wheel.namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"accord"}


def test_wheel_installs_the_accord_console_script(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    assert "accord = accord.cli:main" in wheel.read(entry_points).decode().splitlines()
