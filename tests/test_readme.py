"""The README's quick start works when pasted as one block: run verbatim, in an empty folder."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "no sh block in the quick start"
    return match.group(1)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
async def test_the_quick_start_runs_verbatim_as_one_block(tmp_path: Path) -> None:
    if not all(port_free(port) for port in (8765, 8766)):
        pytest.skip("ports 8765/8766, which the quick start uses, are taken on this machine")
    shell = shutil.which("bash")
    if shell is None:
        pytest.skip("no bash here")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # `. .venv/bin/activate` as in a checkout
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    proc = await asyncio.create_subprocess_exec(shell, "-e", "-c", quick_start(), cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, f"{text}\n{err.decode()}"
    lines = text.splitlines()
    answer = next(line for line in lines if re.match(r"[0-9a-f-]{36} ", line))  # reschedule's answer
    rid = answer.split()[0]
    rows = [line for line in lines if rid[-8:] in line and not line.startswith(rid)]
    assert len(rows) == 2, text  # the two lists
    assert "09:00-09:30" in rows[0] and "booked" in rows[0]
    assert "10:00-10:30" in rows[1] and "booked" in rows[1]
    for name in ("relay-1.log", "relay-2.log"):
        log = (tmp_path / name).read_text()
        assert "relay listening" in log and "board=http://127.0.0.1:" in log
