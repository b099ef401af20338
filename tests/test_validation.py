"""The core validators on their own: app ids, names, ids, values, hook depth.

The same rules are proven on every backend by ``conformance/suite/test_bad_input.py``;
these pin the edges of each rule without a backend.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hotmesh_core import HookDepthExceeded, HotMeshError, InvalidIdentifier, SerializationError
from hotmesh_core.config import (
    validate_app_id,
    validate_name,
    validate_signal_id,
    validate_workflow_id,
)
from hotmesh_core.serde import MAX_DEPTH, dumps, ensure_json
from hotmesh_core.workflow import MAX_HOOK_DEPTH, _hook_depth


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


def _nested(depth: int, leaf: Any = None) -> Any:
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_is_limited_without_recursion_errors() -> None:
    assert ensure_json(_nested(MAX_DEPTH)) == _nested(MAX_DEPTH)
    for depth in (MAX_DEPTH + 1, 5_000, 100_000):  # 100,000 deep: json's RecursionError
        with pytest.raises(SerializationError, match=f"more than {MAX_DEPTH} deep"):
            ensure_json(_nested(depth))
    deep_dict: dict[str, Any] = {}
    node = deep_dict
    for _ in range(100_000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(SerializationError, match=f"more than {MAX_DEPTH} deep"):
        ensure_json(deep_dict)


def test_wide_values_are_not_deep() -> None:
    """Many containers side by side (the cheap pre-test fires) are still fine."""
    wide = [{"a": [i]} for i in range(10 * MAX_DEPTH)]
    assert ensure_json(wide) == wide


@pytest.mark.parametrize(
    "value", ["\ud800", ["\udbff"], {"\udc00": 1}, {"k": ["x", {"y": "a\udfffb"}]}]
)
def test_lone_surrogates_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError, match="lone surrogate"):
        dumps(value, what="signal data")


@pytest.mark.parametrize("value", ["\U0001f600", "\\ud800", "caf\u00e9", {"\U0001f600": "\u4e2d"}])
def test_real_characters_and_escaped_text_are_kept(value: Any) -> None:
    assert ensure_json(value) == value


def test_cycles_are_still_refused() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(SerializationError):
        ensure_json(cycle)


def test_hook_depth_is_read_from_the_dotted_dimension() -> None:
    assert _hook_depth("") == 0  # the job itself
    assert _hook_depth("g3") == 1
    assert _hook_depth("hook-0123abcd") == 1  # a hook started from outside
    assert _hook_depth("gg3.5") == 2
    assert _hook_depth("hhg3.5.9") == 3
    assert issubclass(HookDepthExceeded, HotMeshError)
    assert MAX_HOOK_DEPTH == 32


@pytest.mark.parametrize(
    "value",
    [10**5000, -(10**5000), [1, 10**5000], (10**5000,)],
    ids=["int", "negative int", "in a list", "in a tuple"],
)
def test_an_int_too_long_for_text_is_refused_alone_or_in_a_list(value: Any) -> None:
    """Beyond sys.get_int_max_str_digits an int has no JSON text: refused at the
    call (SerializationError), as every other unstorable value is."""
    with pytest.raises(SerializationError, match="not JSON-serializable"):
        ensure_json(value)


@pytest.mark.parametrize(
    "value", [0, -(2**63), 2**63, True, None, 1.5, -0.0, "text", [1, 2, 3], (1, None, False)]
)
def test_plain_values_normalize_as_their_json_reads_back(value: Any) -> None:
    """The short ways of ensure_json give what a JSON round trip gives."""
    normal = ensure_json(value)
    assert normal == json.loads(json.dumps(value))
    assert type(normal) is type(json.loads(json.dumps(value)))
    if value == 0 and isinstance(value, float):
        assert str(normal) == "0.0"  # no negative zero
