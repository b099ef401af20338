"""The blocking facade, used from plain (non-async) code against a worker elsewhere."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest

from hotmesh_core import WorkflowNotFound, workflow
from hotmesh_core.memflow import MemFlow
from hotmesh_core.sync import connect
from hotmesh_postgres.testing import test_dsn


async def approval(amount: int) -> dict:
    entity = await workflow.entity()
    await entity.set({"amount": amount, "approved": False})
    decision = await workflow.wait_for(f"approve-{workflow.info().workflow_id}")
    await entity.merge({"approved": decision})
    return {"amount": amount, "approved": decision}


async def annotate(note: str) -> None:
    entity = await workflow.entity()
    await entity.append("notes", note)


@pytest.fixture
def worker_elsewhere() -> Iterator[str]:
    """An async worker in its own thread and event loop, as another process would be."""
    app_id = f"sync{uuid.uuid4().hex[:10]}"
    dsn = test_dsn()  # here, not in the thread: a skip (no server) must reach pytest
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
        await mf.worker("sync", workflows=[approval, annotate])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await mf.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    assert ready.wait(30)
    yield app_id
    stop.set()
    thread.join(30)


def test_blocking_client_operations(worker_elsewhere: str) -> None:
    with connect(app_id=worker_elsewhere, backend="postgres", dsn=test_dsn()) as client:
        handle = client.workflow.start("invoice", "approval", "inv-1", [120], "sync")
        assert handle.workflow_id == "inv-1"
        for _ in range(200):
            if handle.status() == "running":
                break
            threading.Event().wait(0.02)
        client.workflow.hook("inv-1", "sync", "annotate", ["checked by finance"])
        assert client.workflow.signal("approve-inv-1", True) is True
        assert handle.result(timeout=20) == {"amount": 120, "approved": True}
        state = client.workflow.get_handle("inv-1").state()
        assert state["approved"] is True and state["amount"] == 120
        assert [r.workflow_id for r in client.entity.find("invoice", {"amount": 120})] == ["inv-1"]
        assert [e.kind for e in handle.export().timeline][:2] == ["entity", "wait"]
        with pytest.raises(WorkflowNotFound):
            client.workflow.get_handle("inv-404")
