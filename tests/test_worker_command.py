"""`hotmesh worker MODULE:ATTR` as deployed: a real process, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from hotmesh_core import MemFlow
from hotmesh_core.worker import registry
from hotmesh_core.worker_command import InvalidWorkerTarget, load_target
from hotmesh_postgres.testing import test_dsn

JOBS = '''
import asyncio
import os
from pathlib import Path

from hotmesh_core import workflow

LOG = Path(os.environ["HOTMESH_TEST_MARKS"])


async def slow(seconds: float) -> str:
    """Sleeps ``seconds`` on its first attempt only; notes each start and end."""
    first = not LOG.exists()
    with LOG.open("a") as log:
        log.write("start\\n")
    if first:
        await asyncio.sleep(seconds)
    with LOG.open("a") as log:
        log.write("end\\n")
    return "done"


async def job(seconds: float) -> str:
    acts = workflow.proxy_activities(activities=[slow])
    return await acts.slow(seconds)


served = {"workflows": [job], "activities": [slow]}
'''


class WorkerProcess:
    def __init__(self, tmp_path: Path, app: str, queue: str, grace: float) -> None:
        (tmp_path / "jobs.py").write_text(JOBS)
        self.marks = tmp_path / "marks.log"
        command = [
            sys.executable,
            "-c",
            "from hotmesh_core.cli import main; main()",
            "--app",
            app,
            "--backend",
            "postgres",
            "--dsn",
            test_dsn(),
            "worker",
            "jobs:served",
            "--queue",
            queue,
            "--grace",
            str(grace),
        ]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HOTMESH_")},
            "HOTMESH_TEST_MARKS": str(self.marks),
        }
        self.process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("serves queue", 60)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {text!r} from the worker:\n{''.join(self.lines)}")
            time.sleep(0.05)

    def starts(self) -> int:
        return self.marks.read_text().count("start") if self.marks.exists() else 0

    def stop(self, timeout: float) -> tuple[int, float]:
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - began


async def wait_until(condition: object, timeout: float = 30.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_sigterm_lets_the_running_activity_finish_and_exits_0(tmp_path: Path) -> None:
    app, queue = f"wc{uuid.uuid4().hex[:10]}", "jobs"
    worker = WorkerProcess(tmp_path, app, queue, grace=30)
    async with MemFlow.init(app_id=app, backend="postgres", dsn=test_dsn()) as mf:
        handle = await mf.workflow.start("e", "job", "j-1", [2.0], queue)
        await wait_until(lambda: worker.starts() == 1)
        code, _ = worker.stop(timeout=30)
        assert code == 0, "".join(worker.lines)
        assert worker.marks.read_text().split() == ["start", "end"]  # finished, not cut
        assert "stopping" in "".join(worker.lines)
        again = WorkerProcess(tmp_path, app, queue, grace=5)
        assert await handle.result(timeout=30) == "done"
        assert worker.starts() == 1  # the activity's result was recorded once, not re-run
        assert again.stop(timeout=30)[0] == 0


async def test_what_outlives_the_grace_is_handed_back_at_once(tmp_path: Path) -> None:
    app, queue = f"wc{uuid.uuid4().hex[:10]}", "jobs"
    worker = WorkerProcess(tmp_path, app, queue, grace=1)
    async with MemFlow.init(app_id=app, backend="postgres", dsn=test_dsn()) as mf:
        handle = await mf.workflow.start("e", "job", "j-2", [120.0], queue)
        await wait_until(lambda: worker.starts() == 1)
        code, took = worker.stop(timeout=30)
        assert code == 0, "".join(worker.lines)
        assert took < 15
        assert "handed back 1" in "".join(worker.lines)
        # The lease (30 s) was released: a new worker takes the activity at once.
        again = WorkerProcess(tmp_path, app, queue, grace=5)
        assert await handle.result(timeout=20) == "done"
        assert worker.starts() == 2
        assert again.stop(timeout=30)[0] == 0


def test_targets_of_every_documented_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shapes.py").write_text(
        "async def wf() -> None: ...\n"
        "def act() -> None: ...\n"
        "workflows = [wf]\n"
        "activities = {'act': act}\n"
        "as_list = [wf]\n"
        "as_map = {'workflows': [wf], 'activities': [act]}\n"
        "class Holder:\n    workflows = [wf]\n"
        "bad_key = {'workflow': [wf]}\n"
        "empty: list[object] = []\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def names(pair: tuple[object, object]) -> list[list[str] | None]:
        return [sorted(registry(x, "f")) if x else None for x in pair]  # type: ignore[arg-type]

    assert names(load_target("shapes")) == [["wf"], ["act"]]
    assert names(load_target("shapes:as_list")) == [["wf"], None]
    assert names(load_target("shapes:as_map")) == [["wf"], ["act"]]
    assert names(load_target("shapes:Holder")) == [["wf"], None]
    with pytest.raises(InvalidWorkerTarget, match="unknown keys"):
        load_target("shapes:bad_key")
    with pytest.raises(InvalidWorkerTarget, match="names no workflows"):
        load_target("shapes:empty")
    with pytest.raises(InvalidWorkerTarget, match="has no 'nope'"):
        load_target("shapes:nope")
    with pytest.raises(InvalidWorkerTarget, match="cannot import"):
        load_target("no_such_module_here:x")
