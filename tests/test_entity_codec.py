"""Payload codecs: an encrypted app stores no plaintext, reads back what it wrote,
rotates keys, and refuses queries it cannot answer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

from hotmesh_core import ActivityFailed, MemFlow, RetryPolicy, WorkflowFailed, workflow
from hotmesh_core.codec import AesGcmCodec, CodecError, NotQueryable
from hotmesh_core.plugins import backend_test_options
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.asyncio

SECRET = "s3cr3t-ssn-078-05-1120"


async def reveal(text: str) -> str:
    return f"{text}!"


async def refuse(text: str) -> str:
    raise ValueError(f"cannot handle {text}")


async def private(secret: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"secret": secret, "log": []})
    acts = workflow.proxy_activities(
        activities=[reveal, refuse], retry_policy=RetryPolicy(maximum_attempts=1)
    )
    await entity.append("log", await acts.reveal(secret))
    try:
        await acts.refuse(secret)
    except ActivityFailed as error:
        await entity.merge({"error": error.message})
    await entity.increment("n", 2)
    note = await workflow.wait_for(f"note-{workflow.info().workflow_id}")
    await entity.merge({"note": note})
    await workflow.search().set({"stage": "done"})
    return {"entity": await entity.get(), "secret": secret}


def options(
    backend: str,
    codec: AesGcmCodec,
    app_id: str | None = None,
    *,
    first: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Open options; only the app's first opener drops it (PostgreSQL) when it closes."""
    settings = {
        "app_id": app_id or f"c{uuid.uuid4().hex[:12]}",
        "backend": backend,
        **backend_test_options(backend),
        "codec": codec,
        **extra,
    }
    if not first:
        settings.pop("drop_on_close", None)
    return settings


def dump(app_id: str) -> str:
    """Every row of every table of the app, as text."""
    with psycopg.connect(test_dsn()) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", [app_id]
            )
        ]
        return "\n".join(
            str(row)
            for table in tables
            for row in conn.execute(f'SELECT t::text FROM "{app_id}"."{table}" t')
        )


async def run_private(mf: MemFlow, workflow_id: str, check: Any = None) -> dict[str, Any]:
    await mf.worker("q", workflows=[private], activities=[reveal, refuse])
    handle = await mf.workflow.start("vault", "private", workflow_id, [SECRET], "q")
    for _ in range(400):
        if (await handle.export()).version >= 4:
            break
        await asyncio.sleep(0.025)
    if check is not None:
        check()  # while it waits: the entity, steps, waiters in the tables
    await mf.workflow.signal(f"note-{workflow_id}", {"from": SECRET})  # a waiter takes it
    await mf.workflow.signal("kept", {"kept": SECRET})  # buffered: no waiter
    result: dict[str, Any] = await handle.result(timeout=30)
    return result


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_an_encrypted_app_works_as_a_plain_one(backend: str) -> None:
    codec = AesGcmCodec({"k1": AesGcmCodec.new_key()})
    async with MemFlow.init(**options(backend, codec)) as mf:
        result = await run_private(mf, "v1")
        assert result["secret"] == SECRET
        entity = result["entity"]
        assert entity["log"] == [f"{SECRET}!"] and entity["n"] == 2
        assert entity["note"] == {"from": SECRET} and SECRET in entity["error"]
        handle = await mf.workflow.get_handle("v1")
        export = await handle.export()
        assert export.context == entity and export.args == [SECRET]
        assert [c["op"] for c in export.entity_changes] == [
            "set",
            "append",
            "merge",
            "increment",
            "merge",
        ]
        assert export.entity_changes[0]["value"]["secret"] == SECRET
        assert [r.workflow_id for r in await mf.entity.find("vault")] == ["v1"]
        assert (await mf.entity.get("v1")).context == entity  # type: ignore[union-attr]
        assert await mf.workflow.search({"stage": "done"}) == ["v1"]  # search fields: as given
        for refused in (
            mf.entity.find("vault", {"secret": SECRET}),
            mf.entity.find("vault", order_by="secret"),
            mf.entity.count("vault", {"n": 2}),
            mf.entity.create_index("vault", "secret"),
        ):
            with pytest.raises(NotQueryable, match="codec"):
                await refused


