"""An accord relay cluster on PostgreSQL against Hocuspocus instances on Redis, in one run.

Usage::

    .venv/bin/python benchmarks/cluster_vs_hocuspocus.py             # 1, 2 and 3 instances, 12 clients
    .venv/bin/python benchmarks/cluster_vs_hocuspocus.py --repeat 2  # medians over 2 interleaved runs
    .venv/bin/python benchmarks/cluster_vs_hocuspocus.py --quick     # a smoke run (< 1 min)

Both clusters get the same workload from the same driver (``benchmarks/peers/load.mjs``, the one
``relay_vs_peers.py`` uses: stock Yjs clients, one nested ``Y.Map`` per reservation, inserts and
edits): ``--clients`` clients on one document, client i on instance i mod n, so most updates cross
instances (1 instance is the reference: nothing crosses). Scenarios: **paced**, one per ``--rate``
value (updates/s over all clients for ``--seconds``; default 120/s, well below what the machine can
carry, and 600/s, near it) and **tight loop** (``--burst`` updates per client as fast as the drivers
go). Every client receives every other client's updates: ``clients * updates * (clients - 1)``
deliveries.

- **accord**: n ``accord relay`` processes on one throwaway PostgreSQL server (tests/postgres.py,
  fsync on). Every update is committed (``synchronous_commit=on``) before it is forwarded; the
  other processes learn of it by NOTIFY and fetch the rows.
- **Hocuspocus**: n ``@hocuspocus/server`` instances with ``@hocuspocus/extension-redis`` on one
  ``redis-server`` started here on a free port in a temporary folder (no RDB, no AOF). Nothing is
  stored anywhere: Redis only carries pub/sub between the instances' in-memory documents.

Reported per instance count, scenario and cluster: deliveries/s (over the converge time),
cross-instance latency p50/p99 (writer's stamp to a receiver on another instance; every process
reads one clock), CPU per 1000 deliveries of the instances (summed) and of the backend (the
PostgreSQL server with all its backends, or the Redis process), over the whole scenario including
connects and a settle until all of them are idle; the drivers' CPU. Results also go to
``--out`` (JSON lines). Scenarios run interleaved (instances -> run -> scenario -> cluster; which
cluster goes first alternates by run).

Needs: node 20+ and npm (the pinned Node packages, ``benchmarks/peers/package-lock.json``, are
installed into ``.cache/bench-node`` on first use, as for relay_vs_peers.py), ``redis-server``
(Debian: ``apt-get install redis-server``) and PostgreSQL's server binaries (Debian: ``postgresql``).
Exits with 3 and names what is missing; ``--no-install`` makes missing Node packages such a case
instead of running ``npm ci``. It starts and stops everything it uses, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import psutil
from relay_vs_peers import (
    BENCH_DIR,
    NODE_HOME,
    ROOT,
    RunningServer,
    Scenario,
    ServerSpec,
    accord_version,
    ensure_node_modules,
    machine_description,
    node_modules_installed,
    node_version,
    run_fanout,
    settle,
)
from report import fmt, median

sys.path.insert(0, str(ROOT / "tests"))
from postgres import PostgresServer, find_binaries, running_server  # the tests' throwaway server
from relays import free_port

MISSING = 3  # exit code: a prerequisite is not installed (the smoke test skips on it)
LOGS = ROOT / ".cache" / "bench-logs"


# ---- the backends --------------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, its live descendants and its reaped children
    (PostgreSQL's backends come and go; the postmaster reaps them)."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        descendants = root.children(recursive=True)
    except psutil.Error:
        return float("nan")
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return float(total)


@dataclass
class RedisServer:
    """A ``redis-server`` child on 127.0.0.1 (pub/sub only: no RDB snapshots, no AOF)."""

    proc: subprocess.Popen[bytes]
    port: int
    version: str

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)


def redis_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
    return False


@contextlib.contextmanager
def running_redis(executable: str, folder: Path, timeout_s: float = 20.0) -> Iterator[RedisServer]:
    """Start ``redis-server`` in ``folder`` on a free port; stop it (by its pid) when the block ends."""
    version = subprocess.run([executable, "--version"], capture_output=True, text=True, check=False).stdout.split()
    found = next((word.split("=", 1)[1] for word in version if word.startswith("v=")), "?")
    port = free_port()
    log = folder / "redis.log"
    proc = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not redis_answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {port}:\n{tail}")
            time.sleep(0.05)
        yield RedisServer(proc, port, found)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def postmaster_pid(server: PostgresServer) -> int:
    """The throwaway server's postmaster (first line of its ``postmaster.pid``)."""
    return int((server.root / "data" / "postmaster.pid").read_text().split()[0])


