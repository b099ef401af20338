"""The dashboard's pages over HTTP, without a browser: the ASGI app under httpx on
the memory backend (one event loop for the app and the workflows), plus the
pure views it is built on (hotmesh_core.observe)."""

from __future__ import annotations

import asyncio
import html
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner

from hotmesh_core import (
    EntityPathError,
    MemFlow,
    RetryPolicy,
    VirtualClock,
    WorkflowCancelled,
    workflow,
)
from hotmesh_core.cli import main
from hotmesh_core.models import EntityChange, ErrorInfo, Task
from hotmesh_core.observe import DiffEntry, InvalidCursor, RunCursor, diff, entity_at, version_at
from hotmesh_core.testing import open_test_memflow
from hotmesh_core.ui.app import create_app
from hotmesh_core.ui.data import InvalidFilter, parse_where

EVIL = "<script>alert('pwned')</script>"


async def tool(text: str) -> str:
    if text == "boom":
        raise RuntimeError("the tool broke")
    return text.upper()


async def helper(word: str, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    await entity.append("words", word)
    await workflow.signal(config["signal"], {"helped": word})


async def kid(word: str) -> str:
    entity = await workflow.entity()
    await entity.set({"word": word})
    return word * 2


async def agent(word: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"word": word, "words": [], "note": EVIL, "stage": "start"})
    acts = workflow.proxy_activities(activities=[tool])
    loud = await acts.tool(word)
    await workflow.exec_hook("ui", "helper", [loud])
    twice = await workflow.exec_child("kid", "kid", args=[word], task_queue="ui")
    await entity.merge({"stage": "done", "twice": twice})
    return await entity.get()  # type: ignore[no-any-return]


async def waiter(signal_id: str) -> Any:
    entity = await workflow.entity()
    await entity.set({"waiting": True})
    await workflow.sleep_for(1.0)
    return await workflow.wait_for(signal_id, timeout=600)


async def breaks() -> None:
    acts = workflow.proxy_activities(
        activities=[tool], retry_policy=RetryPolicy(maximum_attempts=1)
    )
    await acts.tool("boom")


WORKFLOWS = [agent, helper, kid, waiter, breaks]


@pytest.fixture
async def mf() -> AsyncIterator[MemFlow]:
    memflow = await open_test_memflow(clock=VirtualClock())
    await memflow.worker("ui", workflows=WORKFLOWS, activities=[tool])
    try:
        yield memflow
    finally:
        await memflow.shutdown()


def browser(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080"
    )


def ids_in(page: str) -> list[str]:
    return [
        html.unescape(found) for found in re.findall(r'<tr class="run" data-id="([^"]*)"', page)
    ]


async def started(mf: MemFlow, workflow_name: str, workflow_id: str, *args: Any, **kw: Any) -> Any:
    entity = {"agent": "research", "waiter": "order", "breaks": "job"}[workflow_name]
    return await mf.workflow.start(entity, workflow_name, workflow_id, list(args), "ui", **kw)


