"""The entity query language compiled to SQL over the ``jobs`` table.

Each operator compiles to the shape a user's index is written with, so the
planner can use one (``tests/test_entity_explain.py`` proves it with EXPLAIN):

=============================  ===========================================  =====================
operator                       SQL (``x`` = ``context -> 'a' -> 'b'``)       index that serves it
=============================  ===========================================  =====================
equality, ``$in``              ``x = $1``, ``x = ANY($1::jsonb[])``          btree on ``(x)``
``$ne``                        ``x < $1 OR x > $1``                          btree on ``(x)``
``$gt``.. on a number          ``x > $1 AND jsonb_typeof(x) = 'number'``     btree on ``(x)``
``$gt``.. on a string          ``(x_text) COLLATE "C" > $1 AND ...``         btree ``text``
``$like``                      ``(x_text) COLLATE "C" LIKE $1 AND ...``      btree ``text`` (prefix)
``$exists``, ``$nin``          ``x IS [NOT] NULL``                           btree on ``(x)``
``$contains``                  ``context @> $1`` (the operand nested at      GIN ``context
                               its path)                                     jsonb_path_ops``
``true``/``false`` equality    also ``(x_text)::boolean``                    the seed's partial
=============================  ===========================================  =====================

Values are always bound parameters; path keys are validated
(:func:`hotmesh_core.entity_ops.split_path`) and written as quoted literals,
because an index expression holds them as constants. Only ``create_index``
writes values as literals (DDL takes no parameters), through
``psycopg.sql.Literal``.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from hotmesh_core.entity_query import AllOf, AnyOf, Compare, InvalidQuery, JobQuery, Node, Order

from .rows import jsonb

__all__ = ["Compiled", "compile_query", "index_statement", "path_expression"]

RANGE_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def path_expression(column: str, path: tuple[str, ...], *, text: bool) -> sql.Composable:
    """``column -> 'a' -> 'b'`` (``->>`` last when ``text``): an index's expression."""
    expression: sql.Composable = sql.Identifier(column)
    for position, part in enumerate(path):
        operator = "->>" if (text and position == len(path) - 1) else "->"
        expression = sql.SQL("({} {} {})").format(expression, sql.SQL(operator), sql.Literal(part))
    return expression


def _nest(path: tuple[str, ...], value: Any) -> Any:
    for part in reversed(path):
        value = {part: value}
    return value


class Compiled:
    """Conditions with their parameters, or (for DDL) with literals."""

    def __init__(self, *, literal: bool = False) -> None:
        self.literal = literal
        self.params: list[Any] = []

    def json(self, value: Any) -> sql.Composable:
        if self.literal:
            return sql.SQL("{}::jsonb").format(sql.Literal(json.dumps(value)))
        self.params.append(jsonb(value))
        return sql.Placeholder()

    def text(self, value: str) -> sql.Composable:
        if self.literal:
            return sql.Literal(value)
        self.params.append(value)
        return sql.SQL("%s::text")

    def json_list(self, values: list[Any]) -> sql.Composable:
        if self.literal:
            return sql.SQL("ARRAY[{}]::jsonb[]").format(
                sql.SQL(", ").join(sql.Literal(json.dumps(v)) for v in values)
            )
        self.params.append([jsonb(v) for v in values])
        return sql.SQL("%s::jsonb[]")

    def node(self, node: Node, column: str) -> sql.Composable:
        if isinstance(node, Compare):
            return self.compare(node, column)
        if isinstance(node, AllOf):
            if not node.items:
                return sql.SQL("true")
            return sql.SQL("({})").format(
                sql.SQL(" AND ").join(self.node(item, column) for item in node.items)
            )
        assert isinstance(node, AnyOf)
        return sql.SQL("({})").format(
            sql.SQL(" OR ").join(self.node(item, column) for item in node.items)
        )

    def compare(self, node: Compare, column: str) -> sql.Composable:
        x = path_expression(column, node.path, text=False)
        text = path_expression(column, node.path, text=True)
        op, value = node.op, node.value
        if op == "$eq":
            equality = sql.SQL("{} = {}").format(x, self.json(value))
            if isinstance(value, bool):
                # The form a partial index such as ``WHERE (context->>'isPremium')
                # ::boolean`` is written with, so the planner can prove it applies.
                cast = sql.SQL("({})::boolean").format(text)
                return sql.SQL("({} AND {})").format(
                    equality, cast if value else sql.SQL("NOT ") + cast
                )
            return equality
        if op == "$ne":
            # Two ranges rather than <>: a btree serves each (a BitmapOr).
            return sql.SQL("({x} < {v} OR {x} > {w})").format(
                x=x, v=self.json(value), w=self.json(value)
            )
        if op in RANGE_SQL:
            symbol = sql.SQL(RANGE_SQL[op])
            if isinstance(value, str):
                return sql.SQL("({} COLLATE \"C\" {} {} AND jsonb_typeof({}) = 'string')").format(
                    text, symbol, self.text(value), x
                )
            return sql.SQL("({} {} {} AND jsonb_typeof({}) = 'number')").format(
                x, symbol, self.json(value), x
            )
        if op == "$in":
            return sql.SQL("{} = ANY({})").format(x, self.json_list(value))
        if op == "$nin":
            return sql.SQL("({} IS NOT NULL AND NOT ({} = ANY({})))").format(
                x, x, self.json_list(value)
            )
        if op == "$exists":
            return sql.SQL("{} IS NOT NULL" if value else "{} IS NULL").format(x)
        if op == "$contains":
            return sql.SQL("{} @> {}").format(
                sql.Identifier(column), self.json(_nest(node.path, value))
            )
        if op == "$like":
            return sql.SQL("({} COLLATE \"C\" LIKE {} AND jsonb_typeof({}) = 'string')").format(
                text, self.text(value), x
            )
        raise InvalidQuery(f"unknown query operator {op!r}", operator=op)


