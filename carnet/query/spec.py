"""Structured queries: a JSON-able spec, validated against a table's columns, compiled without string SQL.

A spec is what `src.df(...)` / `src.query(...)` send::

    {"columns": ["region", "amount"],
     "where": [["amount", ">=", 10], ["region", "in", ["north", "south"]], ["note", "is_null"]],
     "order_by": ["region", ["amount", "desc"]],
     "limit": 1000,
     "offset": 2000,
     "group_by": ["region"],
     "aggregates": {"amount": "sum", "*": "count"}}

Column names must be columns of the table (exact match), so a name can never carry SQL; values always
travel as bound parameters. Two compilers share one validated `QuerySpec`: `to_sqlalchemy` (Core
expressions, pushed down to SQL servers) and `to_duckdb` (quoted identifiers and `?` parameters, for the
org's warehouse). An aggregate's result column is named after its input column (`"*"` gives `count`).
Engines keep their own semantics where SQL leaves them free: NULL placement in `order_by` (PostgreSQL/DuckDB
last, MariaDB first), `like` case sensitivity (MariaDB's default collation ignores case) and AVG precision
(MariaDB keeps 4 decimals).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from carnet.errors import ValidationError

MAX_LIMIT = 10_000_000
MAX_IN_VALUES = 10_000
MAX_STRING = 65_536
_INT64 = (-(2**63), 2**63 - 1)

COMPARISONS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
# contains: the value as literal text (its % and _ match themselves), any case: a search box's operator.
OPS = frozenset([*COMPARISONS, "in", "not_in", "like", "ilike", "contains", "is_null", "not_null", "between"])
AGGREGATES = frozenset(["sum", "avg", "min", "max", "count", "count_distinct"])
_SPEC_KEYS = frozenset(["columns", "where", "order_by", "limit", "offset", "group_by", "aggregates"])


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: object = None


@dataclass(frozen=True)
class Aggregate:
    column: str  # a table column, or "*" (count only)
    func: str
    name: str  # the result column


@dataclass(frozen=True)
class QuerySpec:
    columns: tuple[str, ...] = ()  # empty: every column
    where: tuple[Condition, ...] = ()
    order_by: tuple[tuple[str, str], ...] = ()
    limit: int | None = None
    group_by: tuple[str, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    offset: int = 0  # rows skipped before the limit (pages of a table); last, so positional uses stay valid

    @property
    def is_aggregate(self) -> bool:
        return bool(self.group_by or self.aggregates)

    def output_columns(self) -> tuple[str, ...]:
        if self.is_aggregate:
            return self.group_by + tuple(a.name for a in self.aggregates)
        return self.columns


def parse_spec(raw: Mapping | QuerySpec | None, known_columns: Iterable[str]) -> QuerySpec:
    """Check `raw` against the table's column names; every problem is a ValidationError naming the field.
    A QuerySpec is checked again against these columns, but its limit is kept as it is: callers' limits
    were checked when parsed, and Carnet's own row caps (max_rows + 1) may go past MAX_LIMIT."""
    if isinstance(raw, QuerySpec):
        checked = parse_spec({**_unparse(raw), "limit": None}, known_columns)
        return dataclasses.replace(checked, limit=raw.limit)
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValidationError("A query must be an object", field="query")
    unknown = sorted(set(raw) - _SPEC_KEYS, key=str)
    if unknown:
        raise ValidationError(f"Unknown query field {unknown[0]!r}", field=str(unknown[0]))
    known = set(known_columns)

    def column(value, field: str) -> str:
        if not isinstance(value, str) or value not in known:
            raise ValidationError(f"Unknown column {value!r} in {field}", field=field)
        return value

    columns = tuple(column(c, "columns") for c in _list(raw.get("columns"), "columns"))
    where = tuple(_condition(c, column) for c in _list(raw.get("where"), "where"))
    group_by = tuple(column(c, "group_by") for c in _list(raw.get("group_by"), "group_by"))
    aggregates = _aggregates(raw.get("aggregates"), column)
    if (group_by or aggregates) and columns:
        raise ValidationError(
            "columns cannot be combined with group_by/aggregates: the result holds the group_by columns "
            "and the aggregates",
            field="columns",
        )
    names = [*group_by, *(a.name for a in aggregates)]
    if len(set(names)) != len(names):
        raise ValidationError("A result column appears twice in group_by/aggregates", field="aggregates")
    spec = QuerySpec(columns, where, (), _limit(raw.get("limit")), group_by, aggregates)
    # Once grouped, only result columns can be sorted on; otherwise any column of the table.
    sortable = set(spec.output_columns()) if spec.is_aggregate else known
    order_by = tuple(_order(item, sortable) for item in _list(raw.get("order_by"), "order_by"))
    offset = _offset(raw.get("offset"))
    return QuerySpec(columns, where, order_by, spec.limit, group_by, aggregates, offset)


