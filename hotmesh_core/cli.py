"""The ``hotmesh`` command: run the demo, inspect and steer runs, migrate the database.

Built on click (composable commands, typed options, correct exit codes).  Every
command takes ``--app``, ``--backend`` and ``--dsn`` (or the same environment
variables as ``MemFlow.init``); ``--json`` prints machine-readable output.
Exit codes: 0 success, 1 a HotMesh error (unknown run, bad input...), 2 usage.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timezone
from functools import wraps
from typing import Any, Protocol, TypeVar, runtime_checkable

import click

from .config import choose_backend, validate_app_id
from .errors import HotMeshError
from .memflow import Client, MemFlow
from .plugins import resolve_backend
from .serde import unstructure

T = TypeVar("T")


MEMORY_NOTE = (
    "note: the memory backend lives inside one process: this command sees only what it"
    " did itself, never the runs of another process (use the postgres backend, the"
    " default, to inspect those)"
)


class Settings:
    def __init__(self, app: str, backend: str | None, dsn: str | None) -> None:
        self.app = app
        self.backend = backend
        self.dsn = dsn

    def options(self, *, provision: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"dsn": self.dsn} if self.dsn else {}
        if not provision:
            options["provision"] = False
        return options

    def backend_name(self) -> str:
        return choose_backend(self.backend)

    def client(self, *, provision: bool = False) -> AbstractAsyncContextManager[Client]:
        """The app's client, closed when the command is done with it.

        Only commands that set an app up (``db migrate``, ``demo``, ``worker``)
        provision it: any other, given an app that does not exist, fails with
        ``UnknownApp`` naming the apps there are, and creates nothing.
        """
        if self.backend_name() == "memory":
            click.echo(MEMORY_NOTE, err=True)
        return MemFlow.Client(
            app_id=self.app, backend=self.backend, **self.options(provision=provision)
        )


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command; HotMesh errors become a message and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except (HotMeshError, ValueError) as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)

    return wrapper


def stamp(seconds: float | None) -> str:
    """ISO 8601, UTC, to the second: ``2026-12-01T23:10:05Z``."""
    if seconds is None:
        return "-"
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def took(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = max(end - start, 0.0)
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group()
@click.option(
    "--app",
    envvar="HOTMESH_APP",
    default="demo",
    show_default=True,
    help="App id (one schema per app).",
)
@click.option(
    "--backend",
    envvar="HOTMESH_BACKEND",
    default=None,
    help="Backend name (default: postgres, embedded when no DSN).",
)
@click.option("--dsn", envvar="HOTMESH_DSN", default=None, help="PostgreSQL DSN.")
@click.pass_context
def main(ctx: click.Context, app: str, backend: str | None, dsn: str | None) -> None:
    """HotMesh: durable workflows backed by versioned JSON entities."""
    ctx.obj = Settings(app, backend, dsn)


@main.command()
@click.pass_obj
@run_async
async def demo(settings: Settings) -> None:
    """Run the README demo workflow (embedded PostgreSQL by default)."""
    from . import demo as demo_program

    options = settings.options(provision=True)
    result = await demo_program.run(settings.app, settings.backend, **options)
    click.echo(json.dumps(result))


@runtime_checkable
class ListsApps(Protocol):
    """A backend that can name the apps it holds (PostgreSQL: one schema each)."""

    async def list_apps(self) -> list[str]: ...


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@run_async
async def apps(settings: Settings, as_json: bool) -> None:
    """List the apps of this database (creates nothing)."""
    name = settings.backend_name()
    backend = resolve_backend(
        name, validate_app_id(settings.app), settings.options(provision=False)
    )
    if not isinstance(backend, ListsApps):
        if name == "memory":
            raise HotMeshError(MEMORY_NOTE.removeprefix("note: "))
        raise HotMeshError(f"backend {name!r} cannot list its apps")
    found = await backend.list_apps()
    if as_json:
        click.echo(json.dumps(found))
    elif found:
        click.echo("\n".join(found))
    else:
        click.echo("no apps here yet", err=True)


@main.group()
def runs() -> None:
    """Inspect and steer workflow runs."""


@runs.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "running", "completed", "failed", "cancelled", "interrupted"]),
)
@click.option("--entity", help="Only runs whose entity has this type.")
@click.option("--workflow", "workflow_name", help="Only runs of this workflow.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@run_async
async def list_runs(
    settings: Settings,
    status: str | None,
    entity: str | None,
    workflow_name: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    async with settings.client() as client:
        found = await client.workflow.list_runs(
            entity=entity, status=status, workflow_name=workflow_name, limit=limit
        )
    if as_json:
        click.echo(json.dumps(unstructure(found), indent=2))
        return
    click.echo(
        table(
            ["ID", "ENTITY", "WORKFLOW", "STATUS", "VERSION", "CREATED"],
            [
                [r.workflow_id, r.entity, r.workflow_name, r.status, r.version, stamp(r.created_at)]
                for r in found
            ],
        )
    )


def hook_labels(hooks: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each hook thread by its workflow's name (``note``, ``note #2``...), in start order."""
    labels: dict[str, str] = {}
    seen: dict[str, int] = {}
    for hook in sorted(hooks, key=lambda h: float(h.get("created_at") or 0.0)):
        name = str(hook["workflow_name"])
        seen[name] = seen.get(name, 0) + 1
        labels[str(hook["dimension"])] = name if seen[name] == 1 else f"{name} #{seen[name]}"
    return labels


