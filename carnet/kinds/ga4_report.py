"""Google Analytics 4 report definitions: a source's options checked, turned into a Data API ``runReport``
request, and the report's rows turned into Arrow. No network and no credentials here (see
``carnet.kinds.ga4``).

Options of a ``ga4`` source::

    {"property_id": "123456789",                    # digits, or "properties/123456789"
     "dimensions": ["date", "country"],             # at most 9 GA4 dimension names
     "metrics": ["activeUsers", "bounceRate"],      # at most 10 GA4 metric names
     "date_ranges": [{"start_date": "30daysAgo", "end_date": "today"}],   # 1-4; YYYY-MM-DD, today,
                                                    # yesterday or NdaysAgo; default 28daysAgo..yesterday
     "dimension_filter": {"all": [{"field": "country", "in": ["France", "Japan"]},
                                  {"not": {"field": "deviceCategory", "equals": "tablet"}}]},
     "order_bys": [{"metric": "activeUsers", "desc": true}, {"dimension": "date"}],
     "limit": 1000}                                 # most rows read; default all (up to source_max_rows)

``dimension_filter`` is one of: ``{"field", "equals" | "contains" | "begins_with" | "ends_with": text,
"case_sensitive": bool}``, ``{"field", "in": [texts]}``, ``{"all": [filters]}``, ``{"any": [filters]}``,
``{"not": filter}``; fields must be requested dimensions (the API's rule), nesting depth at most 5.
``api_endpoint`` is refused: where the credentials go is the operator's setting ``ga4_api_endpoint``.
"""

from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa
import pyarrow.compute as pc

from carnet.errors import ValidationError

OPTION_KEYS = (
    "property_id",
    "dimensions",
    "metrics",
    "date_ranges",
    "dimension_filter",
    "order_bys",
    "limit",
)
DEFAULT_DATE_RANGES = [{"start_date": "28daysAgo", "end_date": "yesterday"}]
# The API's own limits, checked here so that a mistake is a 400 at save time rather than at first read.
MAX_DIMENSIONS, MAX_METRICS, MAX_DATE_RANGES = 9, 10, 4
MAX_FILTER_DEPTH, MAX_FILTER_VALUES = 5, 1000

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(:[A-Za-z0-9_]+)?$")  # activeUsers, customEvent:plan
_PROPERTY = re.compile(r"^(?:properties/)?([0-9]{1,20})$")
_RELATIVE_DATE = re.compile(r"^(today|yesterday|[0-9]{1,4}daysAgo)$")
_MATCH_TYPES = {
    "equals": "EXACT",
    "contains": "CONTAINS",
    "begins_with": "BEGINS_WITH",
    "ends_with": "ENDS_WITH",
}


def _fail(message: str, key: str) -> ValidationError:
    return ValidationError(message, field=f"options.{key}")