def _unparse(spec: QuerySpec) -> dict:
    return {
        "columns": list(spec.columns),
        "where": [[c.column, c.op, c.value] for c in spec.where],
        "order_by": [list(o) for o in spec.order_by],
        "limit": spec.limit,
        "group_by": list(spec.group_by),
        "aggregates": {a.column: a.func for a in spec.aggregates},
        "offset": spec.offset,
    }


def _list(value, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValidationError(f"{field} must be a list", field=field)
    return list(value)


def _scalar(value, field: str):
    if isinstance(value, bool | str | int | float):
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise ValidationError(f"A value in {field} is longer than {MAX_STRING} characters", field=field)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"A value in {field} is not a finite number", field=field)
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            raise ValidationError(f"A value in {field} is out of the 64-bit integer range", field=field)
        return value
    raise ValidationError(
        f"Invalid value {value!r} in {field}: use a string, number or boolean (is_null/not_null for NULL)",
        field=field,
    )


def _condition(item, column) -> Condition:
    if not isinstance(item, list | tuple) or len(item) not in (2, 3):
        raise ValidationError(f"Invalid condition {item!r}: use [column, operator, value]", field="where")
    name = column(item[0], "where")
    op = item[1]
    if not isinstance(op, str) or op not in OPS:
        raise ValidationError(f"Unknown operator {op!r} in where: use one of {sorted(OPS)}", field="where")
    value = item[2] if len(item) == 3 else None
    if op in ("is_null", "not_null"):
        if value is not None:
            raise ValidationError(f"{op} takes no value", field="where")
        return Condition(name, op)
    if len(item) != 3:
        raise ValidationError(f"Operator {op!r} needs a value", field="where")
    if op in ("in", "not_in"):
        values = _list(value, "where")
        if len(values) > MAX_IN_VALUES:
            raise ValidationError(f"{op} takes at most {MAX_IN_VALUES} values", field="where")
        return Condition(name, op, tuple(_scalar(v, "where") for v in values))
    if op == "between":
        bounds = _list(value, "where")
        if len(bounds) != 2:
            raise ValidationError("between takes [low, high]", field="where")
        return Condition(name, op, tuple(_scalar(v, "where") for v in bounds))
    if op in ("like", "ilike", "contains") and not isinstance(value, str):
        raise ValidationError(f"{op} takes a string", field="where")
    return Condition(name, op, _scalar(value, "where"))


