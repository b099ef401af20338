"""Bad input is refused with a typed error naming the problem; nothing is stored."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import (
    BackendNotFound,
    HookDepthExceeded,
    HotMeshError,
    InvalidDuration,
    InvalidIdentifier,
    MemFlow,
    SerializationError,
    WorkflowFailed,
    WorkflowNotFound,
    workflow,
)
from hotmesh_core.entity_ops import EntityPathError
from hotmesh_core.models import EntityOp, ErrorInfo, Task
from hotmesh_core.serde import MAX_DEPTH
from hotmesh_core.workflow import MAX_HOOK_DEPTH

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def test_non_json_arguments_are_refused_before_storing(hm: Harness) -> None:
    mf = await hm.memflow()
    with pytest.raises(SerializationError, match="workflow arguments"):
        await mf.workflow.start("t", "anything", "bad-args", [object()], "q")
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.get_handle("bad-args")
    with pytest.raises(SerializationError):
        await mf.workflow.start("t", "anything", "nan", [float("nan")], "q")


async def test_non_json_signal_data_is_refused(hm: Harness) -> None:
    mf = await hm.memflow()
    with pytest.raises(SerializationError, match="signal data"):
        await mf.workflow.signal("s", {1, 2})


def returns_a_set() -> Any:
    return {1, 2}


async def uses_bad_activity() -> Any:
    acts = workflow.proxy_activities(activities=[returns_a_set])
    return await acts.returns_a_set()


async def passes_bad_argument() -> Any:
    acts = workflow.proxy_activities(activities=[returns_a_set])
    return await acts.returns_a_set(object())


async def test_non_json_results_and_activity_args_fail_clearly(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker(
        "q", workflows=[uses_bad_activity, passes_bad_argument], activities=[returns_a_set]
    )
    handle = await mf.workflow.start("t", "uses_bad_activity", "bad-result", [], "q")
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.type_name == "SerializationError"
    (step,) = (await handle.export()).timeline
    assert step.attempts == 1  # not retried: it can never succeed
    other = await mf.workflow.start("t", "passes_bad_argument", "bad-arg", [], "q")
    with pytest.raises(WorkflowFailed, match="SerializationError"):
        await other.result(timeout=10)
    assert (await other.export()).timeline == []


def returns_a_nul() -> str:
    return "a\x00b"


async def uses_nul_activity() -> Any:
    acts = workflow.proxy_activities(activities=[returns_a_nul])
    return await acts.returns_a_nul()


async def test_nul_characters_are_refused_alike_everywhere(hm: Harness) -> None:
    """U+0000 is valid JSON but no PostgreSQL jsonb can hold it: every backend
    refuses it at the call, so a value never behaves differently by backend."""
    mf = await hm.memflow()
    with pytest.raises(SerializationError, match="NUL"):
        await mf.workflow.start("t", "anything", "nul-arg", ["a\x00"], "q")
    with pytest.raises(SerializationError, match="NUL"):
        await mf.workflow.signal("s", {"k\x00": 1})
    with pytest.raises(InvalidIdentifier, match="signal id"):
        await mf.workflow.signal("s\x00", 1)
    await mf.worker("q", workflows=[uses_nul_activity], activities=[returns_a_nul])
    handle = await mf.workflow.start("t", "uses_nul_activity", "nul-result", [], "q")
    with pytest.raises(WorkflowFailed, match="NUL"):
        await handle.result(timeout=10)
    # A backslash and "u0000" as text is no NUL: kept as it is.
    assert await mf.workflow.signal("s", "\\u0000") is False


@pytest.mark.parametrize(
    "app_id", ["", "Upper", "1starts-with-digit", "has space", "x" * 49, "semi;colon", 'quo"te']
)
async def test_invalid_app_id(hm: Harness, app_id: str) -> None:
    with pytest.raises(InvalidIdentifier, match="app_id"):
        await MemFlow.init(app_id=app_id, backend=hm.backend, **hm.options)


async def _catalog(hm: Harness, schema: str) -> set[tuple[str, str]] | None:
    """On PostgreSQL, every schema name, and every relation of ``schema`` and of the
    built-in schemas; None on other backends (nothing to inspect)."""
    dsn = hm.options.get("dsn")
    if hm.backend != "postgres" or not dsn:
        return None
    import psycopg  # only the PostgreSQL backend's own dependency

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT n.nspname, coalesce(c.relname, '') FROM pg_namespace n"
            " LEFT JOIN pg_class c ON c.relnamespace = n.oid"
            " AND (n.nspname = %s OR n.nspname IN ('public', 'information_schema')"
            " OR n.nspname LIKE 'pg\\_%%')",
            [schema],
        )
        return {(name, relation) for name, relation in await cursor.fetchall()}


RESERVED_APP_IDS = ["public", "information_schema", "pg_catalog", "pg_toast", "pg_temp", "pg_x"]


@pytest.mark.parametrize("app_id", [*RESERVED_APP_IDS, "app\n", "public\n", "pg_catalog\n"])
async def test_reserved_or_newline_app_ids_are_refused_and_create_nothing(
    hm: Harness, app_id: str
) -> None:
    """PostgreSQL's own schemas (``public``, ``information_schema``, ``pg_*``) never
    receive an app's tables, and ``"app\\n"`` is no app id: refused alike on
    every backend, before any schema or table exists."""
    before = await _catalog(hm, app_id)
    # Never drop_on_close here: were the refusal to regress, closing must not drop
    # a built-in schema.
    options = {k: v for k, v in hm.options.items() if k != "drop_on_close"}
    with pytest.raises(InvalidIdentifier, match="app_id"):
        await MemFlow.init(app_id=app_id, backend=hm.backend, **options)
    with pytest.raises(InvalidIdentifier, match="app_id"):
        await MemFlow.Client(app_id=app_id, backend=hm.backend, **options)
    assert await _catalog(hm, app_id) == before


async def test_names_and_ids_with_a_trailing_newline_are_refused(hm: Harness) -> None:
    mf = await hm.memflow()
    with pytest.raises(InvalidIdentifier, match="task_queue"):
        await mf.workflow.start("t", "wf", "id-1", [], "q\n")
    with pytest.raises(InvalidIdentifier, match="entity"):
        await mf.workflow.start("t\n", "wf", "id-2", [], "q")
    with pytest.raises(InvalidIdentifier, match="workflow_name"):
        await mf.workflow.start("t", "wf\n", "id-3", [], "q")
    with pytest.raises(InvalidIdentifier, match="workflow_id"):
        await mf.workflow.start("t", "wf", "id-4\n", [], "q")
    with pytest.raises(InvalidIdentifier, match="signal id"):
        await mf.workflow.signal("s\n", 1)
    assert await mf.workflow.list_runs() == []


async def test_ids_with_a_lone_surrogate_are_refused(hm: Harness) -> None:
    """Ids are stored as text: a lone surrogate (no UTF-8 encoding) is refused alike
    everywhere, not accepted in memory and a UnicodeEncodeError in PostgreSQL."""
    mf = await hm.memflow()
    with pytest.raises(InvalidIdentifier, match="workflow_id"):
        await mf.workflow.start("t", "wf", "id-\ud800", [], "q")
    with pytest.raises(InvalidIdentifier, match="workflow_id"):
        await mf.workflow.get_handle("id-\udfff")
    with pytest.raises(InvalidIdentifier, match="signal id"):
        await mf.workflow.signal("s-\ud800", 1)
    assert await mf.workflow.list_runs() == []
    await mf.workflow.start("t", "wf", "id-\U0001f600", [], "q")  # a whole emoji is fine
    assert [run.workflow_id for run in await mf.workflow.list_runs()] == ["id-\U0001f600"]


async def test_an_empty_workflow_id_is_refused_not_replaced(hm: Harness) -> None:
    """Only None asks for a generated id; "" is a mistake, refused."""
    mf = await hm.memflow()
    with pytest.raises(InvalidIdentifier, match="workflow_id"):
        await mf.workflow.start("t", "wf", "", [], "q")
    assert await mf.workflow.list_runs() == []
    generated = await mf.workflow.start("t", "wf", None, [], "q")
    assert generated.workflow_id.startswith("t-")


async def empty_ids_and_queues() -> list[str]:
    refused: list[str] = []
    for call in (
        lambda: workflow.exec_child("t", "wf", ""),
        lambda: workflow.start_child("t", "wf", ""),
        lambda: workflow.start_child("t", "wf", None, [], ""),
        lambda: workflow.hook("", "wf"),
        lambda: workflow.exec_hook("", "wf"),
    ):
        try:
            await call()
        except InvalidIdentifier as exc:
            refused.append(str(exc).split(" ")[1])
    return refused


async def test_children_and_hooks_refuse_an_empty_id_or_queue(hm: Harness) -> None:
    """An empty child id or task queue is refused; None picks the default."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[empty_ids_and_queues])
    handle = await mf.workflow.start("t", "empty_ids_and_queues", "empties", [], "q")
    assert await handle.result(timeout=10) == [
        "workflow_id",
        "workflow_id",
        "task_queue",
        "task_queue",
        "task_queue",
    ]
    assert [run.workflow_id for run in await mf.workflow.list_runs()] == ["empties"]
    export = await handle.export()
    assert export.timeline == [] and export.hooks == []


