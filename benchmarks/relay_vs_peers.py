"""accord's relay against other Yjs sync servers, on one workload, in one run.

Usage::

    .venv/bin/python benchmarks/relay_vs_peers.py                 # full run, writes benchmarks/RESULTS.md + results.png
    .venv/bin/python benchmarks/relay_vs_peers.py --quick         # smoke sizes (< 2 min), writes .cache/bench-quick/
    .venv/bin/python benchmarks/relay_vs_peers.py --repeat 3      # medians over 3 runs per scenario
    .venv/bin/python benchmarks/relay_vs_peers.py --servers accord-memory,hocuspocus --scenarios fanout-10x200
    .venv/bin/python benchmarks/relay_vs_peers.py --accord-baseline ../wt-base --repeat 3 --out .cache/bench-refactor

Servers (each started fresh on a free loopback port, stopped by its PID afterwards): the accord relay
with ``--db :memory:`` and with a SQLite file, pycrdt-websocket in memory and with ``SQLiteYStore``,
``@y/websocket-server`` (in memory), Hocuspocus in memory and with its SQLite extension.

Before/after an accord change, in one run: ``--accord-baseline DIR`` adds ``accord-base-memory`` and
``accord-base-sqlite``, the relay of another checkout started as ``DIR/.venv/bin/accord relay ...``
(same flags as the ``accord-*`` rows, which run this checkout's working tree). Make one with
``git worktree add ../wt-base <commit> && cd ../wt-base && python3 -m venv .venv &&
.venv/bin/pip install -e '.[test,bench]'``. Its commit (``+dirty`` if its sources have uncommitted
changes) is in the row label and the versions table.

The workload (``benchmarks/peers/load.mjs``) is reservations: one nested ``Y.Map`` of 11 string fields
per reservation, inserts and edits, one transaction per update. Fan-out clients are spread over
several driver processes (``--drivers``) that start together at an agreed instant. Per scenario it
measures the server's CPU seconds (psutil, whole scenario including connects and a settle period
for deferred writes) and CPU per 1000 deliveries, server RSS, accepted updates/s, deliveries/s,
p50/p99 latency, convergence time, cold-sync time and bytes, and the drivers' CPU.

Needs: node 20+ and npm (the Node packages, pinned by ``benchmarks/peers/package-lock.json``, are
installed with ``npm ci`` into ``.cache/bench-node`` on first use; better-sqlite3 compiles, a few
minutes once), and the ``bench`` extra in the venv (``.venv/bin/pip install -e '.[bench,test]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"
NODE_HOME = ROOT / ".cache" / "bench-node"
BENCH_DIR = NODE_HOME / "bench"  # the scripts run from here: ES modules resolve packages next to them
NODE_PACKAGES = ["yjs", "y-protocols", "lib0", "ws", "@y/websocket-server", "@hocuspocus/server",
                 "@hocuspocus/extension-sqlite", "better-sqlite3", "@hocuspocus/extension-redis", "ioredis"]

sys.path.insert(0, str(PEERS))
import profiling  # noqa: E402  (benchmarks/peers/profiling.py: py-spy around the accord relay)
import report  # noqa: E402  (benchmarks/peers/report.py: tables and plot)

# ---- what runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str  # command-line name
    label: str  # table name
    kind: str  # fanout | paced | coldsync
    clients: int = 0
    updates: int = 0
    rate: float = 0.0
    preload: int = 0

    @property
    def deliveries(self) -> int:
        return self.clients * self.updates * (self.clients - 1)


FULL = [
    Scenario("fanout-10x200", "fanout 10x200", "fanout", 10, 200),
    Scenario("fanout-50x20", "fanout 50x20", "fanout", 50, 20),
    Scenario("paced-10x100", "paced 10x100 @200/s", "paced", 10, 100, rate=200),
    Scenario("paced-50x10", "paced 50x10 @100/s", "paced", 50, 10, rate=100),
    Scenario("coldsync-10k", "coldsync 10k", "coldsync", preload=10_000),
]
QUICK = [
    Scenario("fanout-5x20", "fanout 5x20", "fanout", 5, 20),
    Scenario("paced-5x20", "paced 5x20 @100/s", "paced", 5, 20, rate=100),
    Scenario("coldsync-1k", "coldsync 1k", "coldsync", preload=1_000),
]


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    protocol: str  # y-websocket | hocuspocus
    storage: str  # what "durable" means for this row
    settle_min_s: float = 0.0  # wait at least this long after a scenario (deferred stores)
    accord: Path | None = None  # accord-* rows: the accord executable (None: the one next to this Python)

    def command(self, work: Path) -> tuple[list[str], Path | None]:
        """The command line, and the port file it writes (None: the port is printed on stdout)."""
        node = shutil.which("node") or "node"
        accord = self.accord or Path(sys.executable).with_name("accord")
        accord_cmd = [str(accord)] if accord.exists() else [sys.executable, "-m", "accord"]
        port_file = work / f"{self.key}.port"
        match self.key:
            case "accord-memory" | "accord-sqlite" | "accord-base-memory" | "accord-base-sqlite":
                db = ":memory:" if self.key.endswith("memory") else str(work / "accord.sqlite")
                extra = os.environ.get("ACCORD_BENCH_RELAY_ARGS", "").split()  # e.g. "--no-audit", to compare
                return [*accord_cmd, "relay", "--id", "bench", "--port", "0", "--port-file", str(port_file),
                        "--db", db, "--log-level", "WARNING", *extra], port_file
            case "pycrdt-websocket" | "pycrdt-websocket-sqlite":
                extra = ["--sqlite", str(work / "ystore.sqlite")] if self.key.endswith("sqlite") else []
                return [sys.executable, str(PEERS / "pycrdt_websocket_server.py"), "0", *extra], None
            case "y-websocket-server":
                return [node, str(BENCH_DIR / "y_websocket_server.js"), "0"], None
            case "hocuspocus" | "hocuspocus-sqlite":
                extra = ["--sqlite", str(work / "hocuspocus.sqlite")] if self.key.endswith("sqlite") else []
                return [node, str(BENCH_DIR / "hocuspocus_server.js"), "0", *extra], None
        raise ValueError(self.key)


SERVERS = [
    ServerSpec("accord-memory", "accord relay (memory)", "y-websocket", "none (--db :memory:)"),
    ServerSpec("accord-sqlite", "accord relay (SQLite)", "y-websocket",
               "SQLite WAL, synchronous=FULL, committed before forwarding (group commit)"),
    ServerSpec("pycrdt-websocket", "pycrdt-websocket (memory)", "y-websocket", "none"),
    ServerSpec("pycrdt-websocket-sqlite", "pycrdt-websocket (SQLiteYStore)", "y-websocket",
               "SQLiteYStore: one row per update, written after the broadcast"),
    ServerSpec("y-websocket-server", "y-websocket-server (memory)", "y-websocket", "none"),
    ServerSpec("hocuspocus", "hocuspocus (memory)", "hocuspocus", "none"),
    ServerSpec("hocuspocus-sqlite", "hocuspocus (SQLite)", "hocuspocus",
               "extension-sqlite: whole document state, debounced (2 s, max 10 s) and on last disconnect",
               settle_min_s=2.5),
]
BASELINE_KEYS = ["accord-base-memory", "accord-base-sqlite"]


def baseline_servers(checkout: Path, commit: str) -> list[ServerSpec]:
    """The two accord rows again, run by another checkout's ``.venv/bin/accord`` (``--accord-baseline``)."""
    accord = checkout / ".venv" / "bin" / "accord"
    return [dataclasses.replace(spec, key=key, label=spec.label.replace("accord relay", f"accord baseline {commit}"),
                                accord=accord)
            for spec, key in zip(SERVERS[:2], BASELINE_KEYS, strict=True)]


