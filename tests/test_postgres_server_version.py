"""The backend refuses a server older than PostgreSQL 14 with a clear error."""

from __future__ import annotations

import pytest

from hotmesh_postgres.connection import UnsupportedServer, check_server_version


@pytest.mark.parametrize("version", [130011, 120000, 90624])
def test_an_old_server_is_refused_by_name(version: int) -> None:
    with pytest.raises(UnsupportedServer, match="needs PostgreSQL 14 or later"):
        check_server_version(version)


@pytest.mark.parametrize("version", [140000, 150020, 160002])
def test_supported_servers_pass(version: int) -> None:
    check_server_version(version)