async def test_runs_table_filters_and_keyset_pages(mf: MemFlow) -> None:
    for n in range(7):
        await started(mf, "agent", f"a-{n}", f"w{n}")
        await started(mf, "waiter", f"w-{n}", f"sig-{n}")
        mf.clock.advance("1 minute")
    for n in range(7):
        await (await mf.workflow.get_handle(f"a-{n}")).result(timeout=10)
    app = create_app(mf, page_size=4)
    async with browser(app) as http:
        seen: list[str] = []
        url = "/runs"
        pages = 0
        while url:
            page = (await http.get(url)).text
            found = ids_in(page)
            assert 0 < len(found) <= 4
            seen += found
            pages += 1
            link = re.search(r'id="next-page" href="([^"]*)"', page)
            url = html.unescape(link.group(1)) if link else ""
        everything = await mf.workflow.list_runs(limit=100)
        assert seen == [r.workflow_id for r in everything]  # newest first, none twice
        assert len(seen) == 21 and pages == 6  # 7 agents, their 7 children, 7 waiters

        async def listed(query: str) -> list[str]:
            response = await http.get(f"/runs?{query}")
            assert response.status_code == 200, response.text
            return ids_in(response.text)

        assert await listed("workflow=waiter&status=running") == ["w-6", "w-5", "w-4", "w-3"]
        assert await listed("status=completed&workflow=agent&id=a-6") == ["a-6"]
        assert await listed("entity=research&where=word%3Dw3") == ["a-3"]
        assert await listed(
            "entity=research&where=%7B%22stage%22%3A%22done%22%2C%22word%22%3A%22w5%22%7D"
        ) == ["a-5"]
        # The query language of mf.entity.find: operators and $or.
        where = quote(json.dumps({"$or": [{"word": {"$in": ["w1", "w2"]}}, {"word": "w6"}]}))
        assert await listed(f"entity=research&where={where}") == ["a-6", "a-2", "a-1"]
        bad = await http.get(f"/runs?where={quote(json.dumps({'word': {'$near': 1}}))}")
        assert bad.status_code == 400 and "$near" in bad.text
        kids = await listed("entity=kid")
        assert len(kids) == 4 and all(re.fullmatch(r"a-\d-c-3", kid) for kid in kids)
        created = {r.workflow_id: r.created_at for r in everything}
        since, until = created["a-2"], created["a-4"]
        assert since < created["a-3"] < until
        assert await listed(f"workflow=agent&since={_iso(since)}&until={_iso(until)}") == [
            "a-3",
            "a-2",
        ]  # from inclusive, until exclusive
        # The first page refreshes itself: it names a fragment URL that gives the table.
        page = (await http.get("/runs?workflow=waiter")).text
        live = html.unescape(re.search(r'data-live-url="([^"]*)"', page).group(1))  # type: ignore[union-attr]
        fragment = (await http.get(live)).text
        assert "<html" not in fragment and ids_in(fragment) == ids_in(page)


async def pending_step(mf: MemFlow, workflow_id: str, kind: str) -> None:
    handle = await mf.workflow.get_handle(workflow_id)
    for _ in range(500):
        export = await handle.export()
        if any(s.kind == kind and s.status == "pending" for s in export.timeline):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{workflow_id} never waited on a {kind}")


def _iso(seconds: float) -> str:
    """The time as the form sends it, in whole microseconds rounded as backends
    compare them (``datetime.fromtimestamp`` rounds a time.time() float's
    sub-microsecond part its own way)."""
    from datetime import datetime, timedelta, timezone

    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
        microseconds=round(seconds * 1_000_000)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


async def test_a_run_shows_its_threads_steps_child_and_result(mf: MemFlow) -> None:
    handle = await started(mf, "agent", "a-1", "hello")
    final = await handle.result(timeout=10)
    app = create_app(mf)
    async with browser(app) as http:
        page = (await http.get("/runs/a-1")).text
    assert 'id="run-status">completed<' in page
    assert final["twice"] == "hellohello" and "hellohello" in page
    lanes = re.findall(r'<tbody class="lane" data-thread="([^"]*)"', page)
    assert lanes == ["main", "helper"]
    assert '<a class="child" href="/runs/a-1-c-3">a-1-c-3</a>' in page
    assert "activity</span> tool" in page
    assert page.count('<svg class="bar"') == 8  # 6 main steps, 2 in the hook
    assert "hook:a-1:h2" in page  # the hook's signal, sent and received
    xs = [float(x) for x in re.findall(r'<rect class="[^"]*" x="([0-9.]+)"', page)]
    assert min(xs) == 0.0 and max(xs) < 100


async def test_pending_waits_and_timers_show_their_due_time(mf: MemFlow) -> None:
    handle = await started(mf, "waiter", "w-1", "go-1")
    async with browser(create_app(mf)) as http:
        await pending_step(mf, "w-1", "sleep")
        page = (await http.get("/runs/w-1")).text
        assert '<table id="pending">' in page and "<td>sleep</td>" in page
        assert "(in 1.00 s)" in page
        mf.clock.advance("2 seconds")
        await pending_step(mf, "w-1", "wait")
        page = (await http.get("/runs/w-1")).text
        assert "<td>go-1</td>" in page and "(in 10.0 min)" in page
        assert 'data-live-url="/runs/w-1"' in page  # running: the page refreshes itself
        await mf.workflow.signal("go-1", {"ok": 1})
        assert await handle.result(timeout=10) == {"ok": 1}
        page = (await http.get("/runs/w-1")).text
        assert "data-live-url" not in page and "Nothing pending." in page
        assert "<td>received</td><td><code>go-1</code></td>" in page