# ---- setup -------------------------------------------------------------------------------------


def lockfile_digest() -> str:
    return hashlib.sha256((PEERS / "package-lock.json").read_bytes() + (PEERS / "package.json").read_bytes()).hexdigest()


def node_modules_installed() -> bool:
    """True if .cache/bench-node holds the packages of the current lockfile."""
    stamp = NODE_HOME / ".installed"
    return stamp.exists() and stamp.read_text().strip() == lockfile_digest()


def ensure_node_modules(log: Path) -> None:
    """``npm ci`` the pinned packages into .cache/bench-node once (again when the lockfile changes)."""
    lock = PEERS / "package-lock.json"
    if not node_modules_installed():
        if shutil.which("npm") is None or shutil.which("node") is None:
            sys.exit("relay_vs_peers: node and npm are needed (Node 20+); install them and run again")
        NODE_HOME.mkdir(parents=True, exist_ok=True)
        shutil.copy(PEERS / "package.json", NODE_HOME / "package.json")
        shutil.copy(lock, NODE_HOME / "package-lock.json")
        print(f"installing pinned Node packages into {NODE_HOME} (npm ci; better-sqlite3 compiles, a few minutes once)",
              file=sys.stderr)
        # prebuild-install would try to download a binary from outside the npm registry; build it instead
        env = {**os.environ, "npm_config_build_from_source": "better-sqlite3"}
        with log.open("ab") as out:
            done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_HOME, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=1800, check=False)
        if done.returncode != 0:
            sys.exit(f"relay_vs_peers: npm ci failed in {NODE_HOME}; see {log}")
        (NODE_HOME / ".installed").write_text(lockfile_digest())
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for script in ("load.mjs", "y_websocket_server.js", "hocuspocus_server.js"):
        target = BENCH_DIR / script  # rewritten only when it changed: another run may be starting it right now
        if not target.exists() or target.read_bytes() != (PEERS / script).read_bytes():
            shutil.copy(PEERS / script, target)


