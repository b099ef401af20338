"""PostgreSQL reference backend: partitioned JSONB tables, SKIP LOCKED claims, LISTEN/NOTIFY.

Selected by configuration (``backend="postgres"``, a DSN, or nothing at all for
the embedded server), never imported by users.
"""

from .backend import PostgresBackend

__all__ = ["PostgresBackend"]