async def test_a_failed_run_shows_its_error_and_traceback(mf: MemFlow) -> None:
    handle = await started(mf, "breaks", "b-1")
    with pytest.raises(Exception, match="the tool broke"):
        await handle.result(timeout=10)
    async with browser(create_app(mf)) as http:
        page = (await http.get("/runs/b-1")).text
    assert 'id="run-error"' in page and "the tool broke" in page
    assert '<pre class="traceback">' in page and "RuntimeError" in page


async def test_the_memory_page_history_diff_and_document_at_a_version(mf: MemFlow) -> None:
    await (await started(mf, "agent", "a-1", "hi")).result(timeout=10)
    export = await (await mf.workflow.get_handle("a-1")).export()
    async with browser(create_app(mf)) as http:
        page = (await http.get("/memory/a-1")).text
        assert re.findall(r'<tr data-version="(\d+)">', page) == ["3", "2", "1"]
        assert "<td>helper <span" in page  # the hook's change, by its name
        page = (await http.get("/memory/a-1?from=1&to=3&at=1")).text
    assert export.version == 3
    assert "Changes from v1 to v3" in page
    rows = re.findall(r'<tr class="(added|removed|changed)"><td><code>([^<]*)</code>', page)
    assert rows == [("added", "words[0]"), ("changed", "stage"), ("added", "twice")]
    at_one = re.search(r'<pre class="json" id="document-at">(.*?)</pre>', page, re.S)
    assert at_one is not None
    assert json.loads(html.unescape(at_one.group(1))) == {
        "word": "hi",
        "words": [],
        "note": EVIL,
        "stage": "start",
    }


async def test_user_data_is_escaped_everywhere(mf: MemFlow) -> None:
    await mf.workflow.start("research", "agent", f"id-{EVIL}", [EVIL], "ui")
    await (await mf.workflow.get_handle(f"id-{EVIL}")).result(timeout=10)
    async with browser(create_app(mf, allow_actions=True)) as http:
        quoted = "id-%3Cscript%3Ealert%28%27pwned%27%29%3C%2Fscript%3E"
        for url in ["/runs", f"/runs/{quoted}", f"/memory/{quoted}?from=0&to=3&at=2"]:
            page = (await http.get(url)).text
            assert "<script>alert" not in page, url
            assert "&lt;script&gt;alert(" in page, url
            assert page.count("<script") == 1  # only the dashboard's own ui.js
        response = await http.get("/runs")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


async def test_read_only_unless_actions_are_allowed(mf: MemFlow) -> None:
    await started(mf, "waiter", "w-1", "go-1")
    async with browser(create_app(mf)) as http:
        page = (await http.get("/runs/w-1")).text
        assert '<form method="post"' not in page and "read-only" in page
        refused = await http.post("/actions/signal", data={"signal_id": "go-1", "csrf": ""})
        assert refused.status_code == 403 and "--allow-actions" in refused.text
        refused = await http.post("/actions/interrupt/w-1", data={})
        assert refused.status_code == 403
        assert (await http.get("/actions/signal")).status_code == 405
    await pending_step(mf, "w-1", "sleep")
    assert await (await mf.workflow.get_handle("w-1")).status() == "running"
    mf.clock.advance("2 seconds")
    await pending_step(mf, "w-1", "wait")  # the refused signal was not kept for it either