def _nested(depth: int) -> list[Any]:
    """``depth`` lists, one inside the other (built without recursion)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


DEEP = _nested(100_000)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("\ud800", "lone surrogate"),
        ({"k\udfff": 1}, "lone surrogate"),
        (["ok", {"a": "x\ud83dy"}], "lone surrogate"),
        (DEEP, f"more than {MAX_DEPTH} deep"),
        (_nested(MAX_DEPTH + 1), f"more than {MAX_DEPTH} deep"),
        ({"a": _nested(MAX_DEPTH)}, f"more than {MAX_DEPTH} deep"),
    ],
    ids=["surrogate", "surrogate-key", "half-pair", "100000-deep", "101-deep", "dict-101-deep"],
)
async def test_unstorable_values_are_refused_before_storing(
    hm: Harness, value: Any, problem: str
) -> None:
    """Values no backend can store or read back (lone surrogates: not Unicode;
    nesting past ``MAX_DEPTH``) are refused at the call with a SerializationError,
    never a UnicodeEncodeError or RecursionError, and nothing is stored."""
    mf = await hm.memflow()
    with pytest.raises(SerializationError, match=f"workflow arguments .*{problem}"):
        await mf.workflow.start("t", "wf", "bad-arg", [value], "q")
    with pytest.raises(SerializationError, match=f"search .*{problem}"):
        await mf.workflow.start("t", "wf", "bad-search", [], "q", search={"k": value})
    with pytest.raises(SerializationError, match=f"signal data .*{problem}"):
        await mf.workflow.signal("s", value)
    with pytest.raises(SerializationError, match=f"hook arguments .*{problem}"):
        await mf.workflow.hook("no-such-job", "q", "wf", [value])
    with pytest.raises(SerializationError, match=problem):
        await mf.workflow.search({"k": value})
    assert await mf.workflow.list_runs() == []


async def test_the_deepest_allowed_value_round_trips(hm: Harness) -> None:
    """Depth counts the value as stored: the argument list is one level itself."""
    mf = await hm.memflow()
    deepest = _nested(MAX_DEPTH - 1)
    handle = await mf.workflow.start("t", "wf", "deep-ok", [deepest, "\U0001f600"], "q")
    assert (await handle.export()).args == [deepest, "\U0001f600"]
    assert await mf.workflow.signal("s", _nested(MAX_DEPTH)) is False  # kept for a waiter
    with pytest.raises(SerializationError, match=f"more than {MAX_DEPTH} deep"):
        await mf.workflow.start("t", "wf", "too-deep", [_nested(MAX_DEPTH)], "q")


def returns_unstorable(kind: str) -> Any:
    return "\udc80" if kind == "surrogate" else DEEP


async def stores_unstorable(kind: str, where: str) -> Any:
    if where == "activity":
        acts = workflow.proxy_activities(activities=[returns_unstorable])
        return await acts.returns_unstorable(kind)
    value = returns_unstorable(kind)
    if where == "argument":
        acts = workflow.proxy_activities(activities=[returns_unstorable])
        return await acts.returns_unstorable(value)
    if where == "entity":
        return await (await workflow.entity()).set({"v": value})
    if where == "signal":
        return await workflow.signal("s", value)
    return value  # where == "result"


@pytest.mark.parametrize("where", ["activity", "argument", "entity", "signal", "result"])
@pytest.mark.parametrize("kind", ["surrogate", "deep"])
async def test_unstorable_values_inside_workflows_fail_them_clearly(
    hm: Harness, kind: str, where: str
) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[stores_unstorable], activities=[returns_unstorable])
    handle = await mf.workflow.start("t", "stores_unstorable", "w", [kind, where], "q")
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.type_name == "SerializationError"
    assert ("lone surrogate" if kind == "surrogate" else f"{MAX_DEPTH} deep") in str(caught.value)
    export = await handle.export()
    assert export.result is None
    assert all(step.result is None for step in export.timeline)


@pytest.mark.parametrize("bad", ["1.5.5s", "10 5", "5 s 5", "30m2h", "5s5s", "soon"])
async def test_bad_durations_are_refused_with_a_typed_error(hm: Harness, bad: str) -> None:
    mf = await hm.memflow()
    with pytest.raises(InvalidDuration, match=bad.replace(".", "\\.")):
        await mf.workflow.start("t", "wf", "id-1", [], "q", expire=bad)
    with pytest.raises(InvalidDuration, match="duration"):
        await mf.workflow.signal("s", 1, expire=bad)
    assert await mf.workflow.list_runs() == []


async def waits_for_the_deepest_hook() -> Any:
    await workflow.hook(None, "starts_itself")
    return await workflow.wait_for(f"deepest-{workflow.info().workflow_id}")


async def starts_itself() -> None:
    """A hook that starts itself, for ever if nothing stopped it."""
    try:
        await workflow.hook(None, "starts_itself")
    except HookDepthExceeded as exc:
        deepest = {"dimension": workflow.info().dimension, "error": str(exc)}
        await workflow.signal(f"deepest-{workflow.info().workflow_id}", deepest)
        raise  # uncaught, as a careless hook would: it fails this hook, not the job


async def test_hooks_nest_at_most_max_hook_depth(hm: Harness) -> None:
    """A hook that starts itself stops at ``MAX_HOOK_DEPTH``: the call raises
    HookDepthExceeded inside the hook before anything is stored."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waits_for_the_deepest_hook, starts_itself])
    handle = await mf.workflow.start("t", "waits_for_the_deepest_hook", "deep", [], "q")
    deepest = await handle.result(timeout=30)
    assert deepest["dimension"].count(".") + 1 == MAX_HOOK_DEPTH
    assert f"at most {MAX_HOOK_DEPTH} deep" in deepest["error"]
    for _ in range(1000):  # the deepest fails after it signals; the others end after it
        hooks = (await handle.export()).hooks
        if any(h["status"] == "failed" for h in hooks) and all(
            h["status"] != "running" for h in hooks
        ):
            break
        await asyncio.sleep(0.02)
    assert len(hooks) == MAX_HOOK_DEPTH  # nothing stored for the refused level
    assert sorted(h["dimension"].count(".") + 1 for h in hooks) == list(
        range(1, MAX_HOOK_DEPTH + 1)
    )
    (failed,) = [h for h in hooks if h["status"] == "failed"]
    assert failed["dimension"] == deepest["dimension"]
    assert failed["error"]["type_name"] == "HookDepthExceeded"
    assert {h["status"] for h in hooks if h is not failed} == {"completed"}
    assert issubclass(HookDepthExceeded, HotMeshError)


