from datetime import timedelta

import pytest

from hotmesh_core import HotMeshError, InvalidDuration
from hotmesh_core.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24 hours", 86400),
        ("5 minutes", 300),
        ("1.5s", 1.5),
        ("1 second", 1),
        ("1.5 seconds", 1.5),
        ("2 hours", 7200),
        ("2 HOURS", 7200),
        ("500ms", 0.5),
        ("10 ms", 0.01),
        ("5", 5),
        ("5s", 5),
        ("2h30m", 9000),
        ("1 day, 2 hours", 93600),
        ("1d 2h 3m 4s 5ms", 93784.005),
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


@pytest.mark.parametrize(
    "bad",
    [
        "1.5.5s",  # two numbers run together
        "10 5",  # a second amount without its unit
        "5 s 5",  # a trailing bare number
        "1h 30",  # a compound amount without its unit
        "30m2h",  # units out of order
        "5s5s",  # a unit twice
        "5s,",  # a dangling separator
        ",5s",
        "5s,,5ms",
        "1.",
        "1e3",
        "5\n\ns",  # a newline inside
        "\u0665s",  # a non-ASCII digit (ARABIC-INDIC FIVE): float() would take it
    ],
)
def test_the_grammar_is_strict(bad: str) -> None:
    """One amount with an optional unit, or amounts that each carry a unit,
    largest first: everything else is refused, naming the text."""
    with pytest.raises(InvalidDuration, match="not a duration") as caught:
        parse_duration(bad)
    assert repr(bad) in str(caught.value)


@pytest.mark.parametrize(
    "bad",
    [
        "", "soon", True, None, [1], -3, float("inf"), float("nan"), 1e300, "6000w",
        pytest.param(10**5000, id="huge-int"), pytest.param(-(10**5000), id="huge-negative"),
        pytest.param("1" * 400 + "s", id="400-digits"),
    ],
)  # fmt: skip
def test_every_refusal_is_a_typed_hotmesh_error(bad: object) -> None:
    """InvalidDuration is a HotMeshError and, for older code, still a ValueError;
    a huge int is refused, not an OverflowError (nor a repr that has no end)."""
    with pytest.raises(InvalidDuration) as caught:
        parse_duration(bad)  # type: ignore[arg-type]
    assert isinstance(caught.value, HotMeshError) and isinstance(caught.value, ValueError)
    assert len(str(caught.value)) < 300


def test_a_deeply_nested_value_is_named_by_its_type() -> None:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(InvalidDuration, match="a value of type list"):
        parse_duration(value)  # type: ignore[arg-type]
