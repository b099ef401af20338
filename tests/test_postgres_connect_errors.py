"""Connection problems at init are typed errors that name the problem."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from hotmesh_core import BackendUnavailable, MemFlow
from hotmesh_postgres.connection import (
    InvalidDsn,
    UnsupportedServer,
    check_server_version,
    libpq_dsn,
)
from hotmesh_postgres.testing import test_dsn


@pytest.mark.parametrize("version", [130011, 120000, 90624])
def test_an_old_server_is_refused_by_name(version: int) -> None:
    with pytest.raises(UnsupportedServer, match="needs PostgreSQL 14 or later"):
        check_server_version(version)


@pytest.mark.parametrize("version", [140000, 150020, 160002])
def test_supported_servers_pass(version: int) -> None:
    check_server_version(version)


@pytest.mark.parametrize("dsn", ["not a dsn at all", "mysql://root@localhost/db", "host=x port"])
def test_a_malformed_dsn_is_refused_before_connecting(dsn: str) -> None:
    with pytest.raises(InvalidDsn, match="not a PostgreSQL"):
        libpq_dsn(dsn)


def test_sqlalchemy_urls_become_libpq_urls() -> None:
    assert libpq_dsn("postgresql+psycopg://u:p@h:5433/db").startswith("postgresql://u:p@h:5433")
    assert libpq_dsn("host=h dbname=d") == "host=h dbname=d"


async def test_an_unreachable_server_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="cannot connect to PostgreSQL"):
        await MemFlow.init(
            app_id="nowhere", backend="postgres", dsn="postgresql://postgres@127.0.0.1:1/x"
        )


async def test_bad_credentials_are_backend_unavailable_with_the_servers_words() -> None:
    params = conninfo_to_dict(test_dsn())
    params["user"] = "no_such_role_hotmesh"
    dsn = " ".join(f"{key}={value}" for key, value in params.items() if value is not None)
    with pytest.raises(BackendUnavailable, match="no_such_role_hotmesh"):
        await MemFlow.init(app_id="nobody", backend="postgres", dsn=dsn)
