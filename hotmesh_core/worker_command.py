"""``hotmesh worker MODULE[:ATTR]``: a worker process to deploy.

``MODULE[:ATTR]`` names what the worker serves (the current directory is on the
import path, as for ``python -m``). ``ATTR`` (or the module itself, without
``:ATTR``) is one of:

- a mapping with the keys ``workflows`` and/or ``activities`` (each a list of
  functions, or a ``{name: function}`` mapping, as ``MemFlow.worker`` takes);
- an object (a module, a class, a namespace) with the attributes ``workflows``
  and/or ``activities``;
- a list or tuple of functions: workflows, with no activities.

SIGTERM or SIGINT stops claiming; the tasks in hand have ``--grace`` seconds to
finish, then the rest are handed back at once (their leases are released, so
another worker takes them without waiting the lease out) and the process exits
with status 0. A second signal hands back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from .errors import HotMeshError
from .memflow import MemFlow
from .worker import Functions, Worker, registry

__all__ = ["InvalidWorkerTarget", "load_target", "serve", "worker_command"]

log = logging.getLogger("hotmesh.worker_command")


class InvalidWorkerTarget(HotMeshError, ValueError):
    """``MODULE[:ATTR]`` does not name workflows and activities to serve."""


def _functions(value: Any, what: str, target: str) -> Functions | None:
    if value is None:
        return None
    if isinstance(value, Mapping) or (
        isinstance(value, Iterable) and not isinstance(value, (str, bytes))
    ):
        return value
    raise InvalidWorkerTarget(
        f"{target}: {what} must be a list of functions or a {{name: function}} mapping,"
        f" not {type(value).__name__}"
    )


def load_target(target: str) -> tuple[Functions | None, Functions | None]:
    """The workflows and activities ``MODULE[:ATTR]`` names (see the module's doc)."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise InvalidWorkerTarget(f"{target!r}: expected MODULE or MODULE:ATTR")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InvalidWorkerTarget(f"{target!r}: cannot import {module_name!r}: {error}") from None
    value: Any = module
    for part in attr.split(".") if attr else []:
        try:
            value = getattr(value, part)
        except AttributeError:
            raise InvalidWorkerTarget(f"{target!r}: {module_name} has no {attr!r}") from None
    if isinstance(value, Mapping):
        unknown = set(value) - {"workflows", "activities"}
        if unknown:
            raise InvalidWorkerTarget(
                f"{target!r}: unknown keys {sorted(unknown)} (expected workflows, activities)"
            )
        workflows, activities = value.get("workflows"), value.get("activities")
    elif isinstance(value, (list, tuple)):
        workflows, activities = value, None
    else:
        workflows = getattr(value, "workflows", None)
        activities = getattr(value, "activities", None)
    workflows = _functions(workflows, "workflows", target)
    activities = _functions(activities, "activities", target)
    if not registry(workflows, "workflow") and not registry(activities, "activity"):
        raise InvalidWorkerTarget(
            f"{target!r} names no workflows and no activities: give a list of workflow"
            " functions, or a mapping / module with `workflows` and `activities`"
        )
    return workflows, activities


async def _stop(workers: list[Worker], grace: float, again: asyncio.Event) -> int:
    """Stop claiming; wait up to ``grace`` s (or a second signal); hand back the rest."""
    draining: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(*(w.stop(drain=True) for w in workers))
    )
    hurry: asyncio.Future[Any] = asyncio.ensure_future(again.wait())
    await asyncio.wait({draining, hurry}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    handed_back = 0
    if not draining.done():
        await asyncio.gather(*(w.stop(drain=False) for w in workers))
        with contextlib.suppress(asyncio.CancelledError):
            await draining
        for worker in workers:
            async with worker.backend.transaction(single=True) as tx:
                handed_back += await tx.stream.release_leases(worker.task_queue, owner=worker.id)
    return handed_back


async def serve(
    *,
    target: str,
    app: str,
    backend: str | None,
    dsn: str | None,
    queue: str,
    concurrency: int,
    grace: float,
    worker_id: str | None = None,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Run the worker until SIGTERM or SIGINT; return the exit status (0)."""
    workflows, activities = load_target(target)
    options = {"dsn": dsn} if dsn else {}
    loop = asyncio.get_running_loop()
    signalled, again = asyncio.Event(), asyncio.Event()

    def on_signal(signum: int) -> None:
        if signalled.is_set():
            log.warning(
                "second %s: handing back the tasks in hand now", signal.Signals(signum).name
            )
            again.set()
        else:
            log.info(
                "%s: stopping; the tasks in hand have %.0f s to finish",
                signal.Signals(signum).name,
                grace,
            )
            signalled.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    mf = await MemFlow.init(app_id=app, backend=backend, **options)
    try:
        if mf.backend.name == "memory":
            log.warning(
                "the memory backend lives in this process only: no client elsewhere can start"
                " work for this worker"
            )
        worker = await mf.worker(
            queue,
            workflows=workflows,
            activities=activities,
            concurrency=concurrency,
            worker_id=worker_id,
        )
        served = (
            f"worker {worker.id} serves queue {queue!r} of app {app!r} on {mf.backend.name}"
            f" (workflows: {', '.join(sorted(worker.workflows)) or 'none'};"
            f" activities: {', '.join(sorted(worker.activities)) or 'none'};"
            f" concurrency {concurrency})"
        )
        log.debug("%s", served)
        if ready is not None:
            ready(served)
        await signalled.wait()
        handed_back = await _stop([worker], grace, again)
        mf.workers.clear()
        if handed_back:
            log.warning("handed back %d unfinished task(s) to the queue", handed_back)
        log.info("worker %s stopped", worker.id)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await mf.shutdown()
    return 0


@click.command("worker")
@click.argument("target")
@click.option("--queue", "-q", envvar="HOTMESH_QUEUE", required=True, help="Task queue to serve.")
@click.option(
    "--concurrency", default=10, show_default=True, type=click.IntRange(1), help="Tasks at once."
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds the tasks in hand have to finish after SIGTERM/SIGINT.",
)
@click.option(
    "--worker-id",
    envvar="HOTMESH_WORKER_ID",
    default=None,
    help="Stable id (a pod or host name): a restart takes back its tasks at once.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Level of the hotmesh.* loggers (when logging is not configured otherwise).",
)
@click.pass_obj
def worker_command(
    settings: Any,
    target: str,
    queue: str,
    concurrency: int,
    grace: float,
    worker_id: str | None,
    log_level: str,
) -> None:
    """Serve TARGET's workflows and activities on a queue until SIGTERM/SIGINT.

    TARGET is MODULE:ATTR (or MODULE): a list of workflow functions, or a
    mapping / module / object with `workflows` and `activities`.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hotmesh").setLevel(log_level.upper())
    try:
        status = asyncio.run(
            serve(
                target=target,
                app=settings.app,
                backend=settings.backend,
                dsn=settings.dsn,
                queue=queue,
                concurrency=concurrency,
                grace=grace,
                worker_id=worker_id,
                ready=lambda line: click.echo(line, err=True),
            )
        )
    except (HotMeshError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    sys.exit(status)
