"""Configuration: which backend, which app, validated identifiers.

Resolution order for the backend (first match wins): the ``backend=`` argument,
``HOTMESH_BACKEND``, ``postgres`` when a DSN is given (``dsn=``, ``HOTMESH_DSN``,
``DATABASE_URL``), otherwise ``postgres`` on an embedded server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from .errors import InvalidIdentifier

__all__ = ["choose_backend", "validate_app_id", "validate_name"]

APP_ID = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
# Queue, workflow, activity and entity names: printable, no control characters.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-/]{0,127}$")
WORKFLOW_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


def validate_app_id(app_id: object) -> str:
    if not isinstance(app_id, str) or not APP_ID.match(app_id):
        raise InvalidIdentifier(
            f"invalid app_id {app_id!r}: it must match {APP_ID.pattern} "
            "(lowercase letter first, then lowercase letters, digits, '_' or '-', at most 48)"
        )
    return app_id


def validate_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidIdentifier(
            f"invalid {what} {value!r}: letters, digits and _ . : - / only, at most 128"
        )
    return value


def _validate_id(value: object, what: str) -> str:
    """Workflow and signal ids: any text a user picks, short and printable."""
    if not isinstance(value, str) or not WORKFLOW_ID.match(value):
        raise InvalidIdentifier(
            f"invalid {what} {value!r}: 1 to 255 characters, no control characters"
        )
    return value


def validate_signal_id(value: object) -> str:
    return _validate_id(value, "signal id")


def validate_workflow_id(value: object) -> str:
    return _validate_id(value, "workflow_id")


def choose_backend(backend: str | None, env: Mapping[str, str] | None = None) -> str:
    """The ``backend=`` argument, else ``HOTMESH_BACKEND``, else ``postgres``.

    ``postgres`` itself then takes ``dsn=``, ``HOTMESH_DSN`` or ``DATABASE_URL``,
    or starts its embedded server when none is given.
    """
    environ = os.environ if env is None else env
    return backend or environ.get("HOTMESH_BACKEND") or "postgres"
