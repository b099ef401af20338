"""``hotmesh replay`` and ``hotmesh runs cancel|resume|fork``: safe code changes
and recovery, from the command line (registered on the ``hotmesh`` group)."""

from __future__ import annotations

import sys

import click

from .cli import Settings, run_async
from .errors import HotMeshError
from .fork import fork_run
from .replayer import ReplayResult, replay_export, replay_runs
from .worker_command import load_target

__all__ = ["cancel", "fork", "replay", "resume"]


@click.command()
@click.option(
    "--workflows",
    "spec",
    required=True,
    help="The current workflow code: MODULE[:ATTR], as `hotmesh worker` takes it.",
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
    workflows, _activities = load_target(spec)
    if workflows is None:
        raise HotMeshError(f"{spec!r} names no workflows to replay")
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
