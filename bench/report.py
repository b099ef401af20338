"""The tables: every figure, ours and each peer's with its ratio ("times better for us").

Peers: DBOS Transact and Absurd (durable-execution libraries on PostgreSQL),
and pgqueuer no-op job chains as the raw queue floor (W1 only). A ratio
above 1 is better for us: ours ÷ peer for throughputs, peer ÷ ours for
times, latencies and CPU (the "ours vs" columns).
"""

from __future__ import annotations

from typing import Any

from attrs import define

PEERS = [("dbos", "DBOS"), ("absurd", "Absurd"), ("pgqueuer", "pgqueuer floor")]

# Why a peer has no figure for a workload (shown under the table).
CANNOT = {
    ("absurd", "W5"): "not run: Absurd recovers by claim timeout, but the bench has no"
    " process harness for it yet",
    ("absurd", "W6"): "no entities or hooks; not run",
    ("pgqueuer", "W2-W6"): "a job queue, not a workflow engine: no fan-in, signals,"
    " durable sleep or recovery of a workflow; the floor is W1 only",
}


@define
class Row:
    id: str
    figure: str
    ours: str
    peers: list[str]


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(ours: float | None, peer: float | None, *, higher_is_better: bool) -> str:
    if not ours or not peer:
        return "n/a"
    return f"{(ours / peer) if higher_is_better else (peer / ours):.2f}x"


def get(figures: dict[str, Any], key: str, index: int | str | None = None) -> float | None:
    value = figures.get(key)
    if value is None:
        return None
    if index is not None:
        value = value[index] if not isinstance(value, dict) else value.get(index)
        if value is None:
            return None
    return float(value)


def render(results: dict[str, dict[str, Any]], w0: float | None, clients: int) -> list[Row]:
    ours = results.get("hotmesh-postgres", {})
    memory = results.get("hotmesh-memory", {})
    present = [name for name, _ in PEERS]

    def compare(
        id_: str,
        figure: str,
        key: str,
        index: int | str | None = None,
        *,
        higher: bool,
        digits: int = 1,
    ) -> Row:
        o = get(ours, key, index)
        cells: list[str] = []
        for name in present:
            p = get(results.get(name, {}), key, index)
            cells += [num(p, digits), ratio(o, p, higher_is_better=higher)]
        return Row(id_, figure, num(o, digits), cells)

    def plain(id_: str, figure: str, ours_cell: str, *peer_cells: str) -> Row:
        cells: list[str] = []
        for i in range(len(present)):
            cells += [peer_cells[i] if i < len(peer_cells) else "-", "-"]
        return Row(id_, figure, ours_cell, cells)

    rows = [plain("W0", f"pgbench INSERT TPS ({clients} clients): the ceiling", num(w0, 0))]
    rows.append(compare("W1", "sequential-3 workflows/s", "w1_wfs", higher=True))
    rows.append(compare("W1", "commits per workflow, steady", "w1_commits", higher=False, digits=2))
    rows.append(
        compare(
            "W1",
            "commits per workflow, cold (the engine's first run: connections opened as load came)",
            "w1_commits_cold",
            higher=False,
            digits=2,
        )
    )
    oc, o = get(ours, "w1_commits"), get(ours, "w1_wfs")
    if w0 and oc:
        ceiling = w0 / oc
        rows.append(
            plain(
                "W1",
                "fraction of the ceiling (W0 TPS ÷ commits per workflow)",
                f"{(o or 0) / ceiling:.2f} of {ceiling:,.0f}",
            )
        )
    rows.append(
        compare("W1", "ms per step (wall time ÷ steps)", "w1_step_ms", higher=False, digits=2)
    )
    rows.append(
        compare(
            "W1",
            "CPU ms per workflow, the one process (client and worker together)",
            "w1_cpu",
            "client_ms",
            higher=False,
            digits=2,
        )
    )
    rows.append(
        compare(
            "W1",
            "CPU ms per workflow, PostgreSQL backends",
            "w1_cpu",
            "server_ms",
            higher=False,
            digits=2,
        )
    )
    for key, label in (
        ("wfs", "workflows/s, client and 1 worker in separate processes"),
        ("client_ms", "CPU ms per workflow, client process (1 worker process)"),
        ("worker_ms", "CPU ms per workflow, worker process (1 worker process)"),
        ("server_ms", "CPU ms per workflow, PostgreSQL backends (1 worker process)"),
    ):
        rows.append(
            compare(
                "W1",
                label,
                "scale_1",
                key,
                higher=key == "wfs",
                digits=1 if key == "wfs" else 2,
            )
        )
    drain = get(results.get("pgqueuer", {}), "noop_jobs")
    rows.append(
        plain(
            "W1",
            "raw queue: no-op jobs/s, 3N jobs enqueued at once and drained (÷ 3 in brackets)",
            "-",
            "-",
            "-",
            "n/a" if drain is None else f"{drain:,.0f} ({drain / 3:,.1f})",
        )
    )
    m = get(memory, "w1_wfs")
    rows.append(
        plain(
            "W1",
            "memory backend workflows/s (peer column: our postgres; ratio in the figure)",
            num(m),
            f"{num(o)} ({ratio(m, o, higher_is_better=True)})",
        )
    )
    rows.append(compare("W2", "fan-out 100 wall time (s)", "w2_s", higher=False, digits=3))
    for label, index in (("p50", 0), ("p95", 1), ("p99", 2)):
        rows.append(
            compare("W3", f"signal round trip {label} (ms)", "w3", index, higher=False, digits=2)
        )
    for label, index in (("p50", 0), ("p99", 1)):
        rows.append(compare("W4", f"sleep 1 s lateness {label} (ms)", "w4", index, higher=False))
    for key, label in (
        ("completed", "completed"),
        ("lost", "lost"),
        ("twice", "steps run twice"),
        ("seconds", "seconds from restart to all done"),
    ):
        cells = [str(results.get(name, {}).get("w5", {}).get(key, "n/a")) for name in present]
        rows.append(
            plain("W5", f"recovery: {label}", str(ours.get("w5", {}).get(key, "n/a")), *cells)
        )
    rows.append(
        plain(
            "W6",
            "contention final value (must be 1000)",
            str(ours.get("w6_final", "n/a")),
            *(str(results.get(name, {}).get("w6_final", "n/a")) for name in present),
        )
    )
    rows.append(compare("W6", "contention increments/s", "w6_ops", higher=True))
    return rows


