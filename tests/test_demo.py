"""``accord demo`` (what ``make demo`` runs) converges and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_walks_the_two_channel_scenario_and_converges() -> None:
    result = subprocess.run([sys.executable, "-m", "accord", "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "converged: yes" in result.stdout
    assert "double booking of room-2 at 14:00 resolved: booked + rejected" in result.stdout
    assert "both offline edits survived (note and 11:00): yes" in result.stdout