def validate_options(options: dict) -> dict:
    """The options, checked and normalized (a ValidationError names the option)."""
    if not isinstance(options, dict):
        raise ValidationError("A ga4 source's options must be an object", field="options")
    if "api_endpoint" in options:
        # It decides where the service account's token is sent: the operator's choice, never a user's.
        raise _fail(
            "options.api_endpoint cannot be set on a source: the operator sets where Google Analytics "
            "requests go (CARNET_GA4_API_ENDPOINT)",
            "api_endpoint",
        )
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise _fail(f"Unknown option {unknown[0]!r} (known: {', '.join(OPTION_KEYS)})", unknown[0])
    match = _PROPERTY.match(str(options.get("property_id", "")).strip())
    if not match or isinstance(options.get("property_id"), bool):
        raise _fail("options.property_id must be a GA4 property id (digits)", "property_id")
    dimensions = _names(options.get("dimensions", []), "dimensions", MAX_DIMENSIONS)
    metrics = _names(options.get("metrics", []), "metrics", MAX_METRICS)
    if not metrics:
        raise _fail("A ga4 source needs at least one metric", "metrics")
    both = sorted(set(dimensions) & set(metrics))
    if both:
        raise _fail(f"{both[0]!r} is both a dimension and a metric", "metrics")
    result = {
        "property_id": match.group(1),
        "dimensions": dimensions,
        "metrics": metrics,
        "date_ranges": _date_ranges(options.get("date_ranges", DEFAULT_DATE_RANGES)),
    }
    if options.get("dimension_filter") is not None:
        _check_filter(options["dimension_filter"], set(dimensions), 1)
        result["dimension_filter"] = options["dimension_filter"]
    if options.get("order_bys") is not None:
        result["order_bys"] = _order_bys(options["order_bys"], dimensions, metrics)
    if options.get("limit") is not None:
        limit = options["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _fail("options.limit must be a positive integer", "limit")
        result["limit"] = limit
    return result


def _names(value, key: str, most: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f"options.{key} must be a list of GA4 {key[:-1]} names", key)
    if len(value) > most:
        raise _fail(f"Google Analytics 4 allows at most {most} {key} per report", key)
    for name in value:
        if not _NAME.match(name):
            raise _fail(f"{name!r} is not a GA4 {key[:-1]} name", key)
    if len(set(value)) != len(value):
        raise _fail(f"options.{key} names a {key[:-1]} twice", key)
    return list(value)


def _date(value, key: str) -> dt.date | None:
    """The date of an absolute YYYY-MM-DD, None for a relative one (today, yesterday, NdaysAgo)."""
    if isinstance(value, str) and _RELATIVE_DATE.match(value):
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise _fail(f"options.date_ranges: {key} must be YYYY-MM-DD, today, yesterday or NdaysAgo", "date_ranges")


def _date_ranges(value) -> list[dict]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_DATE_RANGES:
        raise _fail(f"options.date_ranges must be a list of 1 to {MAX_DATE_RANGES} ranges", "date_ranges")
    result = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"start_date", "end_date"}:
            raise _fail("Each date range is {start_date, end_date}", "date_ranges")
        start, end = _date(item["start_date"], "start_date"), _date(item["end_date"], "end_date")
        if start and end and start > end:
            raise _fail("options.date_ranges: start_date is after end_date", "date_ranges")
        result.append({"start_date": item["start_date"], "end_date": item["end_date"]})
    return result


def _check_filter(node, dimensions: set[str], depth: int) -> None:
    if depth > MAX_FILTER_DEPTH:
        raise _fail(f"options.dimension_filter is nested deeper than {MAX_FILTER_DEPTH}", "dimension_filter")
    if not isinstance(node, dict):
        raise _fail("options.dimension_filter must be an object", "dimension_filter")
    groups = [k for k in ("all", "any", "not") if k in node]
    if groups:
        if len(node) != 1:
            raise _fail(f"A {groups[0]!r} filter has no other keys", "dimension_filter")
        children = [node["not"]] if groups[0] == "not" else node[groups[0]]
        if not isinstance(children, list) or not children:
            raise _fail(f"{groups[0]!r} takes a non-empty list of filters", "dimension_filter")
        for child in children:
            _check_filter(child, dimensions, depth + 1)
        return
    field = node.get("field")
    if field not in dimensions:
        raise _fail(f"Filter field {field!r} is not one of the source's dimensions", "dimension_filter")
    tests = [k for k in (*_MATCH_TYPES, "in") if k in node]
    if len(tests) != 1 or set(node) - {"field", "case_sensitive", tests[0]}:
        raise _fail(
            "A filter is {field, one of equals/contains/begins_with/ends_with/in, case_sensitive}",
            "dimension_filter",
        )
    value = node[tests[0]]
    values = value if tests[0] == "in" else [value]
    if not isinstance(values, list) or not values or len(values) > MAX_FILTER_VALUES:
        raise _fail(f"'in' takes a list of 1 to {MAX_FILTER_VALUES} texts", "dimension_filter")
    if not all(isinstance(v, str) for v in values):
        raise _fail("Filter values are texts", "dimension_filter")
    if not isinstance(node.get("case_sensitive", False), bool):
        raise _fail("case_sensitive is true or false", "dimension_filter")


