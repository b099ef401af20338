"""The ``hotmesh`` command against runs it did not create itself, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from hotmesh_core import MemFlow, workflow
from hotmesh_core.cli import main
from hotmesh_core.models import ErrorInfo, Task
from hotmesh_postgres.testing import test_dsn


async def waits(signal_id: str) -> dict:
    entity = await workflow.entity()
    await entity.set({"waiting_for": signal_id})
    data = await workflow.wait_for(signal_id)
    await entity.merge({"got": data})
    return {"got": data}


async def sleeps() -> None:
    await workflow.sleep_for("1 hour")


async def prepare(app_id: str) -> None:
    async with MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn()) as mf:
        await mf.worker("cli", workflows=[waits, sleeps])
        await mf.workflow.start("order", "waits", "order-1", ["paid-1"], "cli")
        await mf.workflow.start("order", "sleeps", "order-2", [], "cli")
        await mf.workflow.start("user", "sleeps", "user-1", [], "cli")
        for workflow_id in ("order-1", "order-2", "user-1"):
            handle = await mf.workflow.get_handle(workflow_id)
            for _ in range(200):
                if await handle.status() == "running":
                    break
                await asyncio.sleep(0.02)


async def finish(app_id: str) -> object:
    async with MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn()) as mf:
        await mf.worker("cli", workflows=[waits, sleeps])
        return await (await mf.workflow.get_handle("order-1")).result(timeout=20)


@pytest.fixture
def app() -> Iterator[str]:
    app_id = f"cli{uuid.uuid4().hex[:10]}"
    asyncio.run(prepare(app_id))
    yield app_id
    asyncio.run(drop(app_id))


async def drop(app_id: str) -> None:
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn(), drop_on_close=True)
    await mf.shutdown()


def hotmesh(app: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["--app", app, "--backend", "postgres", "--dsn", test_dsn(), *args]
    )
    return result.exit_code, result.output


def test_runs_list_filters_and_json(app: str) -> None:
    code, out = hotmesh(app, "runs", "list")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "ID",
        "ENTITY",
        "WORKFLOW",
        "STATUS",
        "VERSION",
        "CREATED",
    ]
    assert {line.split()[0] for line in out.splitlines()[2:]} == {"order-1", "order-2", "user-1"}
    code, out = hotmesh(app, "runs", "list", "--entity", "order", "--workflow", "sleeps", "--json")
    assert code == 0
    assert [run["workflow_id"] for run in json.loads(out)] == ["order-2"]
    code, out = hotmesh(app, "runs", "list", "--status", "bogus")
    assert code == 2 and "bogus" in out


def test_show_export_signal_interrupt(app: str) -> None:
    code, out = hotmesh(app, "runs", "show", "order-1")
    assert code == 0
    assert "status    running" in out and '"waiting_for": "paid-1"' in out
    assert "wait" in out and "paid-1" in out
    code, out = hotmesh(app, "signal", "paid-1", '{"amount": 42}')
    assert (code, out.strip()) == (0, "delivered paid-1")
    assert asyncio.run(finish(app)) == {"got": {"amount": 42}}
    code, out = hotmesh(app, "runs", "export", "order-1", "--json")
    exported = json.loads(out)
    assert exported["status"] == "completed"
    assert [e["kind"] for e in exported["timeline"]] == ["entity", "wait", "entity"]
    assert [c["version"] for c in exported["entity_changes"]] == [1, 2]
    code, out = hotmesh(app, "runs", "interrupt", "order-2", "--reason", "cancelled by ops")
    assert (code, out.strip()) == (0, "interrupted order-2")
    code, out = hotmesh(app, "runs", "show", "order-2")
    assert "status    interrupted" in out and "cancelled by ops" in out


def test_clear_errors_and_exit_codes(app: str) -> None:
    code, out = hotmesh(app, "runs", "show", "missing")
    assert code == 1 and "no workflow with id 'missing'" in out
    code, out = hotmesh(app, "signal", "s", "not json")
    assert code == 2 and "DATA must be JSON" in out
    code, out = hotmesh("Bad App", "runs", "list")
    assert code == 1 and "invalid app_id" in out
    code, out = hotmesh(app, "signal", "nobody-waits", '"hello"')
    assert (code, out.strip()) == (0, "kept nobody-waits for its first waiter")


async def expired_and_interrupted(app_id: str) -> None:
    async with MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn()) as mf:
        handle = await mf.workflow.start("t", "never-served", "gone", [], "q", expire="0.2s")
        await handle.interrupt()  # finished (interrupted) with no worker needed
        await asyncio.sleep(0.3)


async def a_dead_letter(app_id: str) -> None:
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn())
    try:
        async with mf.backend.transaction() as tx:
            task_id = await tx.stream.enqueue(
                Task(queue="q", kind="run", job_id="broken-run", dimension="", name="wf")
            )
            assert task_id is not None
            await tx.stream.dead_letter(task_id, ErrorInfo("RuntimeError", "engine bug"))
    finally:
        await mf.shutdown()


def test_dead_letters_lists_tasks_set_aside() -> None:
    app_id = f"cli{uuid.uuid4().hex[:10]}"
    asyncio.run(a_dead_letter(app_id))
    code, out = hotmesh(app_id, "dead-letters")
    assert code == 0
    assert "broken-run" in out and "RuntimeError: engine bug" in out
    code, out = hotmesh(app_id, "dead-letters", "--workflow", "other", "--json")
    assert (code, json.loads(out)) == (0, [])
    asyncio.run(drop(app_id))


def test_db_maintain_removes_expired_jobs() -> None:
    app_id = f"cli{uuid.uuid4().hex[:10]}"
    asyncio.run(expired_and_interrupted(app_id))
    code, out = hotmesh(app_id, "runs", "list")
    assert code == 0 and "gone" in out
    code, out = hotmesh(app_id, "db", "maintain")
    assert (code, out.strip()) == (0, "removed 1 expired job")
    code, out = hotmesh(app_id, "runs", "show", "gone")
    assert code == 1 and "no workflow with id 'gone'" in out
    asyncio.run(drop(app_id))


def test_db_migrate_and_demo() -> None:
    app_id = f"cli{uuid.uuid4().hex[:10]}"
    code, out = hotmesh(app_id, "db", "migrate")
    assert code == 0 and "provisioned and up to date" in out
    code, out = hotmesh(app_id, "demo")
    assert code == 0
    assert json.loads(out) == {"name": "Ada", "greetings": ["Hello, Ada!"]}
    asyncio.run(drop(app_id))
