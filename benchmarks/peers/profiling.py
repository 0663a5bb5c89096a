"""py-spy attached to a running server during one scenario, and a summary of where its time went.

``Profiler(pid, stem)`` records ``stem.txt`` (py-spy's collapsed stacks: ``frame;frame;... count``;
idle threads are left out, the process is paused for each sample) and writes ``stem.top.txt``:
functions by inclusive share (the function or anything it called was running) and by self share
(the innermost Python frame; time in pycrdt's Rust code, in C or in a blocking system call such as
fsync counts for the Python function that called it).
py-spy comes from PyPI (``.venv/bin/pip install py-spy``); it needs ptrace rights on the pid.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path


class Profiler:
    def __init__(self, pid: int, stem: Path, rate_hz: int = 200) -> None:
        self.pid = pid
        self.stem = stem
        self.rate_hz = rate_hz
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(self.pid), "--rate", str(self.rate_hz), "--format", "raw",
            "-o", str(self.stem.with_suffix(".txt")),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.3)  # attach before the scenario starts

    async def stop(self) -> Path:
        """Stop recording; write and return the summary file."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                async with asyncio.timeout(15):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        raw = self.stem.with_suffix(".txt")
        top = self.stem.with_suffix(".top.txt")
        top.write_text(summarize(raw.read_text() if raw.exists() else ""))
        return top


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``: lines differ per sample, functions do not."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarize(collapsed: str, top_n: int = 40) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for function in set(frames):
            inclusive[function] += count
    if total == 0:
        return "no samples (was the server busy? does py-spy have ptrace rights?)\n"
    lines = [f"{total} samples (CPU only)", "", "inclusive %  function"]
    lines += [f"{100 * n / total:10.1f}  {f}" for f, n in inclusive.most_common(top_n)]
    lines += ["", "self %      function"]
    lines += [f"{100 * n / total:10.1f}  {f}" for f, n in own.most_common(top_n)]
    return "\n".join(lines) + "\n"