def node_version(package: str) -> str:
    try:
        meta = json.loads((NODE_HOME / "node_modules" / package / "package.json").read_text())
        return str(meta["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def py_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def baseline_py_versions(accord: Path) -> dict[str, str]:
    """accord, pycrdt and websockets versions in the venv that holds ``accord`` (the baseline's)."""
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('accord', 'pycrdt', 'websockets')}))")
    done = subprocess.run([str(accord.with_name("python")), "-c", code], capture_output=True, text=True, check=False)
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        return {}


def server_version(spec: ServerSpec, accord_version: str, baseline_version: str = "?") -> str:
    if spec.accord is not None:
        found = baseline_py_versions(spec.accord)
        return (f"accord {found.get('accord', '?')} ({baseline_version}) / pycrdt {found.get('pycrdt', '?')}"
                f" / websockets {found.get('websockets', '?')}; {spec.accord}")
    if spec.key.startswith("accord"):
        return f"accord {accord_version} / pycrdt {py_version('pycrdt')} / websockets {py_version('websockets')}"
    if spec.key.startswith("pycrdt"):
        extra = f" / pycrdt-store {py_version('pycrdt-store')}" if spec.key.endswith("sqlite") else ""
        return f"pycrdt-websocket {py_version('pycrdt-websocket')} / pycrdt {py_version('pycrdt')}{extra}"
    if spec.key == "y-websocket-server":
        return f"@y/websocket-server {node_version('@y/websocket-server')}"
    extra = (f" + extension-sqlite {node_version('@hocuspocus/extension-sqlite')}"
             f" (better-sqlite3 {node_version('better-sqlite3')})") if spec.key.endswith("sqlite") else ""
    return f"@hocuspocus/server {node_version('@hocuspocus/server')}{extra}"


def accord_version() -> str:
    try:
        from accord import __version__
    except ImportError:
        __version__ = "?"
    commit = checkout_commit(ROOT)
    return f"{__version__} ({commit})" if commit else __version__