@runs.command("show")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@run_async
async def show_run(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """Status, times, error, entity, hooks and timeline of one run (times in UTC)."""
    from .presence import waiting_reasons

    async with settings.client() as client:
        export = await (await client.workflow.get_handle(workflow_id)).export()
        waiting = [] if as_json else await waiting_reasons(client.backend, export)
    if as_json:
        click.echo(json.dumps(export.to_dict(), indent=2, default=str))
        return
    labels = hook_labels(export.hooks)

    def thread(dimension: str) -> str:
        return labels.get(dimension, dimension) if dimension else "main"

    click.echo(
        f"workflow  {export.workflow_id} ({export.workflow_name}, entity {export.entity!r},"
        f" queue {export.task_queue!r})"
    )
    click.echo(f"status    {export.status}")
    if export.error is not None:
        click.echo(f"error     {export.error.type_name}: {export.error.message}")
    elif export.status == "completed":
        click.echo(f"result    {short(export.result, 70)}")
    for reason in waiting:
        click.echo(f"waiting   {reason}")
    click.echo(f"started   {stamp(export.created_at)}")
    if export.finished_at is not None:
        click.echo(
            f"finished  {stamp(export.finished_at)}"
            f" (after {took(export.created_at, export.finished_at)})"
        )
    click.echo(f"entity    v{export.version} {json.dumps(export.context, indent=2)}")
    if export.hooks:
        click.echo("")
        click.echo(
            table(
                ["HOOK", "STATUS", "STARTED", "TOOK", "ERROR", "ID"],
                [
                    [
                        labels[str(h["dimension"])],
                        h["status"],
                        stamp(h.get("created_at")),
                        took(h.get("created_at"), h.get("finished_at")),
                        short(f"{h['error']['type_name']}: {h['error']['message']}", 60)
                        if h.get("error")
                        else "-",
                        h["dimension"],
                    ]
                    for h in export.hooks
                ],
            )
        )
    click.echo("")
    click.echo(
        table(
            ["#", "THREAD", "KIND", "NAME", "STATUS", "TRIES", "STARTED", "TOOK", "RESULT"],
            [
                [
                    e.index,
                    thread(e.dimension),
                    e.kind,
                    e.name,
                    e.status,
                    e.attempts,
                    stamp(e.started_at),
                    took(e.started_at, e.finished_at),
                    short(f"{e.error.type_name}: {e.error.message}" if e.error else e.result),
                ]
                for e in export.timeline
            ],
        )
    )


@runs.command("export")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, hidden=True)  # accepted: JSON is the format
@click.pass_obj
@run_async
async def export_run(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """The full audit timeline of one run, as JSON (times: epoch seconds, UTC)."""
    async with settings.client() as client:
        export = await (await client.workflow.get_handle(workflow_id)).export()
    click.echo(json.dumps(export.to_dict(), indent=2, default=str))


@runs.command("interrupt")
@click.argument("workflow_id")
@click.option("--reason", default=None, help="Why (shown in the run's error).")
@click.pass_obj
@run_async
async def interrupt_run(settings: Settings, workflow_id: str, reason: str | None) -> None:
    """Interrupt a run and its children."""
    async with settings.client() as client:
        done = await (await client.workflow.get_handle(workflow_id)).interrupt(reason)
    click.echo(f"interrupted {workflow_id}" if done else f"{workflow_id} had already finished")


@main.command()
@click.argument("signal_id")
@click.argument("data", default="null")
@click.pass_obj
@run_async
async def signal(settings: Settings, signal_id: str, data: str) -> None:
    """Send a signal; DATA is JSON (default null)."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as error:
        raise click.BadParameter(
            f"DATA must be JSON ({error}); quote strings: '\"text\"'"
        ) from None
    async with settings.client() as client:
        taken = await client.workflow.signal(signal_id, payload)
    click.echo(f"delivered {signal_id}" if taken else f"kept {signal_id} for its first waiter")


@main.command("dead-letters")
@click.option("--workflow", "workflow_id", help="Only the tasks of this run.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@run_async
async def dead_letters(
    settings: Settings, workflow_id: str | None, limit: int, as_json: bool
) -> None:
    """Tasks the engine set aside after failing on them too often, newest first."""
    async with settings.client() as client:
        found = await client.workflow.dead_letters(workflow_id, limit=limit)
    if as_json:
        click.echo(json.dumps(unstructure(found), indent=2))
        return
    click.echo(
        table(
            ["RUN", "KIND", "NAME", "ATTEMPTS", "AT", "ERROR"],
            [
                [
                    d.task.job_id,
                    d.task.kind,
                    d.task.name,
                    d.task.attempts,
                    stamp(d.created_at),
                    short(f"{d.error.type_name}: {d.error.message}", 60),
                ]
                for d in found
            ],
        )
    )


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.pass_obj
@run_async
async def migrate(settings: Settings) -> None:
    """Create or migrate the app's schema (also done by every init, if its role may)."""
    async with settings.client(provision=True) as client:
        name = client.backend.name
    click.echo(f"app {settings.app!r} is provisioned and up to date on {name!r}")


@db.command()
@click.pass_obj
@run_async
async def maintain(settings: Settings) -> None:
    """Run one maintenance pass now: remove expired finished jobs (workers do it each minute).

    Only the app's owner may make and drop partitions: with least-privilege
    worker roles, run this with the owner's DSN on a schedule (hourly).
    """
    async with settings.client() as client:
        removed = await client.backend.maintain()
    click.echo(f"removed {removed} expired job{'' if removed == 1 else 's'}")


@runtime_checkable
class GrantsRoles(Protocol):
    """A backend with database roles (PostgreSQL); the memory backend has none."""

    async def grant(self, role: str, *, read_only: bool = False) -> list[str]: ...


@db.command()
@click.option("--role", required=True, help="The role to give access to this app.")
@click.option(
    "--read-only", is_flag=True, help="Only reading (runs list/show/export), not a worker."
)
@click.option("--show", is_flag=True, help="Print the statements run.")
@click.pass_obj
@run_async
async def grant(settings: Settings, role: str, read_only: bool, show: bool) -> None:
    """Give ROLE what a worker of this app needs, and nothing on other apps.

    Run with the owner's DSN. Covers the tables that later migrations and
    maintenance create (default privileges); see docs/least-privilege.md.
    """
    async with settings.client() as client:
        backend = client.backend
        if not isinstance(backend, GrantsRoles):
            raise HotMeshError(f"backend {backend.name!r} has no database roles to grant")
        statements = await backend.grant(role, read_only=read_only)
    if show:
        click.echo(";\n".join(statements) + ";")
    kind = "read-only" if read_only else "worker"
    click.echo(f"role {role!r} has {kind} access to app {settings.app!r}")


def _add_commands() -> None:
    """Commands that live in modules of their own: safe changes and recovery,
    the deployable worker, the web dashboard."""
    from .cli_operations import cancel, fork, replay, resume
    from .ui.command import ui_command
    from .worker_command import worker_command

    for command in (replay, worker_command, ui_command):
        main.add_command(command)
    for command in (cancel, resume, fork):
        runs.add_command(command)


_add_commands()