def postgres_version(server: PostgresServer) -> str:
    done = subprocess.run([str(server.binaries / "postgres"), "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()  # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return words[2] if len(words) > 2 else "?"


# ---- the clusters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance(ServerSpec):
    """One process of a cluster: its whole command line (relay_vs_peers' servers are built from their key)."""

    argv: tuple[str, ...] = ()
    port_file: Path | None = None  # None: the process prints {"port": N}

    def command(self, work: Path) -> tuple[list[str], Path | None]:
        return list(self.argv), self.port_file


@dataclass
class Cluster:
    """n instances of one system on one shared backend."""

    system: str  # the table's name for it
    protocol: str
    servers: list[RunningServer]
    backend_cpu_s: Callable[[], float]

    @property
    def url(self) -> str:
        return ",".join(server.url for server in self.servers)

    def servers_cpu_s(self) -> float:
        return sum(server.cpu_s() for server in self.servers)

    def all_cpu_s(self) -> float:
        return self.servers_cpu_s() + self.backend_cpu_s()

    def alive(self) -> bool:
        return all(server.alive() for server in self.servers)

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))


ACCORD = "accord relays on PostgreSQL"
HOCUSPOCUS = "Hocuspocus on Redis"


def accord_instances(n: int, url: str, work: Path) -> list[Instance]:
    accord = Path(sys.executable).with_name("accord")
    command = [str(accord)] if accord.exists() else [sys.executable, "-m", "accord"]
    return [Instance(f"cluster-accord-{n}-{i}", f"accord relay {i + 1}/{n}", "y-websocket", "PostgreSQL",
                     argv=(*command, "relay", "--id", f"cluster-{n}-{i}", "--port", "0", "--port-file",
                           str(work / f"accord-{n}-{i}.port"), "--db", url, "--log-level", "WARNING"),
                     port_file=work / f"accord-{n}-{i}.port")
            for i in range(n)]


def hocuspocus_instances(n: int, redis_port: int) -> list[Instance]:
    node = shutil.which("node") or "node"
    return [Instance(f"cluster-hocuspocus-{n}-{i}", f"hocuspocus {i + 1}/{n}", "hocuspocus", "none (Redis pub/sub)",
                     argv=(node, str(BENCH_DIR / "hocuspocus_server.js"), "0", "--redis", str(redis_port)))
            for i in range(n)]


async def start_cluster(system: str, specs: list[Instance], backend_cpu_s: Callable[[], float], work: Path,
                        started: list[RunningServer]) -> Cluster:
    servers = [RunningServer(spec, work, LOGS) for spec in specs]
    started.extend(servers)  # stopped by the caller, also if a start fails
    await asyncio.gather(*(server.start() for server in servers))
    return Cluster(system, specs[0].protocol, servers, backend_cpu_s)


# ---- one scenario --------------------------------------------------------------------------------


