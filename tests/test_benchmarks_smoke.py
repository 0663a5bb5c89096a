"""The benchmarks run at tiny sizes (a smoke check: they measure and print, nothing is timed here).

relay_vs_peers.py needs the peers' Node packages (a multi-minute install); `make bench-quick`
runs it. The Python-only benchmarks run here so that CI notices when one breaks.
cluster_vs_hocuspocus.py runs here when its prerequisites are installed (redis-server, the peers'
Node packages in .cache/bench-node, PostgreSQL); otherwise the test skips, naming what is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("engine_bench.py", ["--n", "300"], "merge ratio (engine/raw)"),
        ("decisions_bench.py", ["--n", "300"], "decisions/s"),
        ("system_bench.py", ["--quick"], "decision latency"),
        ("large_calendar_bench.py", ["--quick"], "cold sync to a new terminal"),
        ("idle_calendars_bench.py", ["--quick"], "peak RSS"),
        ("pg_fanout_bench.py", ["--quick"], "cross-process latency"),
        ("pg_failover_bench.py", ["--quick"], "decided by the new home"),
        ("pg_scale_bench.py", ["--quick"], "ms/1k deliveries"),
    ],
)
def test_benchmark_runs_at_smoke_size_and_prints_its_figures(script: str, args: list[str], expected: str) -> None:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
    assert "machine" in result.stdout.lower() or "cpu" in result.stdout.lower()


def test_cluster_vs_hocuspocus_runs_at_smoke_size_or_says_what_is_missing(tmp_path: Path) -> None:
    # --no-install: never start a multi-minute npm ci from the test suite; exit 3 names what is missing
    result = subprocess.run([sys.executable, str(BENCH / "cluster_vs_hocuspocus.py"), "--quick", "--no-install",
                             "--out", str(tmp_path / "rows.jsonl")], capture_output=True, text=True, timeout=240)
    if result.returncode == 3:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 2 | tight loop 4x20 | Hocuspocus on Redis | 1/1 |" in result.stdout
    assert "| 2 | paced 4x20 @80/s | accord relays on PostgreSQL | 1/1 |" in result.stdout
    assert "machine" in result.stdout
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 1 + 4  # meta, 2 scenarios x 2 clusters