async def test_actions_need_the_token_and_this_origin(mf: MemFlow) -> None:
    handle = await started(mf, "waiter", "w-1", "go-1")
    async with browser(create_app(mf, allow_actions=True)) as http:
        page = (await http.get("/operations")).text
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        # Each refused signal would be kept for the waiter, first come first served.
        form = {"signal_id": "go-1", "data": '"refused"', "back": "/runs/w-1"}
        assert (await http.post("/actions/signal", data=form)).status_code == 403
        wrong = {**form, "csrf": token[:-1] + "x"}
        assert (await http.post("/actions/signal", data=wrong)).status_code == 403
        elsewhere = await http.post(
            "/actions/signal",
            data={**form, "csrf": token},
            headers={"origin": "http://evil.example"},
        )
        assert elsewhere.status_code == 403
        as_json = await http.post("/actions/signal", json={**form, "csrf": token})
        assert as_json.status_code == 415
        assert await handle.status() in ("pending", "running")
        sent = await http.post(
            "/actions/signal",
            data={**form, "data": '{"by": "ops"}', "csrf": token},
            headers={"origin": "http://127.0.0.1:8080"},
        )
        assert sent.status_code == 303
        assert sent.headers["location"].startswith("/runs/w-1?note=signal+go-1+")
        assert await handle.result(timeout=10) == {"by": "ops"}

        other = await started(mf, "waiter", "w-2", "go-2")
        gone = await http.post(
            "/actions/interrupt/w-2", data={"csrf": token, "reason": "enough <b>"}
        )
        assert gone.status_code == 303
        assert await other.status() == "interrupted"
        page = (await http.get("/runs/w-2")).text
        assert "enough &lt;b&gt;" in page
        away = await http.post("/actions/signal", data={**form, "csrf": token, "back": "//x.io/"})
        assert away.headers["location"].startswith("/runs?")  # never off this dashboard


async def test_other_hosts_are_refused(mf: MemFlow) -> None:
    app = create_app(mf)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://attacker.example"
    ) as http:
        assert (await http.get("/runs")).status_code == 400


async def test_unknown_runs_and_bad_filters_say_what_is_wrong(mf: MemFlow) -> None:
    await started(mf, "waiter", "w-1", "go-1")
    async with browser(create_app(mf)) as http:
        missing = await http.get("/runs/nope")
        assert missing.status_code == 404 and "nope" in missing.text
        assert (await http.get("/memory/nope")).status_code == 404
        for query, words in [
            ("status=sleepy", "status"),
            ("after=garbage", "cursor"),
            ("where=a%3D1", "entity type"),
            ("entity=order&where=%7Bbad", "JSON"),
            ("since=yesterday", "since"),
        ]:
            response = await http.get(f"/runs?{query}")
            assert response.status_code == 400, query
            assert words in html.unescape(response.text), query
        bad = await http.get("/memory/w-1?at=99")
        assert bad.status_code == 400 and "no version 99" in bad.text


async def test_operations_show_queues_and_dead_letters(mf: MemFlow) -> None:
    await mf.workflow.start("order", "waiter", "w-1", ["go"], "elsewhere")  # no worker there
    async with mf.backend.transaction() as tx:
        task_id = await tx.stream.enqueue(
            Task(queue="ui", kind="activity", job_id="w-1", dimension="", name="tool", index=9)
        )
        assert task_id is not None
        await tx.stream.dead_letter(task_id, ErrorInfo("Poison", "cannot <decode>", "Traceback..."))
    mf.clock.advance("30 seconds")
    async with browser(create_app(mf)) as http:
        page = (await http.get("/operations")).text
    row = re.search(r"<tr><td>elsewhere</td>(.*?)</tr>", page, re.S)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells[0] == "1" and cells[1] == "30.00 s ago"
    assert '<table id="dead-letters">' in page and "Poison: cannot &lt;decode&gt;" in page


async def test_operations_show_the_live_workers_of_a_queue(mf: MemFlow) -> None:
    worker = await mf.worker("presence-q", workflows={"idle": waiter}, worker_id="idle-one")
    async with mf.backend.transaction() as tx:  # a ready task makes the queue listed
        await tx.stream.enqueue(
            Task(queue="presence-q", kind="run", job_id="nobody", dimension="", name="other")
        )
    async with browser(create_app(mf)) as http:
        page = (await http.get("/operations")).text
    row = re.search(r"<tr><td>presence-q</td>(.*?)</tr>", page, re.S)
    assert row is not None and ">idle-one</code>" in row.group(1)  # idle, yet live
    await worker.stop()