def checkout_commit(checkout: Path) -> str:
    """Short HEAD of a checkout, ``+dirty`` if the relay's sources differ from it (editable installs run the tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "accord", "engine", "relay", "terminal",
                "pyproject.toml")
    return f"{commit}+dirty" if commit and dirty else commit


def machine_description() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "-v"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "machine": f"{os.cpu_count()} cores{f' ({model})' if model else ''}, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()} {platform.release()}",
        "runtimes": f"node {node}, Python {platform.python_version()}",
        "driver": f"benchmarks/peers/load.mjs (yjs {node_version('yjs')}, ws {node_version('ws')})",
    }


# ---- one server --------------------------------------------------------------------------------


class RunningServer:
    """A server process started by this script (and only ever stopped by its PID)."""

    def __init__(self, spec: ServerSpec, work: Path, logs: Path) -> None:
        self.spec = spec
        self.work = work
        self.log_path = logs / f"server-{spec.key}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout_s: float = 30.0) -> None:
        command, port_file = self.spec.command(self.work)
        with self.log_path.open("wb") as log:  # truncated: the port line is read back from it
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=BENCH_DIR, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout_s
        while not self.port:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.key} exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.spec.key} did not report its port within {timeout_s} s; see {self.log_path}")
            self.port = self._read_port(port_file)
            if not self.port:
                await asyncio.sleep(0.05)

    def _read_port(self, port_file: Path | None) -> int:
        if port_file is not None:
            with contextlib.suppress(OSError, ValueError):
                return int(port_file.read_text().strip())
            return 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith('{"port"'):
                return int(json.loads(line)["port"])
        return 0

    async def accord_metrics(self) -> dict[str, float]:
        """Counters from the accord relay's GET /metrics (empty for other servers or on error)."""
        if not self.spec.key.startswith("accord"):
            return {}

        def fetch() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                return str(response.read().decode())

        try:
            text = await asyncio.to_thread(fetch)
        except OSError:
            return {}
        wanted = ("accord_updates_in_total", "accord_updates_out_total", "accord_store_commit_seconds_sum",
                  "accord_store_commit_seconds_count", "accord_updates_dropped_total", "accord_forward_wait_seconds_sum",
                  "accord_forward_wait_seconds_count")
        found: dict[str, float] = {}
        for line in text.splitlines():
            name = line.split("{")[0].split(" ")[0]
            if name in wanted:
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return found

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_s(self) -> float:
        assert self.ps is not None
        try:
            times = self.ps.cpu_times()
        except psutil.Error:
            return float("nan")
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        assert self.ps is not None
        try:
            return float(self.ps.memory_info().rss / 2**20)
        except psutil.Error:
            return float("nan")

    async def settle(self, min_s: float, max_s: float = 8.0) -> None:
        """Wait until the server is idle (no CPU used for 0.3 s), at least ``min_s``, at most ``max_s``."""
        await settle(self.cpu_s, min_s, max_s)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


async def settle(cpu_s: Callable[[], float], min_s: float, max_s: float = 8.0) -> None:
    """Wait until ``cpu_s`` (CPU seconds of some processes) stops growing for 0.3 s, after at least
    ``min_s`` and at most ``max_s``."""
    started = time.monotonic()
    last, quiet_since = cpu_s(), time.monotonic()
    while time.monotonic() - started < max_s:
        await asyncio.sleep(0.1)
        now_cpu = cpu_s()
        if now_cpu - last > 0.003:
            quiet_since = time.monotonic()
        last = now_cpu
        if time.monotonic() - quiet_since >= 0.3 and time.monotonic() - started >= min_s:
            return


# ---- scenarios ---------------------------------------------------------------------------------


