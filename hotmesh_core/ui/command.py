"""The ``hotmesh ui`` command (registered in :mod:`hotmesh_core.cli`).

Imports only click at load time: the web stack (Starlette, Jinja2, uvicorn,
the optional extra ``ui``) is imported when the command runs, so every other
``hotmesh`` command starts as fast without it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

__all__ = ["serve", "ui_command"]


async def serve(
    *,
    app_id: str,
    backend: str | None,
    dsn: str | None,
    host: str,
    port: int,
    allow_actions: bool,
    refresh: float,
    ready: Any = None,
) -> None:
    """Open the app's client and serve the dashboard until interrupted."""
    import uvicorn

    from ..memflow import MemFlow
    from .app import LOCAL_HOSTS, create_app

    options = {"dsn": dsn} if dsn else {}
    async with MemFlow.Client(app_id=app_id, backend=backend, **options) as client:
        hosts = ["*"] if host in ("0.0.0.0", "::", "") else sorted({host, *LOCAL_HOSTS})
        app = create_app(client, allow_actions=allow_actions, refresh=refresh, allowed_hosts=hosts)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        shown = f"[{host}]" if ":" in host else host
        click.echo(
            f"HotMesh dashboard for app {app_id!r} ({client.backend.name}):"
            f" http://{shown}:{port}/runs"
            + ("  [actions allowed]" if allow_actions else "  [read-only]")
        )
        if allow_actions and host not in LOCAL_HOSTS:
            click.echo(
                f"warning: actions are allowed to anyone who can reach {shown}:{port}",
                err=True,
            )
        if ready is not None:
            ready()
        await server.serve()


@click.command("ui")
@click.option("--app", "app_id", default=None, help="App id (default: the hotmesh --app).")
@click.option("--backend", default=None, help="Backend name (default: the hotmesh --backend).")
@click.option("--dsn", default=None, help="PostgreSQL DSN (default: the hotmesh --dsn).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Allow signal, interrupt, cancel and resume from the browser (POST + CSRF token).",
)
@click.option(
    "--refresh",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.5, 3600),
    help="Seconds between live refreshes of open pages.",
)
@click.pass_context
def ui_command(
    ctx: click.Context,
    app_id: str | None,
    backend: str | None,
    dsn: str | None,
    host: str,
    port: int,
    allow_actions: bool,
    refresh: float,
) -> None:
    """Serve the web dashboard: runs, each run's waterfall, its memory, the queues."""
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        click.echo(
            f"error: the dashboard needs the extra 'ui' ({error.name} is missing):"
            ' pip install "hotmesh[ui]"',
            err=True,
        )
        sys.exit(1)
    from ..errors import HotMeshError

    settings = ctx.obj
    try:
        asyncio.run(
            serve(
                app_id=app_id or getattr(settings, "app", None) or "demo",
                backend=backend or getattr(settings, "backend", None),
                dsn=dsn or getattr(settings, "dsn", None),
                host=host,
                port=port,
                allow_actions=allow_actions,
                refresh=refresh,
            )
        )
    except (HotMeshError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
