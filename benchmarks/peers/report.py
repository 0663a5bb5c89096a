"""Tables and the plot for benchmarks/relay_vs_peers.py (rows are the dicts in results.jsonl)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Row = dict[str, Any]

COLUMNS_NOTE = """Columns: **accepted upd/s** = N·M / converge time; **deliveries/s** = N·M·(N-1) / converge time;
**p50 / p99** = from the writer stamping `updated_at` to a receiving client's `observeDeep` (every driver
process reads the same clock; includes queueing in the drivers); **converge s** = the agreed start instant
until every client has seen every other client's last update, after which all replicas' state vectors
and reservation counts are compared; **server CPU s** = user+system CPU of the server process over the
whole scenario (connects, updates, and a settle period until it is idle, so deferred stores are counted);
**CPU ms / 1k deliv.** = that per 1000 deliveries; **driver CPU %** = CPU of all driver processes during
the update window, summed (200 % = both cores); **RSS** = server resident memory after the scenario;
**coldsync s / bytes** = a fresh client connecting until it holds all K reservations, and the bytes it
received by then (the writer stays connected); its note's **answer in** is the server's part, until the
state answer reached the client (the rest is the stock Yjs client applying it)."""


CAVEATS = """## Read before quoting numbers

- **Shared, noisy machine.** Drivers and servers share 2 cores (and whatever else runs on the machine).
  Every server runs for the whole benchmark and the scenarios are interleaved (run, scenario, server),
  so outside load is spread over all servers; still, compare servers within one run, and prefer
  `--repeat 3` medians. Server CPU per 1000 deliveries is the steadiest server-side signal.
- **Unpaced fan-out is mostly bounded by the drivers**: every delivered update is applied by a Yjs
  client in a Node driver. When driver CPU % approaches 200 (both cores), throughput and latency in
  those rows are lower bounds for every server; the paced rows are the fairer latency comparison.
- **Durability differs.** The accord relay with SQLite commits (fsync, WAL, synchronous=FULL, group
  commit) *before* it forwards or acknowledges an update, so its latency includes the commit.
  pycrdt-websocket's SQLiteYStore writes each update after broadcasting it. Hocuspocus' SQLite
  extension stores the whole document state 2 s (at most 10 s) after changes stop, or when the last
  client leaves: updates of the last seconds are lost if the process dies.
- **Hocuspocus merges the broadcasts of one event-loop turn** into one message, so its receivers
  apply fewer, larger messages (fewer latency samples: only the last stamp of a merged edit is seen).
- **y-websocket-server echoes** every update back to its sender too (more bytes received).
- **Memory.** The in-memory peers drop a document when its last client leaves; the accord relay
  keeps a calendar loaded for `--idle-unload` (300 s) after its last client, and every scenario uses
  a new document, so its RSS grows over the run.
- Server CPU covers the whole scenario: connects and syncs, the updates, and a settle period until
  the server is idle (so deferred stores are counted)."""


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def grouped(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows by (scenario, server), in first-seen order."""
    out: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        out.setdefault((row["scenario"], row["server"]), []).append(row)
    return out


def _notes(runs: list[Row]) -> str:
    notes = []
    for run in runs:
        if not run.get("ok"):
            notes.append(f"FAIL (run {run.get('run')}): {run.get('error')}")
    first = runs[0]
    accord = [r["accord"] for r in runs if r.get("ok") and r.get("accord")]
    if accord and accord[0].get("commits"):
        notes.append(f"{fmt(median(a['commits'] for a in accord))} store commits, "
                     f"mean {fmt(median(a['commit_ms_mean'] for a in accord), 1)} ms")
        if any(a.get("forward_wait_ms_mean") is not None for a in accord):
            notes.append(f"forwarded {fmt(median(a.get('forward_wait_ms_mean') for a in accord), 1)} ms after admission (mean)")
    if any(a.get("dropped") for a in accord):
        notes.append(f"{max(a['dropped'] for a in accord)} updates dropped (slow consumer)")
    if first.get("kind") == "coldsync":
        ok = [r for r in runs if r.get("ok")]
        if ok:
            notes.append(f"answer in {fmt(median(r.get('answer_s') for r in ok), 3)} s; "
                         f"preload {fmt(median(r.get('preload_ups') for r in ok))} upd/s; "
                         f"{fmt(median(r.get('messages') for r in ok))} msgs; "
                         f"doc {fmt(median(r.get('doc_update_bytes') for r in ok))} B")
    else:
        ok = [r for r in runs if r.get("ok")]
        expected = first.get("deliveries")
        samples = median(r.get("lat_samples") for r in ok)
        if ok and expected and samples is not None and samples < expected:
            notes.append(f"latency samples {samples:,.0f}/{expected:,} (server merged some broadcasts)")
    return "; ".join(notes).replace("|", "\\|")


