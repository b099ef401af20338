"""Joining the caller's transaction (``connection=``): the backend-neutral part.

``mf.workflow.start(..., connection=session)``, ``mf.workflow.signal(...,
connection=...)`` and ``mf.entity.update(..., connection=...)`` run in the
caller's own database transaction, so that their rows and the caller's commit
together or not at all (the outbox pattern without an outbox). A backend that
can do this declares the ``join_transaction`` capability and implements
``Backend.joined(connection)``: a view of itself whose transactions are the
caller's. Any other backend refuses ``connection=`` with
:class:`TransactionNotSupported` before doing anything.
"""

from __future__ import annotations

from typing import Any

from .errors import HotMeshError
from .protocols import Backend

__all__ = ["JOIN_TRANSACTION", "TransactionNotSupported", "joined"]

JOIN_TRANSACTION = "join_transaction"


class TransactionNotSupported(HotMeshError, TypeError):
    """``connection=`` cannot be used here: this backend has no transactions of
    yours to join (memory), or the object given is not a connection it can
    join (or not in a usable transaction)."""


async def joined(backend: Backend, connection: Any) -> Backend:
    """``backend`` itself when ``connection`` is None, else its view in ``connection``."""
    if connection is None:
        return backend
    if JOIN_TRANSACTION not in backend.capabilities:
        raise TransactionNotSupported(
            f"the {backend.name!r} backend cannot join your transaction (connection=);"
            " it has no database of yours to share"
        )
    return await backend.joined(connection)