def test_the_command_line_loads_no_web_stack() -> None:
    """`hotmesh` (every command) imports Starlette, Jinja2 and uvicorn only for `ui`."""
    code = (
        "import sys, hotmesh_core.cli;"
        " print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_ui_command_is_registered() -> None:
    result = CliRunner().invoke(main, ["ui", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--port", "--host", "--allow-actions", "--app", "--dsn", "--backend"):
        assert option in result.output


# -- the views the pages are built on (hotmesh_core.observe) -------------------------


def change(version: int, op: str, path: str | None, value: Any) -> EntityChange:
    return EntityChange("j", version, op, path, value, at=float(version))


def test_entity_at_replays_the_change_log() -> None:
    log = [
        change(1, "set", None, {"a": 1, "list": []}),
        change(2, "append", "list", "x"),
        change(3, "increment", "a", 2),
        change(4, "merge", None, {"deep": {"k": True}}),
        change(5, "delete", "list", None),
        change(6, "toggle", "deep.k", None),
    ]
    assert entity_at(log, 0) == {}
    assert entity_at(log, 2) == {"a": 1, "list": ["x"]}
    assert entity_at(reversed(log), 6) == {"a": 3, "deep": {"k": False}}
    assert version_at(log, 3.5) == 3 and version_at(log, 0.5) == 0


def test_diff_lists_each_leaf_that_changed() -> None:
    before = {"a": 1, "b": {"c": [1, 2]}, "flag": True, "gone": "x"}
    after = {"a": 1.0, "b": {"c": [1, 3, 4]}, "flag": 1, "new": None}
    assert diff(before, after) == [
        DiffEntry("b.c[1]", "changed", 2, 3),
        DiffEntry("b.c[2]", "added", None, 4),
        DiffEntry("flag", "changed", True, 1),
        DiffEntry("gone", "removed", "x", None),
        DiffEntry("new", "added", None, None),
    ]
    assert diff(before, before) == []


def test_cursors_and_entity_field_filters() -> None:
    cursor = RunCursor.after(1700000000.123456, "id:with:colons")
    assert RunCursor.decode(cursor.encode()) == cursor
    for text in ["", "12", "x:y", ":id"]:
        with pytest.raises(InvalidCursor):
            RunCursor.decode(text)
    assert parse_where("a.b=1, name = Ada ,ok=true") == {"a.b": 1, "name": "Ada", "ok": True}
    assert parse_where('{"x": [1]}') == {"x": [1]}
    for bad in ["nothing", "[1]", "a..b=1"]:
        with pytest.raises((InvalidFilter, EntityPathError)):
            parse_where(bad)


async def test_a_running_run_can_be_cancelled_from_its_page(mf: MemFlow) -> None:
    handle = await started(mf, "waiter", "w-1", "go-1")
    await pending_step(mf, "w-1", "sleep")
    async with browser(create_app(mf, allow_actions=True)) as http:
        page = (await http.get("/runs/w-1")).text
        assert 'action="/actions/run/cancel/w-1"' in page
        assert "/actions/run/resume/" not in page  # only a failed run resumes
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        unknown = await http.post("/actions/run/explode/w-1", data={"csrf": token})
        assert unknown.status_code == 400 and "explode" in unknown.text
        done = await http.post("/actions/run/cancel/w-1", data={"csrf": token})
        assert done.status_code == 303
        with pytest.raises(WorkflowCancelled):
            await handle.result(timeout=10)
        page = (await http.get("/runs?status=cancelled")).text
    assert ids_in(page) == ["w-1"]


async def test_a_lost_backend_is_a_503_page_not_a_crash(
    mf: MemFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotmesh_core import BackendUnavailable
    from hotmesh_core.ui.data import Dashboard

    async def cut(self: Dashboard) -> None:
        raise BackendUnavailable("connection refused")

    monkeypatch.setattr(Dashboard, "operations", cut)
    async with browser(create_app(mf)) as http:
        response = await http.get("/operations")
    assert response.status_code == 503 and "connection refused" in response.text


async def test_a_failed_run_can_be_resumed_from_its_page(mf: MemFlow) -> None:
    handle = await started(mf, "breaks", "b-1")
    with pytest.raises(Exception, match="the tool broke"):
        await handle.result(timeout=10)
    async with browser(create_app(mf, allow_actions=True)) as http:
        page = (await http.get("/runs/b-1")).text
        assert 'action="/actions/run/resume/b-1"' in page
        assert "/actions/interrupt/" not in page  # it has finished: nothing to stop
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        done = await http.post("/actions/run/resume/b-1", data={"csrf": token})
        assert done.status_code == 303 and "resume" in done.headers["location"]
        with pytest.raises(Exception, match="the tool broke"):  # it ran the tool again
            await handle.result(timeout=10)
        again = await http.post("/actions/run/resume/w-404", data={"csrf": token})
        assert again.status_code == 404