@dataclass
class Driver:
    proc: asyncio.subprocess.Process
    first: int
    count: int
    lines: list[dict[str, Any]] = field(default_factory=list)

    async def read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    return {"event": "error", "error": f"driver exited with {await self.proc.wait()}"}
                text = raw.decode(errors="replace").strip()
                if text.startswith("{"):
                    line: dict[str, Any] = json.loads(text)
                    self.lines.append(line)
                    return line

    async def say(self, command: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()

    async def finish(self) -> None:
        await self.say("close")
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def split_clients(clients: int, drivers: int) -> list[tuple[int, int]]:
    """(first, count) per driver process, as even as possible."""
    drivers = max(1, min(drivers, clients))
    base, extra = divmod(clients, drivers)
    ranges, first = [], 0
    for i in range(drivers):
        count = base + (1 if i < extra else 0)
        ranges.append((first, count))
        first += count
    return ranges


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run_fanout(url: str, protocol: str, meters: dict[str, Callable[[], float]], sc: Scenario,
                     args: argparse.Namespace, doc: str, driver_log: Path) -> dict[str, Any]:
    """One fan-out or paced scenario over ``args.drivers`` driver processes.

    Args:
        url: the server's ``ws://`` URL, or several servers of one cluster, comma separated (client i
            connects to the (i mod n)-th; the result then has ``lat_cross_p50_ms``/``lat_cross_p99_ms``:
            updates whose writer is on another server than the receiver).
        protocol: ``y-websocket`` or ``hocuspocus``.
        meters: name -> CPU seconds so far; each becomes ``<name>_cpu_window_s``, its growth from the
            start signal until every driver converged.
    """
    result: dict[str, Any] = {"clients": sc.clients, "updates": sc.updates, "rate": sc.rate or None,
                              "deliveries": sc.deliveries}
    base_args = ["--scenario", "fanout", "--url", url, "--protocol", protocol, "--doc", doc,
                 "--clients", str(sc.clients), "--updates", str(sc.updates), "--rate", str(sc.rate),
                 "--timeout", str(args.timeout), "--connect-timeout", "20"]
    drivers: list[Driver] = []
    with driver_log.open("ab") as err:
        for first, count in split_clients(sc.clients, args.drivers):
            proc = await asyncio.create_subprocess_exec(
                "node", str(BENCH_DIR / "load.mjs"), *base_args, "--first", str(first), "--count", str(count),
                cwd=BENCH_DIR, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=64 * 2**20)
            drivers.append(Driver(proc, first, count))
    try:
        ready = await asyncio.gather(*(d.read(30) for d in drivers))
        failed = [r.get("error", r) for r in ready if r.get("event") != "ready"]
        if failed:
            return {**result, "ok": False, "error": f"connect: {failed[0]}"}
        t0_ms = time.time() * 1000 + 300  # every driver starts at this instant (one clock on one machine)
        cpu_go = {name: cpu_s() for name, cpu_s in meters.items()}
        await asyncio.gather(*(d.say(f"go {t0_ms:.3f}") for d in drivers))
        ends = await asyncio.gather(*(d.read(args.timeout + 30) for d in drivers))
        for name, cpu_s in meters.items():
            result[f"{name}_cpu_window_s"] = round(cpu_s() - cpu_go[name], 3)
        result["bytes_rx"] = sum(e.get("bytes_rx", 0) for e in ends)
        result["bytes_tx"] = sum(e.get("bytes_tx", 0) for e in ends)
        errors = [x for e in ends for x in e.get("errors", [])] + [e["error"] for e in ends if e.get("error")]
        if any(e.get("event") != "converged" for e in ends):
            incomplete = sum(e.get("remaining", 0) for e in ends)
            return {**result, "ok": False,
                    "error": f"not converged after {args.timeout}s ({incomplete} receiver/origin pairs incomplete)"
                             + (f"; {errors[0]}" if errors else "")}
        converge_s = (max(e["t_converged"] for e in ends) - t0_ms) / 1000
        latencies = sorted(x for e in ends for x in e["latencies_ms"])
        if any("latencies_cross_ms" in e for e in ends):
            cross = sorted(x for e in ends for x in e.get("latencies_cross_ms", []))
            result.update(lat_cross_p50_ms=percentile(cross, 50), lat_cross_p99_ms=percentile(cross, 99),
                          lat_cross_samples=len(cross))
        driver_cpu_ms = [e["driver_cpu_ms"] for e in ends]
        await asyncio.gather(*(d.say("check") for d in drivers))
        states = await asyncio.gather(*(d.read(15) for d in drivers))
        vectors = {v for s in states for v in s.get("state_vectors", [])}
        sizes = {n for s in states for n in s.get("reservations", [])}
        errors += [x for s in states for x in s.get("errors", [])]
        result.update(
            converge_s=round(converge_s, 3),
            accepted_ups=round(sc.clients * sc.updates / converge_s, 1),
            deliveries_per_s=round(sc.deliveries / converge_s, 1),
            lat_p50_ms=percentile(latencies, 50),
            lat_p99_ms=percentile(latencies, 99),
            lat_samples=len(latencies),
            driver_cpu_pct=round(100 * sum(driver_cpu_ms) / (converge_s * 1000)),
            driver_cpu_pct_max=round(100 * max(driver_cpu_ms) / (converge_s * 1000)),
            drivers=len(drivers),
            replicas_identical=len(vectors) == 1 and len(sizes) == 1,
            reservations=sorted(sizes),
        )
        ok = not errors and result["replicas_identical"]
        result["ok"] = ok
        if not ok:
            result["error"] = errors[0] if errors else f"replicas differ: {len(vectors)} state vectors, sizes {sorted(sizes)}"
        return result
    except TimeoutError:
        return {**result, "ok": False, "error": "driver did not answer in time"}
    finally:
        await asyncio.gather(*(d.finish() for d in drivers), return_exceptions=True)


async def run_coldsync(server: RunningServer, sc: Scenario, args: argparse.Namespace, doc: str,
                       driver_log: Path) -> dict[str, Any]:
    with driver_log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            "node", str(BENCH_DIR / "load.mjs"), "--scenario", "coldsync", "--url", server.url,
            "--protocol", server.spec.protocol, "--doc", doc, "--preload", str(sc.preload),
            "--timeout", str(args.timeout), cwd=BENCH_DIR, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=err, limit=16 * 2**20)
    try:
        async with asyncio.timeout(args.timeout + 60):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"ok": False, "error": "coldsync driver hung"}
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"coldsync driver printed nothing (exit {proc.returncode})"}
    data: dict[str, Any] = json.loads(lines[-1])
    keep = ("ok", "error", "preload", "preload_s", "preload_ups", "coldsync_s", "sync_step2_s", "answer_s", "bytes", "messages",
            "doc_update_bytes", "reservations")
    return {k: data.get(k) for k in keep if k in data}


