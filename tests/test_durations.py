from datetime import timedelta

import pytest

from hotmesh_core.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24 hours", 86400),
        ("5 minutes", 300),
        ("1.5s", 1.5),
        ("1 second", 1),
        ("500ms", 0.5),
        ("2h30m", 9000),
        ("1 day, 2 hours", 93600),
        (" 3 ", 3),
        ("1w", 604800),
        (".5 min", 30),
        (7, 7),
        (0.25, 0.25),
        (timedelta(minutes=2), 120),
    ],
)
def test_parses(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    ["", "soon", "5 parsecs", "-1s", "1h-", True, None, [1], -3, float("inf"), 1e300, "6000w"],
)
def test_refuses_with_the_input_named(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]
