"""The public error hierarchy.

Every error a user can see derives from :class:`HotMeshError`, so one ``except``
clause catches everything the engine raises on purpose.  Errors that cross a
process boundary (an activity failing on another worker, a child job failing)
travel as ``(type name, message, traceback text)`` and are rebuilt here.
"""

from __future__ import annotations

__all__ = [
    "ActivityFailed",
    "BackendNotFound",
    "BackendUnavailable",
    "DuplicateWorkflow",
    "HookDepthExceeded",
    "HotMeshError",
    "InvalidDuration",
    "InvalidIdentifier",
    "MigrationRequired",
    "NonDeterminismError",
    "NotResumable",
    "PermissionDenied",
    "SerializationError",
    "UnknownApp",
    "UnknownWorkflow",
    "WaitTimeout",
    "WorkflowCancelled",
    "WorkflowClosed",
    "WorkflowFailed",
    "WorkflowInterrupted",
    "WorkflowNotFound",
]


class HotMeshError(Exception):
    """Base of every error HotMesh raises on purpose."""


class BackendUnavailable(HotMeshError):
    """The backend could not be reached, or dropped the connection mid-way (a
    database restart, a network cut). The operation did not complete (if the
    connection broke while committing, it may have); every HotMesh operation is
    safe to try again: steps are recorded once and starts are idempotent."""


class BackendNotFound(HotMeshError):
    """No installed backend answers to the requested name."""

    def __init__(self, name: str, installed: list[str]) -> None:
        self.name = name
        self.installed = sorted(installed)
        listing = ", ".join(self.installed) or "none"
        super().__init__(f"no HotMesh backend named {name!r}; installed backends: {listing}")


class InvalidIdentifier(HotMeshError, ValueError):
    """An identifier (app id, queue, workflow id...) does not have the allowed shape."""


class SerializationError(HotMeshError, TypeError):
    """A value that must be stored is not JSON-serializable; nothing was stored."""


class WorkflowNotFound(HotMeshError, LookupError):
    """No job exists with the given workflow id."""


class UnknownWorkflow(HotMeshError, LookupError):
    """A worker was handed a workflow or activity name it has not registered."""


class DuplicateWorkflow(HotMeshError):
    """A strict start found a job with the same workflow id already present."""


class WorkflowClosed(HotMeshError):
    """A hook was sent to a job that has finished and is not persistent."""


class NonDeterminismError(HotMeshError):
    """The workflow issued a different command at an index than its history holds."""


class WaitTimeout(HotMeshError, TimeoutError):
    """``workflow.wait_for`` (or ``exec_hook``) timed out before its signal arrived."""


class RemoteError(HotMeshError):
    """An error raised somewhere else (another worker, another job), rebuilt locally.

    ``type_name`` is the class name of the original exception, ``message`` its text
    and ``traceback`` the formatted traceback captured where it was raised.
    """

    def __init__(self, message: str, *, type_name: str = "", traceback: str = "") -> None:
        self.message = message
        self.type_name = type_name or type(self).__name__
        self.traceback = traceback
        super().__init__(f"{self.type_name}: {message}" if type_name else message)


class ActivityFailed(RemoteError):
    """An activity failed on its last attempt (or with a non-retryable error)."""


class WorkflowFailed(RemoteError):
    """A workflow (job, child or hook) failed; carries the remote error."""


class WorkflowInterrupted(RemoteError):
    """The job was interrupted (cancelled) before it finished."""


class WorkflowCancelled(RemoteError):
    """The job was cancelled (``handle.cancel()``): the ``asyncio.CancelledError``
    raised at its await was not caught, or was raised again after cleanup."""


class NotResumable(HotMeshError):
    """``handle.resume()`` on a job that is not failed (only a failed job resumes)."""


class InvalidDuration(HotMeshError, ValueError):
    """A duration (sleep, timeout, expire, retry interval) is not one HotMesh reads:
    bad text, a negative or non-finite number, or longer than 100 years.  Also a
    ``ValueError``, which is what durations raised before this class existed."""


class InvalidOption(HotMeshError, ValueError):
    """A backend option passed to ``MemFlow.init`` (``pool_size``,
    ``pool_timeout``, ``connect_timeout``...) is not a value it takes; the
    message names the option, what it takes and what it got."""


class HookDepthExceeded(HotMeshError):
    """A hook started a hook nested deeper than ``workflow.MAX_HOOK_DEPTH``.

    Raised inside the workflow at the ``hook``/``exec_hook`` call, before anything
    is stored; uncaught, it fails that hook like any error in workflow code.  It
    stops a hook that starts itself from spawning threads without end.
    """


class PermissionDenied(HotMeshError, PermissionError):
    """The connected role may not do this on the app's schema (SQLSTATE 42501).

    Raised instead of psycopg's ``InsufficientPrivilege`` so that a worker or
    client of one app that reaches for another app (or lacks a grant) gets a
    HotMesh error that names the role, the app and who can fix it, and so that
    callers catching ``HotMeshError`` see it. ``role`` and ``app`` say which.
    """

    def __init__(self, message: str, *, role: str, app: str) -> None:
        self.role = role
        self.app = app
        super().__init__(message)


class MigrationRequired(PermissionDenied):
    """The app's schema is missing or behind this HotMesh, and the connected
    role may not provision it: the owner must run ``hotmesh db migrate``."""


class UnknownApp(HotMeshError, LookupError):
    """An app asked for without provisioning it (``hotmesh runs list`` and the
    other read-only commands) does not exist; ``apps`` are those that do."""

    def __init__(self, app: str, apps: list[str]) -> None:
        self.app = app
        self.apps = sorted(apps)
        listing = ", ".join(self.apps) or "none"
        super().__init__(
            f"no app {app!r}; apps here: {listing} (an app is created by its first"
            " MemFlow.init or worker, or `hotmesh --app NAME db migrate`)"
        )