async def test_an_encrypted_app_stores_no_plaintext() -> None:
    codec = AesGcmCodec({"k1": AesGcmCodec.new_key()})
    settings = options("postgres", codec)
    app_id = settings["app_id"]
    seen: list[str] = []
    async with MemFlow.init(**settings) as mf:
        await run_private(mf, "v1", check=lambda: seen.append(dump(app_id)))
        seen.append(dump(app_id))
        assert (await (await mf.workflow.get_handle("v1")).export()).context["secret"] == SECRET
    assert "aesgcm" in seen[0] and "aesgcm" in seen[1]  # the rows are there, encrypted
    # The control: the same run without a codec leaves the secret all over the tables.
    plain = {k: v for k, v in options("postgres", codec).items() if k != "codec"}
    async with MemFlow.init(**plain) as mf:
        await run_private(mf, "v1")
        assert dump(plain["app_id"]).count(SECRET) > 5
    for text in seen:
        assert SECRET not in text
        assert "078-05" not in text


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_keys_rotate(backend: str) -> None:
    old, new = AesGcmCodec.new_key(), AesGcmCodec.new_key()
    app_id = f"c{uuid.uuid4().hex[:12]}"
    async with MemFlow.init(**options(backend, AesGcmCodec({"old": old}), app_id)) as mf:
        await run_private(mf, "before")
        rotated = AesGcmCodec({"new": new, "old": old})  # the new key first: it encrypts
        async with MemFlow.Client(**options(backend, rotated, app_id, first=False)) as client:
            handle = await client.workflow.get_handle("before")
            assert (await handle.result())["secret"] == SECRET  # old data still reads
            await client.workflow.start("vault", "private", "after", [SECRET], "q")
        only_new = AesGcmCodec({"new": new})
        async with MemFlow.Client(**options(backend, only_new, app_id, first=False)) as client:
            assert (await client.entity.get("after")).context == {}  # type: ignore[union-attr]
            with pytest.raises(CodecError, match="no key 'old'"):
                await client.entity.get("before")


async def test_bad_keys_and_a_failing_workflow_under_a_codec() -> None:
    with pytest.raises(CodecError, match="32 bytes"):
        AesGcmCodec({"k": b"short"})
    with pytest.raises(CodecError):
        AesGcmCodec({})

    async def fails(secret: str) -> None:
        raise RuntimeError(f"leaked {secret}")

    codec = AesGcmCodec({"k1": AesGcmCodec.new_key()})
    async with MemFlow.init(**options("memory", codec)) as mf:
        await mf.worker("q", workflows=[fails])
        handle = await mf.workflow.start("vault", "fails", "f", [SECRET], "q")
        with pytest.raises(WorkflowFailed, match=SECRET):  # the message reads back
            await handle.result(timeout=10)


async def test_concurrent_entity_operations_lose_no_update_under_a_codec() -> None:
    """Under a codec an operation is applied in Python on the locked row: twenty
    concurrent increments from outside all count."""
    codec = AesGcmCodec({"k1": AesGcmCodec.new_key()})
    async with MemFlow.init(**options("postgres", codec, pool_size=20)) as mf:
        await mf.workflow.start("vault", "private", "c", [SECRET], "q")
        await asyncio.gather(*(mf.entity.update("c", "increment", "n") for _ in range(20)))
        record = await mf.entity.get("c")
        assert record is not None and record.context == {"n": 20} and record.version == 20
        export = await (await mf.workflow.get_handle("c")).export()
        assert [c["version"] for c in export.entity_changes] == list(range(1, 21))
