"""``hotmesh ui`` in a real browser: headless Chromium (Debian's ``chromium``,
driven by Playwright) against the dashboard command serving a real PostgreSQL.

The seed's research agent runs first; the browser then checks the runs list,
the run's waterfall by thread (main, each hook by name, the child linked),
the entity's history and a diff of two versions, that a ``<script>`` inside an
entity renders as text and never runs, and, with ``--allow-actions``, sends a
signal from a form that lets a waiting run finish.

Chromium must be at /usr/bin/chromium (``.ci/run`` installs it): without it
this test FAILS, unless ``HOTMESH_TEST_NO_BROWSER=1`` is set to skip it on
purpose. Screenshots go to a temporary folder, or to docs/screenshots/ (the
README's pictures) with ``HOTMESH_UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_postgres.testing import test_dsn

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
QUEUE = "agents"
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def _browser_or_fail() -> Any:
    """Playwright's async API, or a failure naming what is missing (a skip only when asked)."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            from playwright import async_api
        except ImportError:
            missing = 'playwright is missing (pip install -e ".[dev]")'
    if missing is not None:
        if os.environ.get("HOTMESH_TEST_NO_BROWSER") == "1":
            pytest.skip(f"HOTMESH_TEST_NO_BROWSER=1: {missing}")
        pytest.fail(f"the dashboard's browser test needs Chromium: {missing}", pytrace=False)
    return async_api


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"ui_example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def careless_note(signal_id: str) -> dict[str, Any]:
    """Keeps user data that looks like HTML, then waits for a signal."""
    entity = await workflow.entity()
    await entity.set({"note": EVIL, "approved": False})
    data = await workflow.wait_for(signal_id, timeout=3600)
    await entity.merge({"approved": True, "by": data})
    return {"approved_by": data}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def api() -> Any:
    return _browser_or_fail()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("HOTMESH_UPDATE_SCREENSHOTS") == "1":
        folder = ROOT / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


@pytest.fixture
def app_id() -> Iterator[str]:
    name = f"ui{uuid.uuid4().hex[:10]}"
    yield name

    async def drop() -> None:
        mf = await MemFlow.init(app_id=name, backend="postgres", dsn=test_dsn(), drop_on_close=True)
        await mf.shutdown()

    asyncio.run(drop())


@pytest.fixture
def dashboard(app_id: str, tmp_path: Path) -> Iterator[str]:
    """``hotmesh ui`` in its own process, as a user starts it; its base URL."""
    port = _free_port()
    command = [
        sys.executable,
        "-c",
        "from hotmesh_core.cli import main; main()",
        "ui",
        "--app",
        app_id,
        "--backend",
        "postgres",
        "--dsn",
        test_dsn(),
        "--port",
        str(port),
        "--allow-actions",
        "--refresh",
        "0.5",
    ]
    started = time.monotonic()
    log = tmp_path / "hotmesh-ui.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"hotmesh ui exited with {process.returncode}:\n{log.read_text()}")
                if time.monotonic() - started > 30:
                    pytest.fail("hotmesh ui did not listen within 30 s")
                time.sleep(0.05)
        assert "HotMesh dashboard for app" in log.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def agent_app(app_id: str) -> AsyncIterator[MemFlow]:
    """The research agent run to completion on PostgreSQL, and workers left running."""
    agent = _load_example("research_agent")
    await agent.main(app_id=app_id, backend="postgres", dsn=test_dsn())
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn())
    try:
        await mf.worker(QUEUE, workflows=[careless_note])
        yield mf
    finally:
        await mf.shutdown()


