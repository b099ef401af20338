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

# Patterns are applied with fullmatch: "$" would also accept a trailing newline.
APP_ID = re.compile(r"[a-z][a-z0-9_-]{0,47}")
# Queue, workflow, activity and entity names: printable, no control characters.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-/]{0,127}")
# Ids are stored as text: no control characters and no lone surrogates (U+D800 to
# U+DFFF), which no UTF-8 database can hold.
WORKFLOW_ID = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,255}")

# An app id becomes a PostgreSQL schema: these already exist in every database
# (or are reserved by PostgreSQL) and must never receive HotMesh's tables.  They
# are refused on every backend alike, so an app id that works in tests works in
# production.
RESERVED_APP_IDS = frozenset({"public", "information_schema"})
RESERVED_APP_ID_PREFIX = "pg_"


def validate_app_id(app_id: object) -> str:
    """Return ``app_id`` if it may name an app (a PostgreSQL schema), else raise."""
    if not isinstance(app_id, str) or not APP_ID.fullmatch(app_id):
        raise InvalidIdentifier(
            f"invalid app_id {app_id!r}: it must match ^{APP_ID.pattern}$ "
            "(lowercase letter first, then lowercase letters, digits, '_' or '-', at most 48)"
        )
    if app_id in RESERVED_APP_IDS or app_id.startswith(RESERVED_APP_ID_PREFIX):
        raise InvalidIdentifier(
            f"invalid app_id {app_id!r}: 'public', 'information_schema' and names starting "
            "with 'pg_' are reserved by PostgreSQL"
        )
    return app_id


def validate_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidIdentifier(
            f"invalid {what} {value!r}: letters, digits and _ . : - / only, at most 128"
        )
    return value


def _validate_id(value: object, what: str) -> str:
    """Workflow and signal ids: any text a user picks, short and printable."""
    if not isinstance(value, str) or not WORKFLOW_ID.fullmatch(value):
        raise InvalidIdentifier(
            f"invalid {what} {value!r}: 1 to 255 characters, no control characters "
            "or lone surrogates"
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
