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

from .errors import HotMeshError
from .memflow import Client, MemFlow
from .serde import unstructure

T = TypeVar("T")


class Settings:
    def __init__(self, app: str, backend: str | None, dsn: str | None) -> None:
        self.app = app
        self.backend = backend
        self.dsn = dsn

    def client(self) -> AbstractAsyncContextManager[Client]:
        """The app's client, closed when the command is done with it."""
        options = {"dsn": self.dsn} if self.dsn else {}
        return MemFlow.Client(app_id=self.app, backend=self.backend, **options)


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
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


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

    options = {"dsn": settings.dsn} if settings.dsn else {}
    result = await demo_program.run(settings.app, settings.backend, **options)
    click.echo(json.dumps(result))


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


@runs.command("show")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@run_async
async def show_run(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """Status, entity and timeline of one run."""
    async with settings.client() as client:
        export = await (await client.workflow.get_handle(workflow_id)).export()
    if as_json:
        click.echo(json.dumps(export.to_dict(), indent=2, default=str))
        return
    click.echo(f"workflow  {export.workflow_id} ({export.workflow_name}, entity {export.entity!r})")
    click.echo(f"status    {export.status}")
    if export.error is not None:
        click.echo(f"error     {export.error.type_name}: {export.error.message}")
    elif export.status == "completed":
        click.echo(f"result    {short(export.result, 70)}")
    click.echo(f"entity    v{export.version} {json.dumps(export.context, indent=2)}")
    click.echo("")
    click.echo(
        table(
            ["#", "THREAD", "KIND", "NAME", "STATUS", "TRIES", "RESULT"],
            [
                [
                    e.index,
                    e.dimension or "main",
                    e.kind,
                    e.name,
                    e.status,
                    e.attempts,
                    short(e.error.message if e.error else e.result),
                ]
                for e in export.timeline
            ],
        )
    )


@runs.command("export")
@click.argument("workflow_id")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    default=True,
    show_default=True,
    help="Print JSON (the only format).",
)
@click.pass_obj
@run_async
async def export_run(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """The full audit timeline of one run, as JSON."""
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
    async with settings.client() as client:
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


def _add_operations() -> None:
    """Commands that live in modules of their own (safe changes, recovery)."""
    from .cli_operations import cancel, fork, replay, resume

    main.add_command(replay)
    for command in (cancel, resume, fork):
        runs.add_command(command)


_add_operations()