async def test_dashboard_in_chromium(
    api: Any, agent_app: MemFlow, dashboard: str, shots: Path
) -> None:
    mf = agent_app
    careless = await mf.workflow.start(
        "note", "careless_note", "note-<b>1</b>", ["go-note-1"], task_queue=QUEUE
    )
    for _ in range(200):
        if (await careless.export()).version >= 1:
            break
        await asyncio.sleep(0.05)
    [agent_run] = await mf.workflow.list_runs(workflow_name="research_agent")

    async with api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        expect = api.expect

        # -- the runs list ------------------------------------------------------------
        await page.goto(f"{dashboard}/runs")
        rows = page.locator("#runs-table tbody tr.run")
        await expect(rows).to_have_count(3)  # the agent, its fact-checking child, the note
        agent_row = page.locator(f'tr.run[data-id="{agent_run.workflow_id}"]')
        await expect(agent_row.locator(".status")).to_have_text("completed")
        await expect(agent_row).to_contain_text("research_agent")
        await expect(agent_row).to_contain_text("agents")
        await page.screenshot(path=str(shots / "runs.png"), full_page=True)
        # Live refresh: a run started now shows up without a reload.
        await mf.workflow.start("note", "careless_note", "note-live", ["go-live"], task_queue=QUEUE)
        await expect(page.locator('tr.run[data-id="note-live"] .status')).to_have_count(1)
        await expect(rows).to_have_count(4)

        await page.select_option("select[name=status]", "completed")
        await page.fill("input[name=workflow]", "research_agent")
        await page.click("form.filters button[type=submit]")
        await expect(rows).to_have_count(1)

        # -- the run: status, result, waterfall by thread ----------------------------
        await agent_row.locator("a").first.click()
        await expect(page.locator("#run-status")).to_have_text("completed")
        await expect(page.locator("#run-result")).to_contain_text("cautiously positive")
        lanes = page.locator("#waterfall tbody.lane")
        threads = await lanes.evaluate_all("els => els.map(e => e.dataset.thread)")
        assert threads[0] == "main"
        assert set(threads[1:]) == {
            "optimistic_perspective",
            "skeptical_perspective",
            "synthesize_perspectives",
        }
        bars = page.locator("#waterfall svg.bar rect")
        assert await bars.count() >= 15
        # Bars sit on one time axis: each starts at or after the run's start and
        # ends within it; the synthesis hook starts after both perspectives.
        spans = await page.locator("#waterfall tbody.lane").evaluate_all(
            """lanes => Object.fromEntries(lanes.map(l => [l.dataset.thread,
                 [...l.querySelectorAll('rect')].map(r => [parseFloat(r.getAttribute('x')),
                   parseFloat(r.getAttribute('x')) + parseFloat(r.getAttribute('width'))])]))"""
        )
        for spans_of_lane in spans.values():
            for left, right in spans_of_lane:
                assert 0 <= left <= right <= 100.5
        synthesis_start = min(left for left, _ in spans["synthesize_perspectives"])
        assert synthesis_start >= max(left for left, _ in spans["optimistic_perspective"])
        child = page.locator("#waterfall a.child")
        await expect(child).to_have_count(1)
        await page.screenshot(path=str(shots / "run.png"), full_page=True)
        await child.click()
        await expect(page.locator("h1")).to_contain_text(f"{agent_run.workflow_id}-")
        await expect(page.locator("#waterfall")).to_contain_text("verify_source_credibility")
        await page.go_back()

        # -- the memory: history, a diff of two versions, the document then ---------
        await page.click("#memory-link")
        history = page.locator("#history tbody tr")
        version = int(await history.first.get_attribute("data-version") or "0")
        assert version >= 6
        await expect(page.locator("#history")).to_contain_text("optimistic_perspective")
        await page.select_option("#diff-from", "1")
        await page.select_option("#diff-to", str(version))
        await page.click("#diff-button")
        diff = page.locator("#diff table")
        await expect(diff).to_contain_text("perspectives.synthesis")
        status_row = diff.locator("tr.changed", has_text="status")
        await expect(status_row).to_contain_text("researching")
        await expect(status_row).to_contain_text("completed")
        await page.screenshot(path=str(shots / "memory.png"), full_page=True)
        await page.goto(page.url.split("?")[0] + "?at=1")
        await expect(page.locator("#document-at")).to_contain_text('"status": "researching"')
        await expect(page.locator("#document-at")).not_to_contain_text("synthesis")

        # -- user data that looks like HTML stays text --------------------------------
        await page.goto(f"{dashboard}/runs")
        await page.click('tr.run[data-id="note-<b>1</b>"] a')
        await expect(page.locator("h1 code")).to_have_text("note-<b>1</b>")
        await page.click("#memory-link")
        await expect(page.locator("#document")).to_contain_text(json.dumps(EVIL))
        assert await page.evaluate("() => window.__pwned") is None
        assert await page.locator("main script, main img").count() == 0

        # -- an action: signal the waiting run from its page ---------------------------
        await page.goto(
            f"{dashboard}/runs/{careless.workflow_id.replace('<', '%3C').replace('>', '%3E')}"
        )
        await expect(page.locator("#pending")).to_contain_text("go-note-1")
        form = page.locator('form[action="/actions/signal"]')
        await form.locator("input[name=data]").fill('"ops"')
        await form.locator("button").click()
        await expect(page.locator("#note")).to_contain_text("delivered")
        await expect(page.locator("#run-status")).to_have_text("completed", timeout=15000)
        assert await careless.result(timeout=10) == {"approved_by": "ops"}

        await page.goto(f"{dashboard}/operations")
        await expect(page.locator("h1")).to_have_text("Operations")

        assert errors == [] and dialogs == []
        await browser.close()