def main_table(rows: list[Row]) -> str:
    peers = " | ".join(f"{label} | ours vs {label}" for _, label in PEERS)
    head = f"| id | figure | ours | {peers}"
    lines = [head + " |", "|" + "---|" * (3 + 2 * len(PEERS))]
    lines += [f"| {r.id} | {r.figure} | {r.ours} | {' | '.join(r.peers)} |" for r in rows]
    notes = [f"- {dict(PEERS)[peer]} {w}: {why}" for (peer, w), why in CANNOT.items()]
    return "\n".join(lines) + "\n\nWhere a peer has no figure:\n\n" + "\n".join(notes)


def scale_table(results: dict[str, dict[str, Any]], counts: list[int]) -> str:
    """W1 with 1, 2, 4 worker processes: workflows/s and CPU ms per workflow per process."""
    engines = [("hotmesh-postgres", "HotMesh"), *PEERS]
    lines = [
        "| engine | worker processes | workflows/s | ours vs it | client CPU ms/wf"
        " | workers CPU ms/wf | PostgreSQL CPU ms/wf |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in engines:
        for k in counts:
            figures = results.get(name, {}).get(f"scale_{k}")
            if not figures:
                continue
            ours = get(results.get("hotmesh-postgres", {}), f"scale_{k}", "wfs")
            versus = ratio(ours, figures["wfs"], higher_is_better=True)
            lines.append(
                f"| {label} | {k} | {figures['wfs']:,.1f} | {versus} |"
                f" {figures['client_ms']:.2f} | {figures['worker_ms']:.2f}"
                f" | {figures['server_ms']:.2f} |"
            )
    return "\n".join(lines)


def history_table(results: dict[str, dict[str, Any]]) -> str:
    """W1 (in one process) with a near-empty history, and with N finished workflows stored."""
    engines = [("hotmesh-postgres", "HotMesh"), *PEERS]
    lines = [
        "| engine | workflows/s, fresh | finished workflows stored | workflows/s then"
        " | then ÷ fresh | seeding (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in engines:
        h = results.get(name, {}).get("history")
        if not h:
            continue
        lines.append(
            f"| {label} | {h['before']:,.1f} | {h['jobs']:,} | {h['after']:,.1f}"
            f" | {h['after'] / h['before']:.2f} | {h['seed_s']:.1f} |"
        )
    return "\n".join(lines)
