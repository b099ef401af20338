from __future__ import annotations

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reliability"):
        return
    skip = pytest.mark.skip(
        reason="slow reliability test: run it with `python -m pytest --reliability`"
    )
    for item in items:
        if item.get_closest_marker(RELIABILITY) is not None:
            item.add_marker(skip)
