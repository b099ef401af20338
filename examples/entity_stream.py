"""An agent's entity, streamed live to a browser page (Server-Sent Events).

An agent workflow thinks in steps (each an activity) and writes its progress
into its entity. A small HTTP server (standard library only) serves a page and
``/events/<workflow id>``: a ``text/event-stream`` fed by
``handle.watch(since_version=...)``. Each event's ``id`` is the entity version,
so when the browser reconnects it sends ``Last-Event-ID`` and the stream resumes
right after the last change it showed: no gap, no repeat.

    python examples/entity_stream.py          # then open http://127.0.0.1:8765/
"""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import aclosing
from typing import Any

from hotmesh_core import MemFlow, workflow

QUEUE = "stream-agents"

PAGE = """<!doctype html>
<meta charset="utf-8"><title>agent {id}</title>
<h1>agent {id}</h1><pre id="doc">waiting for changes…</pre><ol id="log"></ol>
<script>
const source = new EventSource("/events/{id}");
source.onmessage = (event) => {{
  const change = JSON.parse(event.data);
  document.getElementById("doc").textContent = JSON.stringify(change.entity, null, 2);
  const item = document.createElement("li");
  item.textContent = `v${{change.version}} ${{change.operation}} ${{change.path ?? ""}}`;
  document.getElementById("log").appendChild(item);
}};
</script>
"""


async def think(topic: str, step: int) -> str:
    await asyncio.sleep(0.05)  # a model call, say
    return f"thought {step} about {topic}"


async def agent(topic: str, steps: int) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"topic": topic, "status": "thinking", "thoughts": []})
    acts = workflow.proxy_activities(activities=[think])
    for step in range(1, steps + 1):
        await entity.append("thoughts", await acts.think(topic, step))
        await entity.set_if_not_exists("started", True)
    await entity.merge({"status": "done"})
    return await entity.get()  # type: ignore[no-any-return]


async def stream(
    mf: MemFlow, workflow_id: str, since: int | None, send: Any, *, until_done: bool = True
) -> None:
    """Write each change as an SSE event (``id`` = version) until the agent is done."""
    handle = await mf.workflow.get_handle(workflow_id)
    async with aclosing(handle.watch(since_version=since)) as changes:
        async for change in changes:
            data = {
                "version": change.version,
                "operation": change.operation,
                "path": change.path,
                "value": change.value,
                "entity": await handle.state(),
            }
            await send(f"id: {change.version}\ndata: {json.dumps(data)}\n\n")
            if until_done and change.operation == "merge" and change.value == {"status": "done"}:
                return


async def serve(mf: MemFlow, host: str = "127.0.0.1", port: int = 8765) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *header_lines = request.split("\r\n")
            path = line.split(" ")[1]
            headers = dict(h.split(": ", 1) for h in header_lines if ": " in h)
            if path.startswith("/events/"):
                last = headers.get("Last-Event-ID")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-cache\r\n\r\n"
                )

                async def send(text: str) -> None:
                    writer.write(text.encode())
                    await writer.drain()

                since = int(last) if last and last.isdigit() else 0
                await stream(mf, path.removeprefix("/events/"), since, send)
            else:
                body = PAGE.format(id=path.strip("/") or "agent-demo").encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def main(steps: int = 5, serve_forever: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Run an agent and collect what its SSE stream sends (what a browser shows)."""
    options.setdefault("app_id", "entity-stream")
    async with MemFlow.init(**options) as mf:
        await mf.worker(QUEUE, workflows=[agent], activities=[think])
        workflow_id = "agent-demo" if serve_forever else f"agent-{uuid.uuid4().hex[:8]}"
        sent: list[str] = []

        async def collect(text: str) -> None:
            sent.append(text)

        handle = await mf.workflow.start(
            "agent", "agent", workflow_id, ["durable memory", steps], QUEUE
        )
        watching = asyncio.ensure_future(stream(mf, workflow_id, 0, collect))
        if serve_forever:
            server = await serve(mf)
            print("open http://127.0.0.1:8765/agent-demo")
            async with server:
                await server.serve_forever()
        await handle.result(timeout=60)
        await asyncio.wait_for(watching, 30)
        return [json.loads(event.split("data: ", 1)[1]) for event in sent]


if __name__ == "__main__":
    asyncio.run(main(steps=20, serve_forever=True))
