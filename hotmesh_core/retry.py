"""Retry policy of activities: how many executions, how long between them."""

from __future__ import annotations

from typing import Any

from attrs import define, field

from .durations import Duration, parse_duration

__all__ = ["RetryPolicy"]


def _names(errors: list[type[BaseException] | str]) -> list[str]:
    return [e if isinstance(e, str) else e.__name__ for e in errors]


@define(frozen=True)
class RetryPolicy:
    """``maximum_attempts`` counts executions (3 means at most 3 calls).

    The delay before try n+1 is
    ``min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval)``.
    Errors named in ``non_retryable`` (classes or class names) fail at once.
    """

    maximum_attempts: int = 5
    initial_interval: Duration = "1 second"
    backoff_coefficient: float = 2.0
    maximum_interval: Duration = "1 minute"
    non_retryable: list[type[BaseException] | str] = field(factory=list)

    def __attrs_post_init__(self) -> None:
        if self.maximum_attempts < 1:
            raise ValueError("RetryPolicy.maximum_attempts must be at least 1")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be at least 1")
        parse_duration(self.initial_interval)
        parse_duration(self.maximum_interval)

    def to_record(self) -> dict[str, Any]:
        """The policy as it travels with an activity task (plain JSON)."""
        return {
            "maximum_attempts": self.maximum_attempts,
            "initial_interval": parse_duration(self.initial_interval),
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": parse_duration(self.maximum_interval),
            "non_retryable": _names(self.non_retryable),
        }


def retry_delay(record: dict[str, Any], attempts: int, error_type: str) -> float | None:
    """Seconds before the next try, or None when no try is left or the error is final."""
    if error_type in record.get("non_retryable", ()) or attempts >= record["maximum_attempts"]:
        return None
    delay = record["initial_interval"] * record["backoff_coefficient"] ** (attempts - 1)
    return float(min(delay, record["maximum_interval"]))