async def test_unknown_backend_lists_installed(hm: Harness) -> None:
    with pytest.raises(BackendNotFound) as caught:
        await MemFlow.init(app_id="fine", backend="no-such-backend")
    assert hm.backend in caught.value.installed
    assert hm.backend in str(caught.value)


async def test_invalid_names(hm: Harness) -> None:
    mf = await hm.memflow()
    with pytest.raises(InvalidIdentifier, match="task_queue"):
        await mf.workflow.start("t", "wf", "id-1", [], "bad queue!")
    with pytest.raises(InvalidIdentifier, match="workflow_id"):
        await mf.workflow.start("t", "wf", "bad\nid", [], "q")
    with pytest.raises(InvalidIdentifier, match="entity"):
        await mf.workflow.start("drop table;", "wf", "id-2", [], "q")
    with pytest.raises(InvalidDuration, match="duration"):
        await mf.workflow.start("t", "wf", "id-3", [], "q", expire="soon")
    # Longer than any database time can hold: refused alike on every backend.
    with pytest.raises(InvalidDuration, match="at most 100 years"):
        await mf.workflow.start("t", "wf", "id-4", [], "q", expire=float("inf"))
    with pytest.raises(InvalidDuration, match="at most 100 years"):
        await mf.workflow.signal("s", 1, expire=1e300)


