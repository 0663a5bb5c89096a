"""Counters and histograms, rendered in the Prometheus text format at ``GET /metrics``.

Metrics carry ids and counts only, never reservation contents.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from accord.engine.errors import StoreFault

COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(slots=True)
class Histogram:
    """A cumulative histogram with fixed buckets."""

    buckets: tuple[float, ...] = COMMIT_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_BUCKETS_S) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        """The histogram's lines in the Prometheus text format."""
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        return [*lines, f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.total:.6f}", f"{name}_count {self.count}"]


@dataclass(slots=True)
class Metrics:
    """Everything the relay counts."""

    updates_in: int = 0
    updates_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    updates_dropped: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    commit_seconds: Histogram = field(default_factory=Histogram)
    forward_wait_seconds: Histogram = field(default_factory=Histogram)  # an update's admission to its forwarding
    decisions: Counter[str] = field(default_factory=Counter)
    home_conflicts: Counter[str] = field(default_factory=Counter)  # calendar -> 1 while another relay is its home
    store_retries: Counter[str] = field(default_factory=Counter)  # fault -> commits retried
    store_failing: str = ""  # the fault writes are held back for now ("fatal" once they are refused), or ""
    fenced_writes: int = 0  # a deposed cluster home's decisions the store refused (relay/lease.py)
    connections_held: int = 0  # readers waiting for the store (back-pressure): to write, or to open a calendar
    subscriptions: int = 0  # calendars open on client (not peer) connections, summed over connections
    peer_states_compared: int = 0
    peer_calendars_differing: int = 0

    def render(self, *, connections: Counter[str], calendars_loaded: int, peer_links: dict[str, str],
               calendar_loads: int = 0) -> str:
        """The Prometheus text exposition."""
        lines = [
            "# HELP accord_connections Open connections by role.",
            "# TYPE accord_connections gauge",
        ]
        for role in ("terminal", "peer", "read-only", "yjs"):
            lines.append(f'accord_connections{{role="{role}"}} {connections.get(role, 0)}')
        lines += [
            "# HELP accord_calendars_loaded Calendars held in memory.",
            "# TYPE accord_calendars_loaded gauge",
            f"accord_calendars_loaded {calendars_loaded}",
            "# HELP accord_calendar_loads_total Calendars loaded from the store since start.",
            "# TYPE accord_calendar_loads_total counter",
            f"accord_calendar_loads_total {calendar_loads}",
            "# HELP accord_subscriptions Calendars open on client connections (summed over connections).",
            "# TYPE accord_subscriptions gauge",
            f"accord_subscriptions {self.subscriptions}",
            "# HELP accord_peer_states_compared_total Stored state vectors received from peers and compared.",
            "# TYPE accord_peer_states_compared_total counter",
            f"accord_peer_states_compared_total {self.peer_states_compared}",
            "# HELP accord_peer_calendars_differing_total Calendars opened at peer link-up because they differ.",
            "# TYPE accord_peer_calendars_differing_total counter",
            f"accord_peer_calendars_differing_total {self.peer_calendars_differing}",
            "# TYPE accord_updates_in_total counter",
            f"accord_updates_in_total {self.updates_in}",
            "# TYPE accord_updates_out_total counter",
            f"accord_updates_out_total {self.updates_out}",
            "# TYPE accord_bytes_in_total counter",
            f"accord_bytes_in_total {self.bytes_in}",
            "# TYPE accord_bytes_out_total counter",
            f"accord_bytes_out_total {self.bytes_out}",
            "# HELP accord_updates_dropped_total Updates refused, by reason.",
            "# TYPE accord_updates_dropped_total counter",
        ]
        lines += [f'accord_updates_dropped_total{{reason="{k}"}} {v}' for k, v in sorted(self.updates_dropped.items())]
        lines += ["# HELP accord_refused_connections_total Connections refused, by reason.",
                  "# TYPE accord_refused_connections_total counter"]
        lines += [f'accord_refused_connections_total{{reason="{k}"}} {v}' for k, v in sorted(self.refused.items())]
        lines += ["# HELP accord_decisions_total Booking decisions written as home relay, by outcome.",
                  "# TYPE accord_decisions_total counter"]
        lines += [f'accord_decisions_total{{outcome="{k}"}} {v}' for k, v in sorted(self.decisions.items())]
        lines += ["# HELP accord_home_conflicts Calendars this relay was told to decide (--home) that another relay decides.",
                  "# TYPE accord_home_conflicts gauge"]
        lines += [f'accord_home_conflicts{{calendar="{k}"}} {v}' for k, v in sorted(self.home_conflicts.items())]
        lines += ["# HELP accord_peer_link_up Outbound peer links (1 up, 0 down).", "# TYPE accord_peer_link_up gauge"]
        lines += [f'accord_peer_link_up{{peer="{url}"}} {1 if state == "up" else 0}' for url, state in sorted(peer_links.items())]
        lines += self.commit_seconds.render("accord_store_commit_seconds", "Store commit latency.")
        lines += self.forward_wait_seconds.render(
            "accord_forward_wait_seconds", "From an update's admission to its forwarding (queued, then stored first).")
        lines += self._render_store_faults()
        return "\n".join(lines) + "\n"

    def _render_store_faults(self) -> list[str]:
        lines = ["# HELP accord_store_retries_total Store commits retried after a transient fault, by fault.",
                 "# TYPE accord_store_retries_total counter"]
        lines += [f'accord_store_retries_total{{fault="{fault}"}} {self.store_retries.get(fault, 0)}' for fault in StoreFault]
        lines += ["# HELP accord_store_failing 1 while store writes are held back for this fault (fatal: refused).",
                  "# TYPE accord_store_failing gauge"]
        lines += [f'accord_store_failing{{fault="{fault}"}} {int(self.store_failing == fault)}'
                  for fault in [*StoreFault, "fatal"]]
        lines += ["# HELP accord_store_connections_held Connections waiting for a failing store to write or open a calendar.",
                  "# TYPE accord_store_connections_held gauge", f"accord_store_connections_held {self.connections_held}"]
        return lines