def _aggregates(value, column) -> tuple[Aggregate, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValidationError("aggregates must be an object {column: function}", field="aggregates")
    result = []
    for name, func in value.items():
        if not isinstance(func, str) or func not in AGGREGATES:
            raise ValidationError(
                f"Unknown aggregate {func!r} for {name!r}: use one of {sorted(AGGREGATES)}",
                field="aggregates",
            )
        if name == "*":
            if func != "count":
                raise ValidationError("'*' can only be counted", field="aggregates")
            result.append(Aggregate("*", "count", "count"))
        else:
            result.append(Aggregate(column(name, "aggregates"), func, name))
    return tuple(result)


def _limit(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 0 to {MAX_LIMIT}", field="limit")
    return value


def _offset(value) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ValidationError(f"offset must be an integer from 0 to {MAX_LIMIT}", field="offset")
    return value


def _order(item, sortable: set[str]) -> tuple[str, str]:
    name, direction = (item, "asc") if isinstance(item, str) else (None, None)
    if isinstance(item, list | tuple) and len(item) == 2:
        name, direction = item
    if not isinstance(name, str) or name not in sortable:
        raise ValidationError(f"Unknown column {name!r} in order_by", field="order_by")
    if direction not in ("asc", "desc"):
        raise ValidationError(f"Invalid direction {direction!r} in order_by: asc or desc", field="order_by")
    return name, direction


# --- SQLAlchemy (push-down to SQL servers) -------------------------------------------------------------


def to_sqlalchemy(spec: Mapping | QuerySpec | None, table: sa.Table | sa.Subquery) -> sa.Select:
    """A Core SELECT on `table`; every value is a bound parameter."""
    spec = parse_spec(spec, table.c.keys())
    cols = table.c
    if spec.is_aggregate:
        labels = {name: cols[name] for name in spec.group_by}
        for agg in spec.aggregates:
            labels[agg.name] = _sa_aggregate(agg, cols).label(agg.name)
        query = sa.select(*labels.values()).group_by(*(cols[name] for name in spec.group_by))
        sort = labels
    else:
        query = sa.select(*(cols[name] for name in spec.columns)) if spec.columns else sa.select(table)
        sort = cols
    query = query.select_from(table)
    conditions = [_sa_condition(c, cols[c.column]) for c in spec.where]
    if conditions:
        query = query.where(*conditions)
    for name, direction in spec.order_by:
        expr = sort[name]  # a Label sorts by the result column's name
        query = query.order_by(expr.desc() if direction == "desc" else expr.asc())
    if spec.limit is not None:
        query = query.limit(spec.limit)
    if spec.offset:
        query = query.offset(spec.offset)
    return query


def _sa_aggregate(agg: Aggregate, cols):
    if agg.column == "*":
        return sa.func.count()
    col = cols[agg.column]
    if agg.func == "count_distinct":
        return sa.func.count(sa.distinct(col))
    return getattr(sa.func, agg.func)(col)


def _sa_condition(cond: Condition, col):
    op, value = cond.op, cond.value

    def bind(v):  # typed as the column, so "2024-01-02" compares with a DATE column on every server
        return sa.bindparam(None, v, type_=col.type)

    if op in COMPARISONS:
        return {
            "=": col.__eq__,
            "!=": col.__ne__,
            "<": col.__lt__,
            "<=": col.__le__,
            ">": col.__gt__,
            ">=": col.__ge__,
        }[op](bind(value))
    if op in ("in", "not_in"):
        values = sa.bindparam(None, list(value), type_=col.type, expanding=True)
        return col.in_(values) if op == "in" else col.not_in(values)
    if op == "like":
        return col.like(value)
    if op == "ilike":
        return col.ilike(value)
    if op == "contains":
        return col.icontains(value, autoescape=True)
    if op == "is_null":
        return col.is_(None)
    if op == "not_null":
        return col.is_not(None)
    return col.between(bind(value[0]), bind(value[1]))


# --- DuckDB (the org's warehouse) ------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """A double-quoted identifier; embedded quotes doubled, so any name stays one identifier."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValidationError(f"Invalid identifier {name!r}", field="identifier")
    return '"' + name.replace('"', '""') + '"'


def to_duckdb(
    spec: Mapping | QuerySpec | None,
    relation_name: str | tuple[str, ...],
    known_columns: Iterable[str] | None = None,
) -> tuple[str, list]:
    """(sql, params) for DuckDB. `relation_name` is one name or (schema, name); a raw mapping needs the
    relation's `known_columns` to be validated."""
    if not isinstance(spec, QuerySpec):
        if known_columns is None:
            raise ValidationError("A query spec needs the relation's columns to be validated", field="query")
        spec = parse_spec(spec, known_columns)
    parts = (relation_name,) if isinstance(relation_name, str) else tuple(relation_name)
    relation = ".".join(quote_identifier(p) for p in parts)
    q = quote_identifier
    params: list = []
    if spec.is_aggregate:
        select = [q(name) for name in spec.group_by]
        for agg in spec.aggregates:
            select.append(f"{_duck_aggregate(agg)} AS {q(agg.name)}")
    else:
        select = [q(name) for name in spec.columns] or ["*"]
    sql = f"SELECT {', '.join(select)} FROM {relation}"
    if spec.where:
        sql += " WHERE " + " AND ".join(_duck_condition(c, params) for c in spec.where)
    if spec.group_by:
        sql += " GROUP BY " + ", ".join(q(name) for name in spec.group_by)
    if spec.order_by:
        sql += " ORDER BY " + ", ".join(f"{q(name)} {direction.upper()}" for name, direction in spec.order_by)
    if spec.limit is not None:
        sql += " LIMIT ?"
        params.append(spec.limit)
    if spec.offset:
        sql += " OFFSET ?"
        params.append(spec.offset)
    return sql, params


def _duck_aggregate(agg: Aggregate) -> str:
    if agg.column == "*":
        return "count(*)"
    if agg.func == "count_distinct":
        return f"count(DISTINCT {quote_identifier(agg.column)})"
    return f"{agg.func}({quote_identifier(agg.column)})"


def _duck_condition(cond: Condition, params: list) -> str:
    col, op, value = quote_identifier(cond.column), cond.op, cond.value
    if op in COMPARISONS:
        params.append(value)
        return f"{col} {COMPARISONS[op]} ?"
    if op in ("in", "not_in"):
        if not value:  # IN () is not SQL: an empty list matches nothing, NOT IN matches everything
            return "FALSE" if op == "in" else "TRUE"
        params.extend(value)
        return f"{col} {'IN' if op == 'in' else 'NOT IN'} ({', '.join('?' * len(value))})"
    if op in ("like", "ilike"):
        params.append(value)
        return f"{col} {op.upper()} ?"
    if op == "contains":
        params.append(value)
        return f"contains(lower({col}), lower(?))"
    if op == "is_null":
        return f"{col} IS NULL"
    if op == "not_null":
        return f"{col} IS NOT NULL"
    params.extend(value)
    return f"{col} BETWEEN ? AND ?"
