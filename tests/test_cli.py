"""The ``hotmesh`` command against runs it did not create itself, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from hotmesh_core import MemFlow, WorkflowFailed, workflow
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


# -- traps: read-only commands never provision; apps; memory; show; export ----------


def schema_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name]).fetchone()
    return row is not None


@pytest.mark.parametrize(
    "command",
    [
        ["runs", "list"],
        ["runs", "show", "order-1"],
        ["runs", "export", "order-1"],
        ["runs", "interrupt", "order-1"],
        ["dead-letters"],
        ["signal", "paid-1"],
        ["db", "maintain"],
    ],
)
def test_commands_on_a_misspelt_app_create_nothing(app: str, command: list[str]) -> None:
    typo = f"typo{uuid.uuid4().hex[:8]}"
    code, out = hotmesh(typo, *command)
    assert code == 1
    assert f"no app {typo!r}; apps here: " in out
    assert app in out.split("apps here: ")[1]  # the real app is named
    assert not schema_exists(typo)


def test_apps_lists_the_apps_and_creates_none(app: str) -> None:
    typo = f"typo{uuid.uuid4().hex[:8]}"
    code, out = hotmesh(typo, "apps")
    assert code == 0 and app in out.split()
    code, out = hotmesh(typo, "apps", "--json")
    assert code == 0 and app in json.loads(out)
    assert not schema_exists(typo)


def test_the_memory_backend_says_it_is_per_process() -> None:
    result = CliRunner().invoke(main, ["--app", "somewhere", "--backend", "memory", "runs", "list"])
    assert result.exit_code == 0
    assert "memory backend lives inside one process" in result.output
    result = CliRunner().invoke(main, ["--backend", "memory", "apps"])
    assert result.exit_code == 1 and "memory backend lives inside one process" in result.output


async def note(text: str) -> None:
    entity = await workflow.entity()
    await entity.append("notes", text)


async def refuses(amount: int) -> None:
    raise ValueError(f"amount {amount} is over the limit")


async def hooks_and_failures(app_id: str) -> None:
    async with MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn()) as mf:
        await mf.worker("cli", workflows=[waits, note, refuses])
        await mf.workflow.start("order", "waits", "order-h", ["never"], "cli")
        handle = await mf.workflow.get_handle("order-h")
        for _ in range(200):
            if await handle.status() == "running":
                break
            await asyncio.sleep(0.02)
        await mf.workflow.hook("order-h", "cli", "note", ["checked"])
        for _ in range(200):
            if [h["status"] for h in (await handle.export()).hooks] == ["completed"]:
                break
            await asyncio.sleep(0.02)
        failing = await mf.workflow.start("order", "refuses", "order-f", [500], "cli")
        with pytest.raises(WorkflowFailed):
            await failing.result(timeout=20)


ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_show_names_hooks_and_gives_times_and_the_error(app: str) -> None:
    asyncio.run(hooks_and_failures(app))
    code, out = hotmesh(app, "runs", "show", "order-h")
    assert code == 0, out
    assert re.search(rf"^started   {ISO}$", out, re.M)
    hook_rows = [line for line in out.splitlines() if line.startswith("note ")]
    assert hook_rows and re.match(rf"note\s+completed\s+{ISO}", hook_rows[0])  # by name
    steps = [line for line in out.splitlines() if re.match(r"^\d+\s", line)]
    assert any(re.match(rf"0\s+note\s+entity\s+append\s+done\s+0\s+{ISO}", s) for s in steps)
    assert any(re.match(r"1\s+main\s+wait\s+never\s+pending", s) for s in steps)
    code, out = hotmesh(app, "runs", "show", "order-f")
    assert code == 0, out
    assert "status    failed" in out
    assert "error     ValueError: amount 500 is over the limit" in out
    assert re.search(rf"^finished  {ISO} \(after [\d.]+ m?s\)$", out, re.M)
    code, out = hotmesh(app, "runs", "list")
    assert re.search(rf"order-f\s+order\s+refuses\s+failed\s+\d+\s+{ISO}", out)


def test_export_is_json_without_a_flag(app: str) -> None:
    code, out = hotmesh(app, "runs", "export", "order-1")
    assert code == 0 and json.loads(out)["workflow_id"] == "order-1"
    code, out = hotmesh(app, "runs", "export", "--help")
    assert "--json" not in out  # no flag that does nothing is offered
    code, same = hotmesh(app, "runs", "export", "order-1", "--json")  # old scripts still work
    assert code == 0 and json.loads(same)["workflow_id"] == "order-1"


async def a_job_nobody_serves(app_id: str) -> None:
    async with MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn()) as mf:
        await mf.workflow.start("order", "ghost", "order-g", [], "cli")


def test_show_says_why_a_job_waits(app: str) -> None:
    asyncio.run(a_job_nobody_serves(app))
    code, out = hotmesh(app, "runs", "show", "order-g")
    assert code == 0, out
    assert (
        "waiting   no worker has registered workflow 'ghost' on queue 'cli' in the last 30 s"
        " (1 ready task(s)"
    ) in out
    assert "no worker at all was seen on it" in out
    code, out = hotmesh(app, "runs", "show", "order-1")  # waits for a signal: no excuse needed
    assert code == 0 and "waiting " not in out
