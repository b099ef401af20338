"""HotMesh for Python: durable workflows whose every run is backed by a versioned JSON entity.

Public names only; the engine's internals live in private-by-convention modules.
"""

from . import activity, workflow
from .client import WorkflowClient, WorkflowExport, WorkflowHandle
from .clock import SystemClock, VirtualClock
from .entity import Change, EntityPage, EntityRecord
from .entity_ops import EntityPathError
from .entity_query import InvalidQuery
from .errors import (
    ActivityFailed,
    BackendNotFound,
    BackendUnavailable,
    DuplicateWorkflow,
    HookDepthExceeded,
    HotMeshError,
    InvalidDuration,
    InvalidIdentifier,
    InvalidOption,
    MigrationRequired,
    NonDeterminismError,
    NotResumable,
    PermissionDenied,
    SerializationError,
    UnknownWorkflow,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowClosed,
    WorkflowFailed,
    WorkflowInterrupted,
    WorkflowNotFound,
)
from .memflow import Client, MemFlow
from .retry import RetryPolicy
from .transactions import TransactionNotSupported
from .worker import Worker

__all__ = [
    "ActivityFailed",
    "BackendNotFound",
    "BackendUnavailable",
    "Change",
    "Client",
    "DuplicateWorkflow",
    "EntityPage",
    "EntityPathError",
    "EntityRecord",
    "HookDepthExceeded",
    "HotMeshError",
    "InvalidDuration",
    "InvalidIdentifier",
    "InvalidOption",
    "InvalidQuery",
    "MemFlow",
    "MigrationRequired",
    "NonDeterminismError",
    "NotResumable",
    "PermissionDenied",
    "RetryPolicy",
    "SerializationError",
    "SystemClock",
    "TransactionNotSupported",
    "UnknownWorkflow",
    "VirtualClock",
    "WaitTimeout",
    "Worker",
    "WorkflowCancelled",
    "WorkflowClient",
    "WorkflowClosed",
    "WorkflowExport",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowInterrupted",
    "WorkflowNotFound",
    "activity",
    "workflow",
]

__version__ = "0.1.0"
