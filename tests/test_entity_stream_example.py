"""examples/entity_stream.py: an agent's entity streamed over SSE, resumable by
Last-Event-ID, on every backend."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hotmesh_core import MemFlow
from hotmesh_core.plugins import backend_test_options

pytestmark = pytest.mark.asyncio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "entity_stream.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_entity_stream", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(backend: str) -> dict[str, Any]:
    return {
        "app_id": f"ex{uuid.uuid4().hex[:10]}",
        "backend": backend,
        **backend_test_options(backend),
    }


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_the_stream_carries_every_change_in_order(backend: str) -> None:
    events = await load().main(steps=3, **options(backend))
    assert [e["version"] for e in events] == list(range(1, 7))
    # set_if_not_exists changes the entity once; the later calls are no-ops, not changes.
    assert [e["operation"] for e in events] == [
        "set",
        "append",
        "set_if_not_exists",
        "append",
        "append",
        "merge",
    ]
    assert events[-1]["entity"]["status"] == "done"
    assert len(events[-1]["entity"]["thoughts"]) == 3


async def get_events(port: int, path: str, last: int | None, count: int) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    header = f"Last-Event-ID: {last}\r\n" if last is not None else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"text/event-stream" in head
    events: list[dict[str, Any]] = []
    while len(events) < count:
        block = (await reader.readuntil(b"\n\n")).decode()
        fields = dict(line.split(": ", 1) for line in block.strip().split("\n"))
        events.append({"id": int(fields["id"]), **json.loads(fields["data"])})
    writer.close()
    return events


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_a_browser_that_reconnects_resumes_after_its_last_event(backend: str) -> None:
    example = load()
    async with MemFlow.init(**options(backend)) as mf:
        await mf.worker(example.QUEUE, workflows=[example.agent], activities=[example.think])
        server = await example.serve(mf, port=0)
        port = server.sockets[0].getsockname()[1]
        try:
            handle = await mf.workflow.start("agent", "agent", "a1", ["x", 3], example.QUEUE)
            first = await asyncio.wait_for(get_events(port, "/events/a1", None, 3), 30)
            rest = await asyncio.wait_for(get_events(port, "/events/a1", first[-1]["id"], 3), 30)
            assert [e["id"] for e in first + rest] == list(range(1, 7))
            assert rest[-1]["entity"]["status"] == "done"
            await handle.result(timeout=30)
            page_reader, page_writer = await asyncio.open_connection("127.0.0.1", port)
            page_writer.write(b"GET /a1 HTTP/1.1\r\nHost: x\r\n\r\n")
            page = await page_reader.read()
            assert b'new EventSource("/events/a1")' in page
            page_writer.close()
        finally:
            server.close()
            await server.wait_closed()