async def run_scenario(server: RunningServer, sc: Scenario, rep: int, args: argparse.Namespace,
                       logs: Path) -> dict[str, Any]:
    doc = f"bench-{sc.key}-{rep}-{random.randrange(16**6):06x}"
    head = {"server": server.spec.label, "server_key": server.spec.key, "scenario": sc.label,
            "scenario_key": sc.key, "kind": sc.kind, "run": rep}
    if not server.alive():
        return {**head, "ok": False, "error": "server process exited"}
    metrics_before = await server.accord_metrics()
    cpu_before = server.cpu_s()
    started = time.monotonic()
    driver_log = logs / "drivers.stderr.log"
    if sc.kind == "coldsync":
        body = await run_coldsync(server, sc, args, doc, driver_log)
    else:
        body = await run_fanout(server.url, server.spec.protocol, {"server": server.cpu_s}, sc, args, doc, driver_log)
    await server.settle(server.spec.settle_min_s)
    cpu_s = server.cpu_s() - cpu_before
    row = {**head, **body, "server_cpu_s": round(cpu_s, 3), "server_rss_mb": round(server.rss_mb(), 1),
           "wall_s": round(time.monotonic() - started, 2)}
    if sc.kind != "coldsync" and row.get("ok"):
        row["server_cpu_ms_per_1k_deliveries"] = round(cpu_s * 1e6 / sc.deliveries, 2)
    metrics_after = await server.accord_metrics()
    if metrics_after:
        delta = {k: v - metrics_before.get(k, 0.0) for k, v in metrics_after.items()}
        commits = delta.get("accord_store_commit_seconds_count", 0.0)
        row["accord"] = {
            "updates_in": int(delta.get("accord_updates_in_total", 0)),
            "updates_out": int(delta.get("accord_updates_out_total", 0)),
            "dropped": int(delta.get("accord_updates_dropped_total", 0)),
            "commits": int(commits),
            "commit_ms_mean": round(1000 * delta.get("accord_store_commit_seconds_sum", 0.0) / commits, 2) if commits else None,
        }
        waited = delta.get("accord_forward_wait_seconds_count", 0.0)
        if waited:  # from an update's admission to its forwarding, inside the relay
            row["accord"]["forward_wait_ms_mean"] = round(1000 * delta.get("accord_forward_wait_seconds_sum", 0.0) / waited, 2)
    if not server.alive():
        row.update(ok=False, error=f"server process exited ({row.get('error') or 'during the scenario'})")
    return row