async def run_scenario(cluster: Cluster, sc: Scenario, rep: int, args: argparse.Namespace) -> dict[str, Any]:
    head = {"system": cluster.system, "instances": len(cluster.servers), "scenario": sc.label,
            "scenario_key": sc.key, "run": rep, "deliveries": sc.deliveries}
    if not cluster.alive():
        return {**head, "ok": False, "error": "an instance exited"}
    doc = f"cluster-{sc.key}-{rep}-{random.randrange(16**6):06x}"
    servers0, backend0 = cluster.servers_cpu_s(), cluster.backend_cpu_s()
    body = await run_fanout(cluster.url, cluster.protocol,
                            {"servers": cluster.servers_cpu_s, "backend": cluster.backend_cpu_s},
                            sc, args, doc, LOGS / "drivers.stderr.log")
    await settle(cluster.all_cpu_s, 0.0)
    servers_s, backend_s = cluster.servers_cpu_s() - servers0, cluster.backend_cpu_s() - backend0
    row = {**head, **body, "servers_cpu_s": round(servers_s, 3), "backend_cpu_s": round(backend_s, 3)}
    if row.get("ok"):
        row["servers_cpu_ms_per_1k"] = round(servers_s * 1e6 / sc.deliveries, 2)
        row["backend_cpu_ms_per_1k"] = round(backend_s * 1e6 / sc.deliveries, 2)
    if not cluster.alive():
        row.update(ok=False, error=f"an instance exited ({row.get('error') or 'during the scenario'})")
    return row


def describe(row: dict[str, Any]) -> str:
    if not row.get("ok"):
        return f"FAIL {row.get('error')}"
    return (f"{row['deliveries_per_s']:,.0f} deliveries/s, cross-instance p50 {row.get('lat_cross_p50_ms')} ms "
            f"p99 {row.get('lat_cross_p99_ms')} ms (all: {row['lat_p50_ms']}, {row['lat_p99_ms']} ms), "
            f"instances {row['servers_cpu_ms_per_1k']} ms/1k, "
            f"backend {row['backend_cpu_ms_per_1k']} ms/1k, drivers {row['driver_cpu_pct']} %")


