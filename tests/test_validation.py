"""The core validators on their own: app ids, names, ids, values, hook depth.

The same rules are proven on every backend by ``conformance/suite/test_bad_input.py``;
these pin the edges of each rule without a backend.
"""

from __future__ import annotations

import pytest

from hotmesh_core import InvalidIdentifier
from hotmesh_core.config import (
    validate_app_id,
    validate_name,
    validate_signal_id,
    validate_workflow_id,
)


@pytest.mark.parametrize(
    "app_id",
    ["public", "information_schema", "pg_catalog", "pg_toast", "pg_temp", "pg_temp_3", "pg_"],
)
def test_postgres_own_schemas_are_no_app_ids(app_id: str) -> None:
    with pytest.raises(InvalidIdentifier, match="reserved by PostgreSQL"):
        validate_app_id(app_id)


@pytest.mark.parametrize("app_id", ["publicity", "pgx", "pg-x", "my_public", "a", "x" * 48])
def test_names_near_the_reserved_ones_are_fine(app_id: str) -> None:
    assert validate_app_id(app_id) == app_id


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\x00"])
def test_no_validator_accepts_a_trailing_newline(suffix: str) -> None:
    """Patterns are fullmatched: ``$`` alone would let ``"app\\n"`` through."""
    with pytest.raises(InvalidIdentifier):
        validate_app_id("app" + suffix)
    with pytest.raises(InvalidIdentifier):
        validate_name("queue" + suffix, "task_queue")
    with pytest.raises(InvalidIdentifier):
        validate_workflow_id("job-1" + suffix)
    with pytest.raises(InvalidIdentifier):
        validate_signal_id("signal-1" + suffix)


def test_ids_refuse_empty_and_lone_surrogates_but_take_any_printable_text() -> None:
    for bad in ["", "a\ud800", "\udfff", "x" * 256]:
        with pytest.raises(InvalidIdentifier, match="workflow_id"):
            validate_workflow_id(bad)
    for good in ["a", "order 17/β", "id-\U0001f600", "x" * 255]:
        assert validate_workflow_id(good) == good