def describe(row: dict[str, Any]) -> str:
    if not row.get("ok"):
        return f"FAIL {row.get('error')}"
    if row["kind"] == "coldsync":
        return (f"coldsync {row['coldsync_s']} s (answer in {row.get('answer_s')} s), {row['bytes']:,} B, "
                f"server CPU {row['server_cpu_s']} s, "
                f"RSS {row['server_rss_mb']} MB")
    return (f"converge {row['converge_s']} s, {row['deliveries_per_s']:,.0f} deliveries/s, p50 {row['lat_p50_ms']} ms, "
            f"p99 {row['lat_p99_ms']} ms, server CPU {row['server_cpu_s']} s "
            f"({row['server_cpu_ms_per_1k_deliveries']} ms/1k deliveries), driver CPU {row['driver_cpu_pct']} % "
            f"over {row['drivers']} processes, RSS {row['server_rss_mb']} MB")


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the accord relay against pycrdt-websocket, @y/websocket-server and Hocuspocus "
                    "on one reservation workload, in one run; writes RESULTS.md, results.png and results.jsonl.",
        epilog="examples: .venv/bin/python benchmarks/relay_vs_peers.py --repeat 3\n"
               "  before/after a change, in one run: git worktree add ../wt-base <commit>; (cd ../wt-base && "
               "python3 -m venv .venv && .venv/bin/pip install -e '.[test,bench]');\n"
               "  .venv/bin/python benchmarks/relay_vs_peers.py --accord-baseline ../wt-base --repeat 3 "
               "--out .cache/bench-before-after",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke sizes (< 2 min); output goes to .cache/bench-quick")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario (tables show medians; default 1)")
    parser.add_argument("--servers", default="",
                        help=f"comma-separated subset of: {', '.join(s.key for s in SERVERS)}, "
                             f"{', '.join(BASELINE_KEYS)} (default: all; the last two need --accord-baseline); "
                             "run and tabled in the order given, so swapping two checks for order effects")
    parser.add_argument("--accord-baseline", type=Path, default=None, metavar="DIR",
                        help="also run the accord relay of checkout DIR (with its own DIR/.venv, e.g. a git worktree "
                             "of the commit before a change) as accord-base-memory and accord-base-sqlite, in the "
                             "same tables")
    parser.add_argument("--scenarios", default="",
                        help=f"comma-separated subset of: {', '.join(s.key for s in FULL + QUICK)} (default: all of the mode)")
    parser.add_argument("--drivers", type=int, default=3, help="driver processes per fan-out scenario (default 3)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds a scenario may take before it fails (default 60)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="attach py-spy to the accord relay during each scenario; write DIR/<server>-<scenario>-<run>"
                             ".txt (collapsed stacks) and .top.txt (functions by share of samples). Skews those rows")
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing; rewrite RESULTS.md and results.png from OUT/results.jsonl")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/, or .cache/bench-quick with --quick)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.drivers < 1:
        parser.error("--repeat and --drivers must be at least 1")
    if args.accord_baseline is not None:
        args.accord_baseline = args.accord_baseline.resolve()
        if not (args.accord_baseline / ".venv" / "bin" / "accord").exists():
            parser.error(f"--accord-baseline: {args.accord_baseline}/.venv/bin/accord not found; create the venv "
                         "there (python3 -m venv .venv && .venv/bin/pip install -e '.[test,bench]')")
    elif any(key in args.servers.split(",") for key in BASELINE_KEYS):
        parser.error(f"{' and '.join(BASELINE_KEYS)} need --accord-baseline DIR")
    return args


