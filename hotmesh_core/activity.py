"""Inside an activity: ``activity.info()`` says which attempt of what is running.

``from hotmesh_core import activity`` then, in an activity function (async or
sync), ``activity.info()``: the workflow id and name, the activity name, the
attempt (1 for the first), the task queue and the job's headers. Outside an
activity it raises ``RuntimeError``.
"""

from __future__ import annotations

import contextvars

from .interceptors import ActivityInfo

__all__ = ["ActivityInfo", "in_activity", "info"]

_current: contextvars.ContextVar[ActivityInfo | None] = contextvars.ContextVar(
    "hotmesh_activity", default=None
)


def info() -> ActivityInfo:
    """The activity attempt this code runs in."""
    current = _current.get()
    if current is None:
        raise RuntimeError("activity.info() is only available inside an activity")
    return current


def in_activity() -> bool:
    """Whether this code runs inside an activity."""
    return _current.get() is not None
