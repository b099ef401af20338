"""The one table: figure, ours, peer, ratio (the ratio is always "times better for us")."""

from __future__ import annotations

from typing import Any

from attrs import define


@define
class Row:
    id: str
    figure: str
    ours: str
    peer: str
    ratio: str


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(ours: float | None, peer: float | None, *, higher_is_better: bool) -> str:
    if not ours or not peer:
        return "n/a"
    return f"{(ours / peer) if higher_is_better else (peer / ours):.2f}x"


def render(results: dict[str, dict[str, Any]], w0: float | None, clients: int) -> list[Row]:
    ours = results.get("hotmesh-postgres", {})
    memory = results.get("hotmesh-memory", {})
    peer = results.get("dbos", {})

    def get(figures: dict[str, Any], key: str, index: int | None = None) -> float | None:
        value = figures.get(key)
        if value is None:
            return None
        return float(value[index]) if index is not None else float(value)

    rows = [Row("W0", f"pgbench INSERT TPS ({clients} clients): the ceiling", num(w0, 0), "-", "-")]
    o, p = get(ours, "w1_wfs"), get(peer, "w1_wfs")
    rows.append(
        Row("W1", "sequential-3 workflows/s", num(o), num(p), ratio(o, p, higher_is_better=True))
    )
    oc, pc = get(ours, "w1_commits"), get(peer, "w1_commits")
    rows.append(
        Row("W1", "commits per workflow", num(oc), num(pc), ratio(oc, pc, higher_is_better=False))
    )
    if w0 and oc:
        ceiling = w0 / oc
        rows.append(
            Row(
                "W1",
                "fraction of the ceiling (W0 TPS ÷ commits per workflow)",
                f"{(o or 0) / ceiling:.2f} of {ceiling:,.0f}",
                "-",
                "-",
            )
        )
    o, p = get(ours, "w1_step_ms"), get(peer, "w1_step_ms")
    rows.append(
        Row(
            "W1",
            "ms per step (wall time ÷ steps)",
            num(o, 2),
            num(p, 2),
            ratio(o, p, higher_is_better=False),
        )
    )
    m, o = get(memory, "w1_wfs"), get(ours, "w1_wfs")
    rows.append(
        Row(
            "W1",
            "memory backend workflows/s (peer column: our postgres)",
            num(m),
            num(o),
            ratio(m, o, higher_is_better=True),
        )
    )
    o, p = get(ours, "w2_s"), get(peer, "w2_s")
    rows.append(
        Row(
            "W2",
            "fan-out 100 wall time (s)",
            num(o, 3),
            num(p, 3),
            ratio(o, p, higher_is_better=False),
        )
    )
    for label, index in (("p50", 0), ("p95", 1), ("p99", 2)):
        o, p = get(ours, "w3", index), get(peer, "w3", index)
        rows.append(
            Row(
                "W3",
                f"signal round trip {label} (ms)",
                num(o, 2),
                num(p, 2),
                ratio(o, p, higher_is_better=False),
            )
        )
    for label, index in (("p50", 0), ("p99", 1)):
        o, p = get(ours, "w4", index), get(peer, "w4", index)
        rows.append(
            Row(
                "W4",
                f"sleep 1 s lateness {label} (ms)",
                num(o, 1),
                num(p, 1),
                ratio(o, p, higher_is_better=False),
            )
        )
    for key, label in (
        ("completed", "completed"),
        ("lost", "lost"),
        ("twice", "steps run twice"),
        ("seconds", "seconds from restart to all done"),
    ):
        ow, pw = ours.get("w5", {}).get(key), peer.get("w5", {}).get(key)
        rows.append(
            Row(
                "W5",
                f"recovery: {label}",
                "n/a" if ow is None else str(ow),
                "n/a" if pw is None else str(pw),
                "-",
            )
        )
    rows.append(
        Row(
            "W6",
            "contention final value (must be 1000)",
            str(ours.get("w6_final", "n/a")),
            str(peer.get("w6_final", "n/a")),
            "-",
        )
    )
    o, p = get(ours, "w6_ops"), get(peer, "w6_ops")
    rows.append(
        Row("W6", "contention increments/s", num(o), num(p), ratio(o, p, higher_is_better=True))
    )
    return rows