def _order_bys(value, dimensions: list[str], metrics: list[str]) -> list[dict]:
    if not isinstance(value, list):
        raise _fail("options.order_bys must be a list", "order_bys")
    result = []
    for item in value:
        kinds = [k for k in ("dimension", "metric") if isinstance(item, dict) and k in item]
        if len(kinds) != 1 or set(item) - {kinds[0], "desc"} or not isinstance(item.get("desc", False), bool):
            raise _fail('Each order is {"dimension" or "metric": name, "desc": bool}', "order_bys")
        allowed = dimensions if kinds[0] == "dimension" else metrics
        if item[kinds[0]] not in allowed:
            message = f"Cannot order by {item[kinds[0]]!r}: not one of the source's {kinds[0]}s"
            raise _fail(message, "order_bys")
        result.append({kinds[0]: item[kinds[0]], "desc": item.get("desc", False)})
    return result


# -- to the API -------------------------------------------------------------------------------------
def filter_expression(node: dict) -> dict:
    """A checked ``dimension_filter`` as the API's FilterExpression (snake_case, as the client takes it)."""
    if "all" in node:
        return {"and_group": {"expressions": [filter_expression(c) for c in node["all"]]}}
    if "any" in node:
        return {"or_group": {"expressions": [filter_expression(c) for c in node["any"]]}}
    if "not" in node:
        return {"not_expression": filter_expression(node["not"])}
    case = node.get("case_sensitive", False)
    if "in" in node:
        in_list = {"values": node["in"], "case_sensitive": case}
        return {"filter": {"field_name": node["field"], "in_list_filter": in_list}}
    test = next(k for k in _MATCH_TYPES if k in node)
    string_filter = {"match_type": _MATCH_TYPES[test], "value": node[test], "case_sensitive": case}
    return {"filter": {"field_name": node["field"], "string_filter": string_filter}}


def report_request(options: dict, offset: int, limit: int) -> dict:
    """One page of the report as a RunReportRequest mapping."""
    request = {
        "property": f"properties/{options['property_id']}",
        "dimensions": [{"name": d} for d in options["dimensions"]],
        "metrics": [{"name": m} for m in options["metrics"]],
        "date_ranges": [dict(r) for r in options["date_ranges"]],
        "offset": offset,
        "limit": limit,
    }
    if options.get("dimension_filter"):
        request["dimension_filter"] = filter_expression(options["dimension_filter"])
    for order in options.get("order_bys", []):
        key = "dimension" if "dimension" in order else "metric"
        request.setdefault("order_bys", []).append({key: {f"{key}_name": order[key]}, "desc": order["desc"]})
    return request


# -- from the API -----------------------------------------------------------------------------------
def metric_arrow_type(type_name: str) -> pa.DataType:
    """TYPE_INTEGER -> int64; the other numeric types (float, currency, durations, distances) -> float64."""
    return pa.int64() if type_name.removeprefix("TYPE_") == "INTEGER" else pa.float64()


def column_type(name: str, arrow_type: pa.DataType) -> str:
    """The type name shown in ``columns`` (DuckDB's, as for warehouse tables)."""
    if name == "date" and arrow_type == pa.date32():
        return "DATE"
    return {pa.int64(): "BIGINT", pa.float64(): "DOUBLE"}.get(arrow_type, "VARCHAR")


def to_arrow(
    dimension_names: list[str], metric_headers: list[tuple[str, str]], columns: list[list]
) -> pa.Table:
    """Columns of text as the API sends them -> a typed table (``date`` YYYYMMDD -> date32; "(other)" and
    other non-dates -> null). ``columns`` holds the dimension columns, then the metric columns."""
    arrays, names = [], []
    for name, values in zip(dimension_names, columns, strict=False):
        array = pa.array(values, type=pa.string())
        if name == "date":
            array = pc.strptime(array, format="%Y%m%d", unit="s", error_is_null=True).cast(pa.date32())
        arrays.append(array)
        names.append(name)
    for (name, type_name), values in zip(metric_headers, columns[len(dimension_names) :], strict=False):
        target = metric_arrow_type(type_name)
        text = pa.array(values, type=pa.string())
        try:
            array = text.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            array = text.cast(pa.float64())  # an "integer" metric sent as "12.0": keep the value
        arrays.append(array)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)
