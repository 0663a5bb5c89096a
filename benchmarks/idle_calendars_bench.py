"""Idle calendars: what a peer link-up costs when two relays already hold the same calendars.

Two relays (``accord relay`` child processes, real SQLite stores) hold the same N calendars of R
reservations each. Relay B starts peered with relay A; then B restarts. For each step it prints
the wall time until the link-up settled, the CPU seconds and peak RSS of each relay, and how many
calendars each loaded. Nothing differs, so ideally nothing loads.

"Before" (every calendar loaded at link-up) is measured by running the relays from another
checkout, e.g. main before state vectors were stored::

    python benchmarks/idle_calendars_bench.py --calendars 3000 --accord-root /work/main --label before
    python benchmarks/idle_calendars_bench.py --calendars 3000 --label after
    python benchmarks/idle_calendars_bench.py --calendars 100000 --label after
    python benchmarks/idle_calendars_bench.py --quick          # CI smoke: tiny sizes

``--clinics K`` measures a platform relay instead: it holds K x N calendars, and K clinic
relays (one child process hosting them all) each hold their N and peer with it, each with its
own peer token limited to its calendars (``c007-*``); it prints the platform's figures.

The stores are built by the same checkout that runs the relays (one transaction per 10,000
calendars, every calendar from the same template update), in a temporary folder removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def build_store(path: Path, calendars: int, reservations: int, clinics: int = 0) -> None:
    """Write ``calendars`` calendars of ``reservations`` bookings each (runs under --accord-root);
    with ``clinics``, that many per clinic, named ``cKKK-NNNNN`` (``clinics < 0``: clinic -K only)."""
    from datetime import UTC, datetime, timedelta

    from accord.engine.model import CalendarId
    from accord.engine.replica import Replica
    from accord.engine.storage import SqliteStorage

    template = Replica("template", actor="desk", client_id=4242)
    now = datetime(2026, 11, 30, 8, tzinfo=UTC)
    for i in range(reservations):
        start = datetime(2026, 12, 1, 8, tzinfo=UTC) + timedelta(minutes=30 * i)
        template.calendar.book(resource=f"room-{i % 3}", start=start, end=start + timedelta(minutes=30),
                               patient=f"P-{i:04d}", now=now, note="follow-up")
    update = template.full_state()

    async def write() -> None:
        store = await SqliteStorage.open(path, synchronous="OFF")
        try:
            if clinics:
                owners = range(clinics) if clinics > 0 else [-clinics - 1]
                for k in owners:
                    await store.append_many([(CalendarId(f"c{k:03d}-{i:05d}"), update) for i in range(calendars)])
                return
            for first in range(0, calendars, 10_000):
                names = range(first, min(calendars, first + 10_000))
                await store.append_many([(CalendarId(f"clinic-{i:06d}"), update) for i in names])
        finally:
            await store.close()

    asyncio.run(write())


@dataclass
class Step:
    label: str
    wall_s: float
    cpu_a_s: float
    cpu_b_s: float
    peak_rss_a_mb: float
    peak_rss_b_mb: float
    loads_a: int
    loads_b: int


class RelayChild:
    """One ``accord relay`` process run from ``root``."""

    def __init__(self, root: Path, folder: Path, relay_id: str, *extra: str) -> None:
        self.root, self.folder, self.relay_id, self.extra = root, folder, relay_id, extra
        self.port_file = folder / f"{relay_id}.port"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = 600.0) -> None:
        self.port_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(self.root), "PYTHONUNBUFFERED": "1"}
        args = [python_of(self.root), "-m", "accord", "relay", "--id", self.relay_id, "--port", "0",
                "--db", str(self.folder / f"{self.relay_id}.sqlite"), "--port-file", str(self.port_file),
                "--log-level", "WARNING", *self.extra]
        log = open(self.folder / f"{self.relay_id}.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env, cwd=self.folder)  # not ours: -m looks in cwd first
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay {self.relay_id} did not start; see {self.folder / self.relay_id}.log")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as response:
            text = response.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else -1.0

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return -1.0


def host_clinics(folder: Path, clinics: int, platform_port: int) -> None:
    """Run ``clinics`` relays in this process until SIGTERM, each peered with the platform."""
    from accord.relay.server import Relay, RelayConfig

    logging.basicConfig(level=logging.ERROR)  # a hundred relays' warnings are not the measurement

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        relays = []
        for k in range(clinics):
            config = RelayConfig(relay_id=f"clinic-{k:03d}", host="127.0.0.1", port=0,
                                 db_path=folder / f"c{k:03d}.sqlite", peers=[f"ws://127.0.0.1:{platform_port}"],
                                 peer_token=f"peer-{k:03d}", peer_globs=[f"c{k:03d}-*"])
            relays.append(await Relay(config).__aenter__())
        (folder / "clinics.up").write_text(str(len(relays)))
        await stop.wait()
        for relay in relays:
            await relay.__aexit__(None, None, None)

    asyncio.run(run())


def platform_run(args: argparse.Namespace, root: Path, folder: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(root)}
    me = [python_of(root), str(Path(__file__).resolve()), "--calendars", str(args.calendars),
          "--reservations", str(args.reservations)]
    started = time.perf_counter()
    subprocess.run([*me, "--clinics", str(args.clinics), "--build-store", str(folder / "platform.sqlite")],
                   check=True, env=env, cwd=folder)
    for k in range(args.clinics):
        subprocess.run([*me, "--clinics", str(-k - 1), "--build-store", str(folder / f"c{k:03d}.sqlite")],
                       check=True, env=env, cwd=folder)
    build_s = time.perf_counter() - started
    tokens = folder / "tokens.txt"
    tokens.write_text("".join(f"peer-{k:03d} peer c{k:03d}-*\n" for k in range(args.clinics)))
    platform = RelayChild(root, folder, "platform", "--tokens", str(tokens))
    platform.start()
    cpu0 = platform.cpu_s()
    total = args.clinics * args.calendars
    host = subprocess.Popen([*me, "--clinics", str(args.clinics), "--host-clinics", str(folder),
                             "--platform-port", str(platform.port)], env=env, cwd=folder)
    try:
        started = time.perf_counter()
        deadline = time.monotonic() + args.timeout
        while not settled(platform, total):
            if time.monotonic() > deadline or host.poll() is not None:
                raise RuntimeError("platform link-ups did not settle")
            time.sleep(0.1)
        wall = time.perf_counter() - started
        cpu, peak, loaded = platform.cpu_s() - cpu0, platform.peak_rss_mb(), loads(platform)
        links = platform.metric('accord_connections{role="peer"}')
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(timeout=300)
        platform.stop()
    print(f"idle calendars bench {args.label}: platform relay with {total} calendars, {args.clinics} clinic relays "
          f"of {args.calendars} calendars x {args.reservations} reservations, nothing differs; relays from {root}")
    print(f"machine: {platform_machine()}; stores built in {build_s:.1f} s")
    print("| step | peer links | wall s (from the clinics' start) | platform CPU s | platform peak RSS MiB | platform loads |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| all clinics link up | {links:.0f} | {wall:.2f} | {cpu:.2f} | {peak:.0f} | {loaded} |")
    return 0


def platform_machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def python_of(root: Path) -> str:
    venv = root / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def settled(relay: RelayChild, calendars: int) -> bool:
    """The link-up is over: every stored vector compared (state vectors) or every calendar loaded (old path)."""
    return relay.metric("accord_peer_states_compared_total") >= calendars or relay.metric("accord_calendars_loaded") >= calendars


def loads(relay: RelayChild) -> int:
    found = relay.metric("accord_calendar_loads_total")
    return int(found if found >= 0 else relay.metric("accord_calendars_loaded"))


def link_up(label: str, a: RelayChild, b: RelayChild, calendars: int, cpu_a0: float, timeout_s: float) -> Step:
    started = time.perf_counter()
    b.start()
    deadline = time.monotonic() + timeout_s
    while not (settled(a, calendars) and settled(b, calendars)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: link-up did not settle within {timeout_s} s")
        time.sleep(0.05)
    wall = time.perf_counter() - started
    return Step(label, wall, a.cpu_s() - cpu_a0, b.cpu_s(), a.peak_rss_mb(), b.peak_rss_mb(), loads(a), loads(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calendars", type=int, default=100_000)
    parser.add_argument("--reservations", type=int, default=20, help="per calendar")
    parser.add_argument("--accord-root", type=Path, default=HERE, help="checkout whose relays are measured")
    parser.add_argument("--label", default="", help="printed with the table (e.g. before / after)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a link-up may take")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 300 calendars of 2 reservations")
    parser.add_argument("--clinics", type=int, default=0, help="measure a platform relay peering with this many clinics "
                        "of --calendars calendars each")
    parser.add_argument("--build-store", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--host-clinics", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--platform-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.calendars, args.reservations = 300, 2
    if args.build_store is not None:
        build_store(args.build_store, args.calendars, args.reservations, args.clinics)
        return 0
    if args.host_clinics is not None:
        host_clinics(args.host_clinics, args.clinics, args.platform_port)
        return 0
    root = args.accord_root.resolve()
    folder = Path(tempfile.mkdtemp(prefix="idle-bench-"))
    if args.clinics:
        try:
            return platform_run(args, root, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    try:
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(root)}
        build = [python_of(root), str(Path(__file__).resolve()), "--calendars", str(args.calendars),
                 "--reservations", str(args.reservations), "--build-store"]
        subprocess.run([*build, str(folder / "a.sqlite")], check=True, env=env, cwd=folder)
        shutil.copy(folder / "a.sqlite", folder / "b.sqlite")
        build_s = time.perf_counter() - started
        a = RelayChild(root, folder, "a")
        a.start()
        cpu_a0 = a.cpu_s()
        b = RelayChild(root, folder, "b", "--peer", f"ws://127.0.0.1:{a.port}")
        try:
            steps = [link_up("first link-up", a, b, args.calendars, cpu_a0, args.timeout)]
            b.stop()
            cpu_a0 = a.cpu_s()
            steps.append(link_up("B restarted", a, b, args.calendars, cpu_a0, args.timeout))
        finally:
            b.stop()
            a.stop()
        size_mb = (folder / "a.sqlite").stat().st_size / 2**20
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"idle calendars bench {args.label}: {args.calendars} calendars x {args.reservations} reservations, "
          f"nothing differs; relays from {root}")
    print(f"machine: {platform_machine()}; "
          f"store {size_mb:.0f} MiB each (built in {build_s:.1f} s)")
    print("| step | wall s | CPU s A | CPU s B | peak RSS A MiB | peak RSS B MiB | loads A | loads B |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in steps:
        print(f"| {s.label} | {s.wall_s:.2f} | {s.cpu_a_s:.2f} | {s.cpu_b_s:.2f} | {s.peak_rss_a_mb:.0f} | "
              f"{s.peak_rss_b_mb:.0f} | {s.loads_a} | {s.loads_b} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
