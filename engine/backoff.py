"""Reconnect delays: capped exponential backoff with jitter, as a pure policy (no clock, no sleep).

The relay's peer links and the terminal's link wait :meth:`Backoff.delay_s` between attempts;
the jitter spreads many terminals out after a relay restart instead of reconnecting in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial_s * factor**n`` capped at ``max_s``, minus up to ``jitter`` of it."""

    initial_s: float = 0.25
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.5

    def delay_s(self, attempt: int) -> float:
        """The wait before reconnect number ``attempt`` (0-based), randomised so clients spread out."""
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())
