"""Human durations: ``"24 hours"``, ``"5 minutes"``, ``"1.5s"``, ``"2h30m"``, numbers, timedeltas.

Hand-written because the grammar is tiny and an exact, typed error naming the bad
input matters more than the breadth of a general-purpose parser.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

__all__ = ["Duration", "parse_duration"]

Duration = str | int | float | timedelta  # a runtime alias: Python >= 3.10

_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 604800.0),
):
    for _name in _names:
        _UNITS[_name] = _seconds

_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]+)?\s*,?")


# Timers, timeouts and retention are stored as points in time; PostgreSQL's
# timestamps end in the year 294276, and nobody means a sleep longer than this.
MAX_DURATION = 100 * 365.25 * 86400.0


def parse_duration(value: Duration) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` naming a non-duration input."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError(f"not a duration: {value!r}")
    if seconds < 0 or seconds != seconds:  # negative or NaN
        raise ValueError(f"a duration must be zero or positive, got {value!r}")
    if seconds > MAX_DURATION:  # also infinity: no database time can hold it
        raise ValueError(f"a duration must be at most 100 years, got {value!r}")
    return seconds


@functools.lru_cache(maxsize=1024)  # the same few strings, parsed on every replay
def _parse_text(text: str) -> float:
    stripped = text.strip().lower()
    if not stripped:
        raise ValueError("not a duration: empty string")
    total = 0.0
    position = 0
    while position < len(stripped):
        match = _PART.match(stripped, position)
        if match is None or match.end() == position:
            raise ValueError(f"not a duration: {text!r}")
        amount, unit = match.group(1), match.group(2)
        if unit is None:
            unit = "s"
        if unit not in _UNITS:
            raise ValueError(f"not a duration: {text!r} (unknown unit {unit!r})")
        total += float(amount) * _UNITS[unit]
        position = match.end()
    return total