async def run(args: argparse.Namespace) -> int:
    out = args.out or (ROOT / ".cache" / "bench-quick" if args.quick else ROOT / "benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    logs = ROOT / ".cache" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    ensure_node_modules(logs / "npm.log")
    by_key = {s.key: s for s in FULL + QUICK}
    scenarios = [by_key[k] for k in args.scenarios.split(",") if k] if args.scenarios else (QUICK if args.quick else FULL)
    baseline_commit = checkout_commit(args.accord_baseline) if args.accord_baseline else ""
    known = SERVERS[:2] + (baseline_servers(args.accord_baseline, baseline_commit) if args.accord_baseline else [])
    known += SERVERS[2:]
    wanted = args.servers.split(",") if args.servers else [s.key for s in known]
    unknown = set(wanted) - {s.key for s in known}
    servers = [next(s for s in known if s.key == key) for key in dict.fromkeys(wanted) if key not in unknown]
    if unknown:
        print(f"relay_vs_peers: unknown server(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    version = accord_version()
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **machine_description(),
            "repeat": args.repeat, "drivers": args.drivers, "quick": args.quick, "accord": version,
            "storage": {s.label: s.storage for s in servers}, "versions": {}}
    if args.accord_baseline:
        meta["accord_baseline"] = f"{baseline_commit} ({args.accord_baseline})"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as tmp:
        running: list[RunningServer] = []
        try:
            # Every server runs for the whole benchmark (idle ones cost nothing) and the scenarios are
            # interleaved (run -> scenario -> server), so load from anything else on the machine is
            # spread over all servers instead of landing on whichever ran at that moment.
            for spec in servers:
                meta["versions"][spec.label] = server_version(spec, version, baseline_commit)
                work = Path(tmp) / spec.key
                work.mkdir()
                server = RunningServer(spec, work, logs)
                try:
                    await server.start()
                except (RuntimeError, TimeoutError) as exc:
                    print(f"== {spec.label}: did not start: {exc}", file=sys.stderr)
                    rows += [{"server": spec.label, "server_key": spec.key, "scenario": sc.label, "scenario_key": sc.key,
                              "kind": sc.kind, "run": rep, "ok": False, "error": str(exc)}
                             for rep in range(1, args.repeat + 1) for sc in scenarios]
                    await server.stop()
                    continue
                print(f"== {spec.label}: {meta['versions'][spec.label]} (pid {server.pid}, {server.url})", file=sys.stderr)
                running.append(server)
            for rep in range(1, args.repeat + 1):
                for sc in scenarios:
                    print(f"-- {sc.label} (run {rep})", file=sys.stderr)
                    for server in running:
                        profiler = None
                        if args.profile and server.spec.key.startswith("accord"):
                            profiler = profiling.Profiler(server.pid, args.profile / f"{server.spec.key}-{sc.key}-{rep}")
                            await profiler.start()
                        row = await run_scenario(server, sc, rep, args, logs)
                        if profiler is not None:
                            row["profile"] = str(await profiler.stop())
                        row["version"] = meta["versions"][server.spec.label]
                        rows.append(row)
                        print(f"   {server.spec.label}: {describe(row)}", file=sys.stderr)
                        await asyncio.sleep(0.5)
        finally:
            for server in running:
                await server.stop()
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"meta": meta}, *rows]))
    write_reports(out, rows, meta)
    return 0 if all(r.get("ok") for r in rows) else 1


def write_reports(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    (out / "RESULTS.md").write_text(report.render_markdown(rows, meta))
    report.render_plot(rows, out / "results.png")
    print(f"wrote {out / 'RESULTS.md'}, {out / 'results.png'} and {out / 'results.jsonl'}", file=sys.stderr)
    print(report.summary_table(rows))


def render_only(out: Path) -> int:
    """Rewrite RESULTS.md and results.png from an earlier run's results.jsonl."""
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    metas = [line["meta"] for line in lines if "meta" in line]
    if not metas:
        print(f"relay_vs_peers: {out / 'results.jsonl'} has no meta line; rerun the benchmark", file=sys.stderr)
        return 1
    write_reports(out, [line for line in lines if "meta" not in line], metas[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args.out or (ROOT / ".cache" / "bench-quick" if args.quick else ROOT / "benchmarks"))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