def _order_keys(order: Order) -> list[tuple[sql.Composable, str]]:
    """The keyset key's SQL expressions and the casts to read a cursor back with."""
    if order.field != "path":
        column: sql.Composable = sql.Identifier(order.field)
        if order.field == "id":
            return [(sql.SQL('id COLLATE "C"'), "text")]
        return [(column, "timestamptz"), (sql.SQL('id COLLATE "C"'), "text")]
    x = path_expression("context", order.path, text=False)
    text = path_expression("context", order.path, text=True)
    other = 0 if order.descending else 4  # missing and the rest sort last either way
    rank = sql.SQL(
        "(CASE jsonb_typeof({x}) WHEN 'string' THEN 1 WHEN 'number' THEN 2"
        " WHEN 'boolean' THEN 3 ELSE {other} END)"
    ).format(x=x, other=sql.Literal(other))
    number = sql.SQL(
        "(CASE jsonb_typeof({x}) WHEN 'number' THEN ({t})::numeric"
        " WHEN 'boolean' THEN CASE WHEN {x} = 'true'::jsonb THEN 1 ELSE 0 END ELSE 0 END)"
    ).format(x=x, t=text)
    string = sql.SQL(
        "(CASE WHEN jsonb_typeof({x}) = 'string' THEN {t} ELSE '' END) COLLATE \"C\""
    ).format(x=x, t=text)
    return [
        (rank, "integer"),
        (number, "numeric"),
        (string, "text"),
        (sql.SQL('id COLLATE "C"'), "text"),
    ]


def compile_query(
    query: JobQuery, columns: str, *, count: bool = False
) -> tuple[sql.Composable, list[Any]]:
    """``SELECT columns, key columns FROM jobs WHERE ... ORDER BY key LIMIT n``
    (or ``SELECT count(*)``); the key columns are ``k0``, ``k1``...: the cursor."""
    compiled = Compiled()
    conditions: list[sql.Composable] = []
    for name, value in (
        ("entity", query.entity),
        ("status", query.status),
        ("workflow_name", query.workflow_name),
    ):
        if value is not None:
            conditions.append(sql.SQL("{} = {}").format(sql.Identifier(name), compiled.text(value)))
    if query.ids is not None:
        compiled.params.append(list(query.ids))
        conditions.append(sql.SQL("id = ANY(%s::text[])"))
    if query.updated_since is not None:
        compiled.params.append(query.updated_since)
        conditions.append(sql.SQL("updated_at >= to_timestamp(%s)"))
    conditions.append(compiled.node(query.where, query.target))
    where = sql.SQL(" AND ").join(conditions)
    if count:
        return sql.SQL("SELECT count(*)::bigint AS n FROM jobs WHERE {}").format(
            where
        ), compiled.params
    keys = _order_keys(query.order)
    direction = sql.SQL("DESC" if query.order.descending else "ASC")
    if query.after is not None:
        if len(query.after) != len(keys) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in query.after
        ):
            raise InvalidQuery("not a cursor of this query (its key does not fit)")
        compiled.params.extend(query.after)
        conditions.append(
            sql.SQL("({}) {} ({})").format(
                sql.SQL(", ").join(expression for expression, _cast in keys),
                sql.SQL("<" if query.order.descending else ">"),
                sql.SQL(", ").join(sql.SQL("%s::" + cast) for _expression, cast in keys),
            )
        )
        where = sql.SQL(" AND ").join(conditions)
    compiled.params.append(query.limit)
    statement = sql.SQL("SELECT {}, {} FROM jobs WHERE {} ORDER BY {} LIMIT %s").format(
        sql.SQL(columns),
        sql.SQL(", ").join(
            sql.SQL("({})::text AS {}").format(expression, sql.Identifier(f"k{n}"))
            for n, (expression, _cast) in enumerate(keys)
        ),
        where,
        sql.SQL(", ").join(sql.SQL("{} {}").format(e, direction) for e, _cast in keys),
    )
    return statement, compiled.params


def index_statement(
    name: str, entity: str, path: tuple[str, ...] | None, kind: str, where: Node
) -> sql.Composable:
    """``CREATE INDEX IF NOT EXISTS`` on the partitioned ``jobs``: PostgreSQL makes
    it on every partition, and on every partition attached later (the day
    partitions of ``hm_ensure_partition``), so one statement covers present and
    future partitions. ``name`` and ``kind`` were checked by the core."""
    predicate = Compiled(literal=True)
    condition = sql.SQL("entity = {} AND {}").format(
        sql.Literal(entity), predicate.node(where, "context")
    )
    if kind == "gin":
        target: sql.Composable = sql.SQL("USING gin (context jsonb_path_ops)")
    elif path is None:
        target = sql.SQL("(id)")
    elif kind == "text":
        target = sql.SQL('(({}) COLLATE "C")').format(path_expression("context", path, text=True))
    else:
        target = sql.SQL("(({}))").format(path_expression("context", path, text=False))
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON jobs {} WHERE {}").format(
        sql.Identifier(name), target, condition
    )
