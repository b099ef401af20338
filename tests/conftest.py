from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["hotmesh_core.testing"]

RELIABILITY = "reliability"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability",
        action="store_true",
        default=False,
        help="also run the slow fault-injection tests of tests/reliability "
        "(SIGKILLed workers, server restarts, cut connections, 5,000 workflows)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{RELIABILITY}: a slow fault-injection test against a private PostgreSQL "
        "(run with --reliability)",
    )
    config.addinivalue_line("markers", "bench: the benchmark tier (python -m bench --quick)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reliability"):
        return
    skip = pytest.mark.skip(
        reason="slow reliability test: run it with `python -m pytest --reliability`"
    )
    for item in items:
        if item.get_closest_marker(RELIABILITY) is not None:
            item.add_marker(skip)


# -- tiers: what the README's test command runs, said first and summed up last --------

BENCH = "bench"
TIERS = {
    "unit": "tests/: the engine on both backends, the CLI, the worker command, the README",
    "conformance": "conformance/suite on every installed backend (one line per backend)",
    "quality": "ruff check, ruff format --check, mypy --strict, import contracts",
    "reliability": "tests/reliability: a private PostgreSQL, killed workers"
    " (the quick subset; --reliability runs all)",
    "docs": "the API reference: mkdocs build --strict (the docs extra)",
    "bench": "python -m bench --quick end to end, with the DBOS peer if the bench extra"
    ' is installed (marked bench; -m "not bench" leaves it out)',
}


def tier_of(nodeid: str, keywords: object) -> str:
    if nodeid.startswith("conformance/"):
        backend = nodeid.rpartition("[")[2].rstrip("]") if nodeid.endswith("]") else "?"
        return f"conformance [{backend.split('-')[0]}]"
    if nodeid.startswith("tests/test_quality.py"):
        return "quality"
    if nodeid.startswith("tests/test_docs.py"):
        return "docs"
    if nodeid.startswith("tests/reliability/"):
        return "reliability"
    if BENCH in keywords:  # type: ignore[operator]
        return "bench"
    return "unit"


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = ["hotmesh test tiers (summed up per tier at the end):"]
    lines += [f"  {name:<12} {what}" for name, what in TIERS.items()]
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    counts: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    outcomes = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
    for outcome in outcomes:  # a passing setup or teardown is in none of these
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if not nodeid:
                continue
            tier = tier_of(nodeid, getattr(report, "keywords", {}))
            tally = counts.setdefault(tier, {})
            tally[outcome] = tally.get(outcome, 0) + 1
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "nodeid", "") and hasattr(report, "duration"):
                tier = tier_of(report.nodeid, getattr(report, "keywords", {}))
                seconds[tier] = seconds.get(tier, 0.0) + float(report.duration)
    if not counts:
        return
    terminalreporter.section("hotmesh tiers")
    for tier in sorted(counts):
        tally = ", ".join(
            f"{counts[tier][outcome]} {outcome}" for outcome in outcomes if outcome in counts[tier]
        )
        terminalreporter.write_line(f"{tier:<24} {tally}  ({seconds.get(tier, 0.0):.0f} s)")
