"""Which asyncio event loop a long-running command runs on: ``--loop asyncio|uvloop|auto``.

The default is the standard library's loop. uvloop (libuv, written in Cython; ``pip install
'accord[uvloop]'``, not for Windows) runs the same program with its sockets and polling in C,
but measured against the relay's workload it did not win: in one A/B run of
``benchmarks/relay_vs_peers.py`` (same code, 3 runs per scenario) server CPU moved by -8 % to
+10 % depending on the scenario and latencies both ways, within the run-to-run noise
(benchmarks/PROFILE.md). It stays selectable, for deployments that measure otherwise; ``auto``
takes it when it is installed. Nothing else in accord depends on the choice.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")
LOOP_FLAG_HELP = ("event loop: the standard library's asyncio (default) or uvloop (pip install 'accord[uvloop]'); "
                  "auto picks uvloop when it is installed")


class LoopUnavailable(RuntimeError):
    """``--loop uvloop`` was asked for and uvloop is not installed."""


def resolve(choice: str) -> str:
    """The loop ``choice`` means here: ``"uvloop"`` or ``"asyncio"``.

    Raises:
        LoopUnavailable: ``choice`` is ``uvloop`` and uvloop cannot be imported.
        ValueError: ``choice`` is not one of :data:`CHOICES`.
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown event loop {choice!r}; choose one of {', '.join(CHOICES)}")
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise LoopUnavailable("--loop uvloop: uvloop is not installed (pip install uvloop), or use --loop asyncio")
    if choice == "auto":
        return "uvloop" if installed else "asyncio"
    return choice


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for :class:`asyncio.Runner` (None: the standard library's default loop)."""
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """Run ``main`` to completion on a new loop of kind ``name`` (from :func:`resolve`), like
    :func:`asyncio.run` (which it is, with a loop factory)."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def add_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--loop`` to a command's parser."""
    parser.add_argument("--loop", default="asyncio", choices=CHOICES, help=LOOP_FLAG_HELP)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the running loop is (for logs and /metrics)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
