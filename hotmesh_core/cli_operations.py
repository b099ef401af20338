"""``hotmesh replay`` and ``hotmesh runs cancel|resume|fork``: safe code changes
and recovery, from the command line (registered on the ``hotmesh`` group)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click

from .cli import Settings, run_async
from .fork import fork_run
from .replayer import ReplayResult, replay_export, replay_runs

__all__ = ["cancel", "fork", "load_functions", "replay", "resume"]


def load_functions(spec: str) -> list[Callable[..., Any]] | Mapping[str, Callable[..., Any]]:
    """The workflow functions named by ``module:attr``: a function, a list of
    them, or a ``{name: function}`` mapping (as ``mf.worker(workflows=...)``
    takes). The current directory is importable, as with ``python -m``."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise click.BadParameter(f"{spec!r} is not module:attribute", param_hint="--workflows")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise click.BadParameter(f"module {module_name!r} has no {attribute!r}") from None
    if isinstance(found, Mapping):
        return found
    if callable(found):
        return [found]
    if isinstance(found, (list, tuple)):
        return list(found)
    raise click.BadParameter(
        f"{spec} is a {type(found).__name__}: give a function, a list or a dict of them"
    )


@click.command()
@click.option(
    "--workflows",
    "spec",
    required=True,
    help="module:attr of the current workflow code (a function, list or dict).",
)
@click.option("--id", "ids", multiple=True, help="Replay this run (repeatable).")
@click.option(
    "--status",
    type=click.Choice(["pending", "running", "completed", "failed", "cancelled", "interrupted"]),
    help="Replay the runs with this status (default, with no --id or --file: running).",
)
@click.option("--workflow", "workflow_name", help="Only runs of this workflow.")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Replay an exported run (`hotmesh runs export ID > run.json`); repeatable; no database.",
)
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.pass_obj
@run_async
async def replay(
    settings: Settings,
    spec: str,
    ids: tuple[str, ...],
    status: str | None,
    workflow_name: str | None,
    files: tuple[str, ...],
    limit: int,
) -> None:
    """Replay recorded histories against the current code; exit 1 if any disagree.

    Nothing runs and nothing is written: each history is re-run on the replay
    engine, and the first index where code and history disagree is printed
    with both calls. Run it in CI before deploying a workflow change.
    """
    workflows = load_functions(spec)
    results: list[ReplayResult] = [await replay_export(workflows, path) for path in files]
    if not (ids or status or files):
        status = "running"  # what a deploy of this code would meet
    if ids or status:
        async with settings.client() as client:
            results += await replay_runs(
                client.backend,
                workflows,
                ids=ids,
                status=status,
                workflow_name=workflow_name,
                limit=limit,
            )
    for result in results:
        click.echo(result.describe())
    bad = [r for r in results if not r.ok]
    click.echo(f"{len(results)} replayed, {len(results) - len(bad)} ok, {len(bad)} not")
    if bad:
        sys.exit(1)


@click.command()
@click.argument("workflow_id")
@click.option("--reason", default=None, help="Why (shown in the error the run ends with).")
@click.pass_obj
@run_async
async def cancel(settings: Settings, workflow_id: str, reason: str | None) -> None:
    """Ask a run to stop cooperatively (CancelledError at its current await)."""
    async with settings.client() as client:
        handle = await client.workflow.get_handle(workflow_id)
        asked = await handle.cancel(reason)
    click.echo(f"cancel requested for {workflow_id}" if asked else f"{workflow_id} had finished")


@click.command()
@click.argument("workflow_id")
@click.pass_obj
@run_async
async def resume(settings: Settings, workflow_id: str) -> None:
    """Carry on a failed run under the code deployed now."""
    async with settings.client() as client:
        handle = await client.workflow.get_handle(workflow_id)
        await handle.resume()
    click.echo(f"resumed {workflow_id}")


@click.command()
@click.argument("workflow_id")
@click.option(
    "--from-step",
    "from_step",
    required=True,
    type=click.IntRange(0),
    help="Keep the history before this index; the new run goes on from there.",
)
@click.option("--id", "new_id", default=None, help="Id of the new run (default: derived).")
@click.pass_obj
@run_async
async def fork(settings: Settings, workflow_id: str, from_step: int, new_id: str | None) -> None:
    """Start a new run with the history of WORKFLOW_ID up to a step."""
    async with settings.client() as client:
        handle = await fork_run(client.backend, workflow_id, from_step, new_id)
    click.echo(f"forked {workflow_id} at step {from_step} as {handle.workflow_id}")
