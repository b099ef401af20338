"""Human durations: ``"24 hours"``, ``"5 minutes"``, ``"1.5s"``, ``"2h30m"``, numbers, timedeltas.

Hand-written because the grammar is tiny and an exact, typed error naming the bad
input matters more than the breadth of a general-purpose parser.  The grammar is
strict, so a typo is refused rather than read as some other length of time:

* one amount with an optional unit: ``"5"`` (seconds), ``"5s"``, ``"1.5 seconds"``,
  ``"10 ms"``, ``".5 min"``;
* or several amounts, *each with its unit*, largest unit first and each unit once,
  optionally separated by spaces or one comma: ``"2h30m"``, ``"1 day, 2 hours"``.

Amounts are ASCII decimals (``"5"``, ``"1.5"``, ``".5"``); units are those of
``_UNITS`` in any case.  Anything else (``"1.5.5s"``, ``"10 5"``, ``"5 s 5"``,
``"30m2h"``, ``"5s5s"``) raises :class:`~hotmesh_core.errors.InvalidDuration`.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import timedelta

from .errors import InvalidDuration

__all__ = ["MAX_DURATION", "Duration", "parse_duration"]

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

_NUMBER = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
# The whole text is one amount with an optional unit ...
_SINGLE = re.compile(rf"({_NUMBER})[ \t]*([a-z]+)?", re.ASCII)
# ... or a run of amounts that each carry a unit (separator: spaces, at most one comma).
_PART = re.compile(rf"({_NUMBER})[ \t]*([a-z]+)", re.ASCII)
_SEPARATOR = re.compile(r"[ \t]*,?[ \t]*", re.ASCII)


# Timers, timeouts and retention are stored as points in time; PostgreSQL's
# timestamps end in the year 294276, and nobody means a sleep longer than this.
MAX_DURATION = 100 * 365.25 * 86400.0


def parse_duration(value: Duration) -> float:
    """Return ``value`` in seconds; raise ``InvalidDuration`` naming a non-duration input.

    ``InvalidDuration`` is also a ``ValueError``, so older ``except ValueError``
    code keeps working.
    """
    if isinstance(value, bool):  # an int, but surely a mistake
        raise InvalidDuration(f"not a duration: {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int):
        if value < 0:
            raise InvalidDuration(f"a duration must be zero or positive, got {_shown(value)}")
        if value > MAX_DURATION:  # before float(): a huge int would overflow it
            raise InvalidDuration(f"a duration must be at most 100 years, got {_shown(value)}")
        seconds = float(value)
    elif isinstance(value, float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(str(value))  # a plain str: hashable for the cache
    else:
        raise InvalidDuration(f"not a duration: {_shown(value)}")
    if seconds < 0 or math.isnan(seconds):
        raise InvalidDuration(f"a duration must be zero or positive, got {_shown(value)}")
    if seconds > MAX_DURATION:  # also infinity: no database time can hold it
        raise InvalidDuration(f"a duration must be at most 100 years, got {_shown(value)}")
    return seconds


@functools.lru_cache(maxsize=1024)  # the same few strings, parsed on every replay
def _parse_text(text: str) -> float:
    stripped = text.strip().lower()
    if not stripped:
        raise InvalidDuration("not a duration: empty string")
    single = _SINGLE.fullmatch(stripped)
    if single is not None:
        amount, unit = single.group(1), single.group(2) or "s"
        return float(amount) * _unit(unit, text)
    total = 0.0
    previous = math.inf  # units must shrink: "2h30m", never "30m2h" or "5s5s"
    position = 0
    while True:
        part = _PART.match(stripped, position)
        if part is None:
            raise InvalidDuration(
                f"not a duration: {_shown(text)} (expected amounts like '5s', '1.5 hours' "
                "or '2h30m'; in a compound duration every amount needs its unit)"
            )
        size = _unit(part.group(2), text)
        if size >= previous:
            raise InvalidDuration(
                f"not a duration: {_shown(text)} (in a compound duration each unit comes once, "
                "largest first)"
            )
        previous = size
        total += float(part.group(1)) * size
        position = part.end()
        if position == len(stripped):
            return total
        separator = _SEPARATOR.match(stripped, position)
        assert separator is not None  # it matches the empty string too
        position = separator.end()


def _unit(name: str, text: str) -> float:
    try:
        return _UNITS[name]
    except KeyError:
        raise InvalidDuration(
            f"not a duration: {_shown(text)} (unknown unit {_shown(name)})"
        ) from None


def _shown(value: object) -> str:
    """The bad input for an error message, cut short: it may be huge or hostile (a
    4,300-digit int or a 100,000-deep list has no repr), so only simple values are
    quoted."""
    if isinstance(value, int) and not -(10**30) < value < 10**30:
        return "a huge integer"
    if value is None or isinstance(value, (str, int, float, timedelta)):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a value of type {type(value).__name__}"