def table_line(runs: list[Row]) -> str:
    ok = [r for r in runs if r.get("ok")]

    def m(key: str) -> float | None:
        return median(r.get(key) for r in ok)

    cells = [runs[0]["server"], f"{len(ok)}/{len(runs)}"]
    if runs[0].get("kind") == "coldsync":
        cells += ["—"] * 5 + [fmt(m("coldsync_s"), 3), fmt(m("bytes")), fmt(median(r.get("server_cpu_s") for r in runs), 2),
                              "—", "—"]
    else:
        cells += [fmt(m("accepted_ups")), fmt(m("deliveries_per_s")), fmt(m("lat_p50_ms"), 1), fmt(m("lat_p99_ms"), 1),
                  fmt(m("converge_s"), 3), "—", fmt(m("bytes_rx")), fmt(m("server_cpu_s"), 2),
                  fmt(m("server_cpu_ms_per_1k_deliveries"), 1), fmt(m("driver_cpu_pct"))]
    cells += [fmt(median(r.get("server_rss_mb") for r in runs)), _notes(runs)]
    return "| " + " | ".join(cells) + " |"


HEAD = ("| server | runs ok | accepted upd/s | deliveries/s | p50 ms | p99 ms | converge s | coldsync s | bytes rx "
        "| server CPU s | CPU ms / 1k deliv. | driver CPU % | RSS MB | notes |")
SEP = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"


def scenario_tables(rows: list[Row], label: Callable[[Row], str] | None = None) -> list[str]:
    lines: list[str] = []
    if label is not None:
        rows = [{**r, "server": label(r)} for r in rows]
    by_scenario: dict[str, list[list[Row]]] = {}
    for (scenario, _server), runs in grouped(rows).items():
        by_scenario.setdefault(scenario, []).append(runs)
    for scenario, groups in by_scenario.items():
        lines += [f"### {scenario}", "", HEAD, SEP]
        lines += [table_line(runs) for runs in groups]
        lines.append("")
    return lines


def render_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    repeat = meta.get("repeat", 1)
    lines = [
        "# accord relay vs other Yjs sync servers",
        "",
        "Generated by `benchmarks/relay_vs_peers.py`" + (" --quick (smoke sizes)" if meta.get("quick") else "")
        + "; rerunning it rewrites this file.",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Runtimes: {meta['runtimes']}",
        f"- Driver: {meta['driver']}; fan-out clients spread over {meta['drivers']} driver processes that start "
        "together; servers on 127.0.0.1, each started fresh and used for all its scenarios",
        f"- accord: {meta['accord']}"
        + (f"; baseline (accord baseline rows): {meta['accord_baseline']}" if meta.get("accord_baseline") else ""),
        f"- Runs per scenario: {repeat}" + (" (cells are medians over the ok runs; per-run rows at the end)"
                                            if repeat > 1 else ""),
        "- Driver and server share the machine: compare servers within one run, not absolute numbers across runs.",
        "",
        "| server | version | persistence |",
        "|---|---|---|",
    ]
    for label, version in meta["versions"].items():
        lines.append(f"| {label} | {version} | {meta['storage'].get(label, '')} |")
    lines += ["", "## Results", ""]
    lines += scenario_tables(rows)
    lines += [COLUMNS_NOTE, "", CAVEATS, ""]
    if repeat > 1:
        lines += ["## Per-run rows", ""]
        ordered = sorted(rows, key=lambda r: r.get("run", 0))  # stable: keeps scenario and server order
        lines += scenario_tables(ordered, label=lambda r: f"{r['server']} (run {r['run']})")
    return "\n".join(lines) + "\n"


def summary_table(rows: list[Row]) -> str:
    """The main tables, for stdout."""
    return "\n".join(scenario_tables(rows))


def render_plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = list(dict.fromkeys(r["server"] for r in rows))
    fan = list(dict.fromkeys(r["scenario"] for r in rows if r.get("kind") in ("fanout", "paced")))
    paced = list(dict.fromkeys(r["scenario"] for r in rows if r.get("kind") == "paced"))
    unpaced = list(dict.fromkeys(r["scenario"] for r in rows if r.get("kind") == "fanout"))
    cold = list(dict.fromkeys(r["scenario"] for r in rows if r.get("kind") == "coldsync"))
    groups = grouped(rows)

    def value(scenario: str, server: str, key: str) -> float:
        runs = [r for r in groups.get((scenario, server), []) if r.get("ok")]
        found = median(r.get(key) for r in runs)
        return float("nan") if found is None else float(found)

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    panels = [
        (axes[0][0], fan, "server_cpu_ms_per_1k_deliveries", "server CPU ms per 1000 deliveries (lower is better)", False),
        (axes[0][1], unpaced, "deliveries_per_s", "unpaced fan-out: deliveries/s (higher is better)", False),
        (axes[1][0], paced, "lat_p99_ms", "paced: p99 latency ms, p50 hatched (lower is better)", True),
        (axes[1][1], cold, "coldsync_s", "cold sync: seconds to full state (lower is better)", False),
    ]
    width = 0.8 / max(1, len(servers))
    colors = plt.get_cmap("tab10")
    for ax, scenarios, key, title, with_p50 in panels:
        for i, server in enumerate(servers):
            xs = [j + i * width for j in range(len(scenarios))]
            ax.bar(xs, [value(s, server, key) for s in scenarios], width, label=server, color=colors(i))
            if with_p50:
                ax.bar(xs, [value(s, server, "lat_p50_ms") for s in scenarios], width, color="white", alpha=0.6,
                       hatch="//", edgecolor=colors(i))
        ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(scenarios))], scenarios, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if with_p50:
            ax.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(servers)), fontsize=9)
    fig.suptitle("accord relay vs other Yjs sync servers (same workload, same run)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
