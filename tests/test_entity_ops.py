"""The reference semantics of entity operations (the backends are checked by conformance)."""

import pytest

from hotmesh_core.entity_ops import EntityPathError, apply_op, deep_merge


def test_deep_merge_merges_objects_at_every_depth_and_replaces_the_rest() -> None:
    base = {"a": {"b": {"c": 1, "d": [1]}, "x": 1}, "keep": 0}
    patch = {"a": {"b": {"d": [2], "e": {"f": 1}}}, "new": True}
    assert deep_merge(base, patch) == {
        "a": {"b": {"c": 1, "d": [2], "e": {"f": 1}}, "x": 1},
        "keep": 0,
        "new": True,
    }
    assert base["a"]["b"] == {"c": 1, "d": [1]}  # inputs are not modified


def test_apply_does_not_touch_the_input_document() -> None:
    doc = {"list": [1]}
    new, result, changed = apply_op(doc, "append", "list", 2)
    assert (new, result, changed) == ({"list": [1, 2]}, [1, 2], True)
    assert doc == {"list": [1]}


@pytest.mark.parametrize(
    ("op", "path", "value"),
    [
        ("increment", "s", 1),
        ("increment", "n", "1"),
        ("toggle", "n", None),
        ("append", "n", 1),
        ("set", None, [1]),
        ("merge", None, 3),
        ("increment", "s.deeper", 1),
        ("get", "a..b", None),
        ("frobnicate", "n", None),
        ("delete", None, None),
    ],
)
def test_type_errors_name_the_problem(op: str, path: str | None, value: object) -> None:
    with pytest.raises(EntityPathError):
        apply_op({"s": "text", "n": 1}, op, path, value)


def test_unchanged_operations_report_no_change() -> None:
    doc = {"a": 1}
    assert apply_op(doc, "set_if_not_exists", "a", 2)[2] is False
    assert apply_op(doc, "delete", "missing", None)[2] is False
    assert apply_op(doc, "get", "a", None) == (doc, 1, False)
