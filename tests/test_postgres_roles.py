"""Least privilege on a real server (docs/least-privilege.md).

One owner role provisions and maintains two apps; one worker role per app runs
its workflows with only the grants of ``hotmesh db grant``; a read-only role
inspects. Every role, and the database they live in, is made for this test run
under a unique name and dropped at the end.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hotmesh_core import MemFlow, workflow
from hotmesh_core.cli import main
from hotmesh_core.errors import HotMeshError
from hotmesh_postgres import PostgresBackend
from hotmesh_postgres.connection import PermissionDenied
from hotmesh_postgres.migrations import MigrationRequired
from hotmesh_postgres.testing import test_dsn

PASSWORD = "hm-roles-test"  # trust auth ignores it; password auth needs one


@dataclass
class Layout:
    database: str
    owner: str
    workers: dict[str, str]  # app -> its worker role
    reader: str  # read-only on app "one"
    admin: str  # the test server's own DSN (a superuser), on our database
    base: dict[str, str]

    def dsn(self, role: str) -> str:
        return make_conninfo(
            "", **{**self.base, "dbname": self.database, "user": role, "password": PASSWORD}
        )


def _admin_params() -> dict[str, str]:
    return {k: v for k, v in conninfo_to_dict(test_dsn()).items() if isinstance(v, str)}


def hotmesh(app: str, dsn: str, *db_command: str) -> Result:
    """``hotmesh --app APP --dsn DSN db ...``."""
    return CliRunner().invoke(main, ["--app", app, "--dsn", dsn, "db", *db_command])


def postgres(backend: object) -> PostgresBackend:
    assert isinstance(backend, PostgresBackend)
    return backend


@pytest.fixture(scope="module")
def layout() -> Iterator[Layout]:
    """The roles and a database of their own; dropped (database first) at the end."""
    tag = uuid.uuid4().hex[:8]
    base = _admin_params()
    database = f"hm_roles_{tag}"
    owner, reader = f"hmr_{tag}_owner", f"hmr_{tag}_reader"
    workers = {"one": f"hmr_{tag}_w1", "two": f"hmr_{tag}_w2"}
    roles = [owner, reader, *workers.values()]
    with psycopg.connect(make_conninfo("", **base), autocommit=True) as conn:
        for role in roles:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(PASSWORD)
                )
            )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(owner)
            )
        )
    admin = make_conninfo("", **{**base, "dbname": database})
    try:
        yield Layout(database, owner, workers, reader, admin, base)
    finally:
        with psycopg.connect(make_conninfo("", **base), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
            for role in roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def provisioned(layout: Layout) -> Layout:
    """The owner provisions both apps and grants each worker its own (one via the CLI)."""

    async def provision() -> None:
        for app in ("one", "two"):
            async with MemFlow.Client(app_id=app, backend="postgres", dsn=layout.dsn(layout.owner)):
                pass
        async with MemFlow.Client(
            app_id="one", backend="postgres", dsn=layout.dsn(layout.owner)
        ) as client:
            backend = postgres(client.backend)
            await backend.grant(layout.workers["one"])
            await backend.grant(layout.reader, read_only=True)

    asyncio.run(provision())
    result = hotmesh(
        "two", layout.dsn(layout.owner), "grant", "--role", layout.workers["two"], "--show"
    )
    assert result.exit_code == 0, result.output
    assert "GRANT USAGE ON SCHEMA" in result.output and "ALTER DEFAULT PRIVILEGES" in result.output
    return layout


# -- the workflow a worker role runs ------------------------------------------------


async def charge(amount: int) -> int:
    return amount * 100


async def note_hook(label: str, config: dict[str, object] | None = None) -> None:
    entity = await workflow.entity()
    await entity.append("hooks", label)


async def order(amount: int) -> dict[str, object]:
    entity = await workflow.entity()
    await entity.set({"amount": amount, "hooks": []})
    acts = workflow.proxy_activities(activities=[charge], start_to_close="10 seconds")
    cents = await acts.charge(amount)
    await entity.merge({"cents": cents})
    await workflow.exec_hook(None, "note_hook", ["paid"])
    await workflow.sleep_for("20ms")
    approval = await workflow.wait_for(f"approve-{workflow.info().workflow_id}")
    await entity.increment("approvals", 1)
    return {"cents": cents, "approval": approval, "entity": await entity.get()}


async def wait_running(mf: MemFlow, workflow_id: str) -> None:
    handle = await mf.workflow.get_handle(workflow_id)
    for _ in range(300):
        if (await handle.state()).get("cents") is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{workflow_id} did not get going")


def partitions(layout: Layout, app: str, table: str) -> dict[str, str]:
    """The partitions of ``app.table`` and their owners."""
    with psycopg.connect(layout.admin) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [f'"{app}".{table}'],
        ).fetchall()
    return dict(rows)


# -- tests -------------------------------------------------------------------------


async def test_a_worker_role_runs_a_workflow_on_its_app(provisioned: Layout) -> None:
    layout = provisioned
    async with MemFlow.init(
        app_id="one", backend="postgres", dsn=layout.dsn(layout.workers["one"])
    ) as mf:
        await mf.worker("orders", workflows=[order, note_hook], activities=[charge])
        handle = await mf.workflow.start("order", "order", "order-1", [7], "orders")
        await wait_running(mf, "order-1")
        await mf.workflow.signal("approve-order-1", {"by": "ada"})
        result = await handle.result(timeout=30)
        assert result == {
            "cents": 700,
            "approval": {"by": "ada"},
            "entity": {"amount": 7, "hooks": ["paid"], "cents": 700, "approvals": 1},
        }
        runs = await mf.workflow.list_runs(entity="order")
        assert [run.workflow_id for run in runs] == ["order-1"]
    with psycopg.connect(layout.admin) as conn:
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'one'"
        ).fetchall()
    assert owners == [(layout.owner,)]  # the worker created nothing


async def test_a_worker_role_cannot_open_another_app(provisioned: Layout) -> None:
    layout = provisioned
    intruder = layout.workers["one"]
    with pytest.raises(PermissionDenied) as refused:
        await MemFlow.Client(app_id="two", backend="postgres", dsn=layout.dsn(intruder))
    assert not isinstance(refused.value, psycopg.Error)
    assert (refused.value.role, refused.value.app) == (intruder, "two")
    assert f"role {intruder!r} has no access to app 'two'" in str(refused.value)
    assert "db grant" in str(refused.value)
    # Nor can it provision an app of its own: the owner must.
    with pytest.raises(MigrationRequired, match=r"hotmesh --app three db migrate"):
        await MemFlow.init(app_id="three", backend="postgres", dsn=layout.dsn(intruder))


async def test_a_read_only_role_reads_and_may_not_steer(provisioned: Layout) -> None:
    """Each refused operation is a typed PermissionDenied, not a psycopg error."""
    layout = provisioned
    async with MemFlow.init(
        app_id="one", backend="postgres", dsn=layout.dsn(layout.workers["one"])
    ) as mf:
        await mf.worker("orders", workflows=[order, note_hook], activities=[charge])
        await mf.workflow.start("order", "order", "order-ro", [1], "orders")
        await wait_running(mf, "order-ro")
        async with MemFlow.Client(
            app_id="one", backend="postgres", dsn=layout.dsn(layout.reader)
        ) as reader:
            handle = await reader.workflow.get_handle("order-ro")
            assert (await handle.state())["cents"] == 100
            assert "order-ro" in [run.workflow_id for run in await reader.workflow.list_runs()]
            attempts = {
                "signal": reader.workflow.signal("approve-order-ro", "sneaky"),
                "hook": reader.workflow.hook("order-ro", "orders", "note_hook", ["sneaky"]),
                "start": reader.workflow.start("order", "order", "order-x", [1], "orders"),
                "interrupt": handle.interrupt("sneaky"),
            }
            for name, attempt in attempts.items():
                with pytest.raises(PermissionDenied, match="may not do this on app 'one'") as err:
                    await attempt
                assert not isinstance(err.value, psycopg.Error), name
                assert err.value.role == layout.reader
        await mf.workflow.signal("approve-order-ro", "ok")
        result = await (await mf.workflow.get_handle("order-ro")).result(timeout=30)
        assert result["approval"] == "ok" and result["entity"]["hooks"] == ["paid"]


async def test_a_read_only_role_waits_for_a_result(provisioned: Layout) -> None:
    """A reader cannot ask for a job's end to be announced (an UPDATE): its
    result() reads, and a job that ends quietly (started eagerly, its starting
    handle kept, completed in that process) reaches it by the safety poll."""
    layout = provisioned
    async with MemFlow.init(
        app_id="one", backend="postgres", dsn=layout.dsn(layout.workers["one"])
    ) as mf:
        await mf.worker("orders", workflows=[order, note_hook], activities=[charge])
        started = await mf.workflow.start("order", "order", "order-wait", [2], "orders")
        await wait_running(mf, "order-wait")
        async with MemFlow.Client(
            app_id="one", backend="postgres", dsn=layout.dsn(layout.reader)
        ) as reader:
            handle = await reader.workflow.get_handle("order-wait")
            waiting = asyncio.ensure_future(handle.result(timeout=30))
            await asyncio.sleep(0.2)  # let it start waiting
            await mf.workflow.signal("approve-order-wait", "ok")
            assert (await started.result(timeout=30))["approval"] == "ok"
            assert (await waiting)["approval"] == "ok"


async def test_a_worker_roles_maintenance_pass_is_skipped_with_one_line(
    provisioned: Layout, caplog: pytest.LogCaptureFixture
) -> None:
    layout = provisioned
    before = partitions(layout, "two", "signals")
    caplog.set_level(logging.INFO, logger="hotmesh.postgres")
    async with MemFlow.Client(
        app_id="two", backend="postgres", dsn=layout.dsn(layout.workers["two"])
    ) as client:
        for _ in range(3):
            assert await client.backend.maintain() == 0
    records = [r for r in caplog.records if r.name == "hotmesh.postgres"]
    assert not [r for r in records if r.levelno >= logging.ERROR]
    skipped = [r for r in records if "skips the maintenance pass" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.INFO
    assert "hotmesh --app two db maintain" in skipped[0].getMessage()
    # Nobody has maintained "two" yet: said once, as a warning.
    stale = [r for r in records if "no maintenance pass for a day" in r.getMessage()]
    assert len(stale) == 1 and stale[0].levelno == logging.WARNING
    assert partitions(layout, "two", "signals") == before


async def test_the_owner_maintains_and_the_worker_writes_into_its_partitions(
    provisioned: Layout,
) -> None:
    layout = provisioned
    owner_dsn, worker_dsn = layout.dsn(layout.owner), layout.dsn(layout.workers["two"])
    async with MemFlow.init(app_id="two", backend="postgres", dsn=worker_dsn) as mf:
        await mf.worker("orders", workflows=[order, note_hook], activities=[charge])

        async def finish(workflow_id: str) -> None:
            handle = await mf.workflow.start(
                "order", "order", workflow_id, [2], "orders", expire="1 hour"
            )
            await wait_running(mf, workflow_id)
            await mf.workflow.signal(f"approve-{workflow_id}", "yes")
            await handle.result(timeout=30)

        await finish("teach")  # lands in 'keep'; the owner's pass learns the expire value
        async with MemFlow.Client(app_id="two", backend="postgres", dsn=owner_dsn) as owner:
            await owner.backend.maintain()
            made = {n for n in partitions(layout, "two", "jobs") if n.startswith("jobs_d")}
            assert made
            # A worker writes into partitions made after its grant (through the parent).
            await finish("dated")
            with psycopg.connect(layout.admin) as conn:
                (where,) = conn.execute(
                    "SELECT tableoid::regclass::text FROM two.jobs WHERE id = 'dated'"
                ).fetchone() or ("",)
            assert where.removeprefix("two.") in made
            at = datetime.now(timezone.utc) + timedelta(days=4)
            assert (
                await postgres(owner.backend).maintain(now=at) == 2
            )  # 'teach' by row, 'dated' by day
        assert where.removeprefix("two.") not in partitions(layout, "two", "jobs")
        with pytest.raises(HotMeshError):
            await mf.workflow.get_handle("dated")


async def test_a_superuser_maintains_as_the_owner(provisioned: Layout) -> None:
    """Partitions made by a superuser's pass still belong to the owner, who must drop them."""
    layout = provisioned
    at = datetime.now(timezone.utc) + timedelta(days=10)
    async with MemFlow.Client(app_id="one", backend="postgres", dsn=layout.admin) as admin:
        await postgres(admin.backend).maintain(now=at)
    owners = set(partitions(layout, "one", "signals").values())
    assert owners == {layout.owner}


