"""A peer's worker process for the multi-process W1 (bench/split.py).

``python -m bench.worker_proc ENGINE DSN``: serves W1's workflow on the
bench's queue, prints ``ready`` once it does, and stops on SIGTERM. HotMesh
needs no such module: its worker process is the ``hotmesh worker`` command.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

# DBOS dequeues from its queue table by polling; at its default (1 s) W1 would
# measure the poll. 10 ms, and no concurrency cap: every process takes what it can.
DBOS_QUEUE_POLL = 0.01


async def main(engine: str, dsn: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if engine == "absurd":
        from .adapters.absurd_engine import CONCURRENCY, WORKERS, serve

        serving = asyncio.create_task(serve(dsn, stop, WORKERS, CONCURRENCY))
        print("ready", flush=True)
        await serving
    elif engine == "pgqueuer":
        from .adapters.pgqueuer_floor import serve as serve_queue

        serving = asyncio.create_task(serve_queue(dsn, stop))
        print("ready", flush=True)
        await serving
    elif engine == "dbos":
        from dbos import DBOS, DBOSConfig

        from .adapters import dbos_engine  # noqa: F401  (registers the workflows)

        logging.getLogger("dbos").setLevel(logging.WARNING)
        config: DBOSConfig = {
            "name": "hotmesh-bench",
            "system_database_url": dsn,
            "run_admin_server": False,
            # Four worker processes at its default pool (20) would take 80 of the
            # server's 100 connections; HotMesh's processes have 10 each.
            "sys_db_pool_size": 10,
        }
        DBOS(config=config)
        DBOS.launch()
        await DBOS.register_queue_async(
            "bench", polling_interval_sec=DBOS_QUEUE_POLL, on_conflict="always_update"
        )
        print("ready", flush=True)
        await stop.wait()
        DBOS.destroy(destroy_registry=False)
    else:
        raise SystemExit(f"unknown engine {engine!r}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