# ---- the table -----------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown line per (instances, scenario, system): medians over the ok runs."""
    lines = ["| instances | scenario | system | runs ok | deliveries/s | cross-instance p50 ms | p99 ms "
             "| all p50 / p99 ms | instances' CPU ms/1k deliv. | backend CPU ms/1k | total ms/1k | driver CPU % |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["instances"], row["scenario"], row["system"]), []).append(row)
    for (instances, scenario, system), runs in groups.items():
        ok = [r for r in runs if r.get("ok")]

        def cell(key: str, digits: int = 0, ok: list[dict[str, Any]] = ok) -> str:
            return fmt(median(r.get(key) for r in ok), digits)

        total = median(r["servers_cpu_ms_per_1k"] + r["backend_cpu_ms_per_1k"] for r in ok)
        lines.append(f"| {instances} | {scenario} | {system} | {len(ok)}/{len(runs)} | {cell('deliveries_per_s')} "
                     f"| {cell('lat_cross_p50_ms', 1)} | {cell('lat_cross_p99_ms', 1)} "
                     f"| {cell('lat_p50_ms', 1)} / {cell('lat_p99_ms', 1)} "
                     f"| {cell('servers_cpu_ms_per_1k', 1)} | {cell('backend_cpu_ms_per_1k', 1)} "
                     f"| {fmt(total, 1)} | {cell('driver_cpu_pct')} |")
    return "\n".join(lines)


class MachineShare:
    """How much CPU the rest of the machine used while this benchmark ran (other work skews every number)."""

    def __init__(self, servers_cpu_s: Callable[[], float]) -> None:
        self.servers_cpu_s = servers_cpu_s  # this benchmark's processes that are not its children
        self.started = time.monotonic()
        self.busy0, self.own0 = self.busy_s(), self.own_s()

    @staticmethod
    def busy_s() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def own_s(self) -> float:
        mine = os.times()  # this process and its reaped children: the drivers and the stopped instances
        return mine.user + mine.system + mine.children_user + mine.children_system + self.servers_cpu_s()

    def others_pct(self) -> int:
        others = (self.busy_s() - self.busy0) - (self.own_s() - self.own0)
        return round(100 * others / ((time.monotonic() - self.started) * (os.cpu_count() or 1)))


# ---- main ----------------------------------------------------------------------------------------


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    """One paced scenario per ``--rate`` (updates/s over all clients for ``--seconds``), then the tight loop."""
    paced = []
    for rate in args.rate:
        per_client = max(1, round(rate * args.seconds / args.clients))
        paced.append(Scenario(f"paced-{rate:g}", f"paced {args.clients}x{per_client} @{rate:g}/s", "paced",
                              args.clients, per_client, rate=rate))
    return [*paced, Scenario("tight", f"tight loop {args.clients}x{args.burst}", "fanout", args.clients, args.burst)]


def missing_prerequisites(args: argparse.Namespace) -> list[str]:
    """What is not installed, each as a sentence saying how to get it (empty: all there)."""
    missing = []
    if shutil.which(args.redis_server) is None:
        missing.append(f"redis-server not found ({args.redis_server!r}); install it (Debian: apt-get install "
                       "redis-server) or pass --redis-server PATH")
    if find_binaries() is None:
        missing.append("PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH); "
                       "install Debian's postgresql package")
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing.append("node and npm not found; install Node 20+")
    elif args.no_install and not node_modules_installed():
        missing.append(f"the pinned Node packages are not installed in {NODE_HOME} (--no-install); run once "
                       "without --no-install (npm ci from the npm registry, a few minutes) or `make bench-quick`")
    return missing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=lambda t: [int(p) for p in t.split(",")], default=[1, 2, 3],
                        help="instance counts, comma separated (default 1,2,3)")
    parser.add_argument("--clients", type=int, default=12, help="clients on the one document (default 12)")
    parser.add_argument("--rate", type=lambda t: [float(r) for r in t.split(",")], default=[120.0, 600.0],
                        help="paced: updates/s over all clients, one scenario per value, comma separated "
                             "(default 120,600: 10/s and 50/s each for 12 clients)")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced: how long it sends (default 5)")
    parser.add_argument("--burst", type=int, default=200, help="tight loop: updates per client (default 200)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of everything, interleaved; medians (default 1)")
    parser.add_argument("--drivers", type=int, default=3, help="driver processes per scenario (default 3)")
    parser.add_argument("--timeout", type=int, default=90, help="seconds a scenario may take (default 90)")
    parser.add_argument("--redis-server", default="redis-server", help="the redis-server executable")
    parser.add_argument("--no-install", action="store_true",
                        help=f"exit {MISSING} if the Node packages are not installed, instead of running npm ci")
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "cluster-bench" / "results.jsonl",
                        help="where the rows go, one JSON object a line (default .cache/cluster-bench/results.jsonl)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 instances, 4 clients, 1 s paced at 80/s, bursts of 20, one driver")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.clients, args.rate, args.seconds, args.burst, args.drivers = [2], 4, [80.0], 1.0, 20, 1
    if args.clients < 2 or args.repeat < 1 or args.drivers < 1 or min(args.instances) < 1:
        parser.error("--clients must be at least 2; --repeat, --drivers and --instances at least 1")
    return args


async def run(args: argparse.Namespace, pg: PostgresServer, redis: RedisServer, work: Path,
              started: list[RunningServer]) -> list[dict[str, Any]]:
    pg_pid = postmaster_pid(pg)
    rows: list[dict[str, Any]] = []
    for n in args.instances:
        # one cluster of each for this count, both up for all its scenarios (idle ones cost nothing)
        accord = await start_cluster(ACCORD, accord_instances(n, pg.database(), work),
                                     lambda: tree_cpu_s(pg_pid), work, started)
        hocuspocus = await start_cluster(HOCUSPOCUS, hocuspocus_instances(n, redis.port), redis.cpu_s, work, started)
        try:
            for rep in range(1, args.repeat + 1):
                for sc in scenarios(args):
                    print(f"-- {n} instances, {sc.label} (run {rep})", file=sys.stderr)
                    for cluster in (accord, hocuspocus) if rep % 2 else (hocuspocus, accord):
                        row = await run_scenario(cluster, sc, rep, args)
                        rows.append(row)
                        print(f"   {cluster.system}: {describe(row)}", file=sys.stderr, flush=True)
                        await asyncio.sleep(0.5)
        finally:
            await accord.stop()
            await hocuspocus.stop()
    return rows