async def test_a_schema_made_by_a_dba_is_provisioned_as_its_owner(provisioned: Layout) -> None:
    """A worker may not provision it; a superuser does, as the owner, so that every
    object has the owner's default privileges and can be migrated by it later."""
    layout = provisioned
    worker = layout.workers["one"]
    with psycopg.connect(layout.admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE SCHEMA four AUTHORIZATION {}").format(sql.Identifier(layout.owner))
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA four TO {}").format(sql.Identifier(worker)))
    with pytest.raises(MigrationRequired, match=rf"the owner's \('{layout.owner}'\) DSN"):
        await MemFlow.Client(app_id="four", backend="postgres", dsn=layout.dsn(worker))
    async with MemFlow.Client(app_id="four", backend="postgres", dsn=layout.admin):
        pass
    with psycopg.connect(layout.admin) as conn:
        owners = conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = 'four'"
            " UNION SELECT pg_get_userbyid(proowner) FROM pg_proc p JOIN pg_namespace n"
            " ON n.oid = p.pronamespace WHERE n.nspname = 'four'"
        ).fetchall()
    assert owners == [(layout.owner,)]


async def test_tables_of_later_migrations_are_covered(provisioned: Layout) -> None:
    """The owner's default privileges reach a table created after the grant."""
    layout = provisioned
    with psycopg.connect(layout.dsn(layout.owner), autocommit=True) as conn:
        conn.execute("CREATE TABLE one.later (id bigserial PRIMARY KEY, note text)")
    with psycopg.connect(layout.dsn(layout.workers["one"]), autocommit=True) as conn:
        conn.execute("INSERT INTO one.later (note) VALUES ('covered')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE one.later")
    with psycopg.connect(layout.dsn(layout.reader), autocommit=True) as conn:
        assert conn.execute("SELECT note FROM one.later").fetchall() == [("covered",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM one.later")


def test_only_the_owner_may_grant(provisioned: Layout) -> None:
    layout = provisioned
    result = hotmesh(
        "one", layout.dsn(layout.workers["one"]), "grant", "--role", layout.workers["two"]
    )
    assert result.exit_code == 1
    assert "only app 'one''s owner" in result.output
