"""The benchmarks run at tiny sizes (a smoke check: they measure and print, nothing is timed here).

relay_vs_peers.py needs the peers' Node packages (a multi-minute install); `make bench-quick`
runs it. The Python-only benchmarks run here so that CI notices when one breaks.
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