def kill_leftovers(servers: list[RunningServer]) -> None:
    """Last resort (the clusters' own ``finally`` normally stopped them): kill any instance still running."""
    for server in servers:
        if server.proc is not None and server.alive():
            server.proc.kill()
            server.proc.wait(timeout=5)


def interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: every finally and context manager below stops what it started


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start PostgreSQL and Redis, run every cluster and scenario, stop everything; (meta, rows)."""
    started: list[RunningServer] = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cluster-bench-")))
        pg = stack.enter_context(running_server(fsync=True))
        redis = stack.enter_context(running_redis(args.redis_server, work))
        stack.callback(kill_leftovers, started)
        meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **machine_description(),
                "accord": accord_version(), "postgresql": postgres_version(pg), "redis": redis.version,
                "hocuspocus": node_version("@hocuspocus/server"),
                "extension_redis": node_version("@hocuspocus/extension-redis"), "ioredis": node_version("ioredis"),
                "clients": args.clients, "rate": args.rate, "seconds": args.seconds, "burst": args.burst,
                "repeat": args.repeat, "drivers": args.drivers}
        print(f"machine: {meta['machine']}; {meta['runtimes']}", flush=True)
        print(f"accord {meta['accord']} on PostgreSQL {meta['postgresql']} (throwaway, fsync on, synchronous_commit "
              f"on) vs @hocuspocus/server {meta['hocuspocus']} + extension-redis {meta['extension_redis']} (ioredis "
              f"{meta['ioredis']}) on redis-server {redis.version} (no persistence); driver {meta['driver']}, "
              f"{args.drivers} processes; {args.clients} clients, client i on instance i mod n", flush=True)
        own = MachineShare(lambda: tree_cpu_s(postmaster_pid(pg)) + redis.cpu_s())
        rows = asyncio.run(run(args, pg, redis, work, started))
        meta["others_cpu_pct"], meta["load_average"] = own.others_pct(), " ".join(f"{x:.1f}" for x in os.getloadavg())
    return meta, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_prerequisites(args)
    if missing:
        print("cluster_vs_hocuspocus: cannot run: " + "; ".join(missing), file=sys.stderr)
        return MISSING
    LOGS.mkdir(parents=True, exist_ok=True)
    ensure_node_modules(LOGS / "npm.log")
    if node_version("@hocuspocus/extension-redis") == "?":
        print(f"cluster_vs_hocuspocus: cannot run: @hocuspocus/extension-redis is missing from {NODE_HOME}; "
              "delete .cache/bench-node/.installed and run again (npm ci)", file=sys.stderr)
        return MISSING
    for signum in (signal.SIGINT, signal.SIGTERM):  # both unwind the same way (asyncio.run's own SIGINT cancel is not used)
        signal.signal(signum, interrupted)
    try:
        meta, rows = measure(args)
    except KeyboardInterrupt:
        print("cluster_vs_hocuspocus: interrupted; stopped everything it started", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as exc:  # a server that did not start: the message names its log
        print(f"cluster_vs_hocuspocus: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in [{"meta": meta}, *rows]))
    print(table(rows))
    print(f"rows in {args.out}; cells are medians over {args.repeat} run(s); CPU per 1k deliveries covers each "
          "scenario whole (connects, updates, settle until idle)")
    print(f"conditions: processes other than this benchmark's used {meta['others_cpu_pct']} % of the machine's "
          f"{os.cpu_count()} cores during the run; load average at the end {meta['load_average']}")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