async def test_dead_letters_are_listed_newest_first_with_their_error(hm: Harness) -> None:
    mf = await hm.memflow()
    for job_id in ("first", "second"):
        async with mf.backend.transaction() as tx:
            task_id = await tx.stream.enqueue(
                Task(queue="q", kind="timer", job_id=job_id, dimension="", name="wake")
            )
            assert task_id is not None
            await tx.stream.dead_letter(task_id, ErrorInfo("Boom", f"{job_id} broke"))
    letters = await mf.workflow.dead_letters()
    assert [(d.task.job_id, d.task.kind, d.error.message) for d in letters] == [
        ("second", "timer", "second broke"),
        ("first", "timer", "first broke"),
    ]
    (only,) = await mf.workflow.dead_letters("first")
    assert only.error.type_name == "Boom" and only.created_at > 0
    assert await mf.workflow.dead_letters(limit=1) == letters[:1]
    with pytest.raises(InvalidIdentifier):
        await mf.workflow.dead_letters("bad\nid")


async def does_nothing() -> None:
    return None


@pytest.mark.parametrize("path", ["a\udc80", "a\x00b"])
async def test_entity_paths_that_cannot_be_stored_fail_alike(hm: Harness, path: str) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[does_nothing])
    handle = await mf.workflow.start("t", "does_nothing", "p", [], "q")
    await handle.result(timeout=10)
    async with mf.backend.transaction() as tx:
        with pytest.raises(EntityPathError, match="cannot be stored"):
            await tx.store.apply_entity(
                "p", EntityOp(op="get", path=path), dimension=None, index=None
            )
