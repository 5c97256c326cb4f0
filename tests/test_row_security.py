"""Row-level security on the real stack: members' attributes (API and reload from a warehouse table), sources'
row rules, and every read path a restricted person has (one source, SQL across sources, a derived source, the
result cache, a Viewer kernel's token, an admin reading "as" someone, the warehouse preview)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import requests
from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import AuditEvent, TokenKind
from tests.api_support import api_url, assert_json_error, auth, unique
from tests.sql_servers import scratch_pg_database
from tests.test_warehouse_api import arrow_bytes

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ANALYST, VIEWER, STUDIO = "analyst@acme.example", "viewer@acme.example", "studio@acme.example"
SALES = {
    "region": ["EU", "EU", "US", "APAC", "US", "EU"],
    "amount": [10, 20, 30, 40, 50, 60],
}


def load(stack, headers, table: str, columns: dict) -> None:
    response = requests.post(
        api_url(stack, f"warehouse/tables/{table}/load?format=arrow"),
        data=arrow_bytes(columns),
        headers={**headers, "Content-Type": ARROW_STREAM},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def rows(response) -> list[dict]:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"] == ARROW_STREAM
    return pa.ipc.open_stream(response.content).read_all().to_pylist()


def query(stack, headers, source: str, body: dict | None = None, **params) -> requests.Response:
    return requests.post(
        api_url(stack, f"sources/{source}/query"), json=body or {}, headers=headers, params=params, timeout=60
    )


def sql(stack, headers, text: str, **params) -> requests.Response:
    return requests.post(
        api_url(stack, "query"), json={"sql": text}, headers=headers, params=params, timeout=60
    )


def set_attributes(stack, admin, user_id: int, attributes: dict) -> requests.Response:
    return requests.put(
        api_url(stack, f"users/{user_id}/attributes"),
        json={"attributes": attributes},
        headers=admin,
        timeout=30,
    )


@pytest.fixture(scope="module")
def people(carnet_stack, hub_token, created, admin):
    """Headers of acme's analyst, studio and admin, and a Viewer kernel's token of acme's viewer. The analyst
    is in region EU; the viewer has no attributes. Both are reset when the module ends."""
    analyst_id, viewer_id = created.user_id(ANALYST), created.user_id(VIEWER)
    assert set_attributes(carnet_stack, admin, analyst_id, {"region": ["EU"]}).status_code == 200
    yield {
        "analyst": auth(hub_token(ANALYST)),
        "studio": auth(hub_token(STUDIO)),
        "admin": admin,
        "viewer_kernel": auth(created.kernel_token(VIEWER, "acme", TokenKind.viewer_kernel)),
        "analyst_id": analyst_id,
        "viewer_id": viewer_id,
    }
    for user_id in (analyst_id, viewer_id):
        set_attributes(carnet_stack, admin, user_id, {})


@pytest.fixture(scope="module")
def sales(carnet_stack, people, created):
    """A warehouse table of sales by region and a source over it whose rows are filtered by region."""
    table, name = unique("rls_sales").replace("-", "_"), unique("rls-sales")
    load(carnet_stack, people["studio"], table, SALES)
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": table}},
        headers=people["studio"],
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.sources.add(made.json()["id"])
    ruled = requests.put(
        api_url(carnet_stack, f"sources/{name}/row-rules"),
        json={"rules": [{"column": "region", "attribute": "region"}]},
        headers=people["studio"],
        timeout=30,
    )
    assert ruled.status_code == 200, ruled.text
    # Cached answers, so that one person's filtered answer could leak to the next if keys ignored the rules.
    cached = requests.put(
        api_url(carnet_stack, f"sources/{name}/cache"),
        json={"policy": "ttl", "ttl_seconds": 600},
        headers=people["studio"],
        timeout=30,
    )
    assert cached.status_code == 200, cached.text
    return {"table": table, "source": name}


def amounts(answer: list[dict]) -> list[int]:
    return sorted(row["amount"] for row in answer)


def test_each_person_sees_only_the_rows_of_their_values_and_no_one_shares_a_cached_answer(
    carnet_stack, people, sales
):
    source = sales["source"]
    # The order matters: each answer is cached under its reader's context, none may serve the next one.
    assert amounts(rows(query(carnet_stack, people["analyst"], source))) == [10, 20, 60]
    assert amounts(rows(query(carnet_stack, people["studio"], source))) == [10, 20, 30, 40, 50, 60]
    nothing = query(carnet_stack, people["viewer_kernel"], source)
    assert rows(nothing) == []  # no attribute: no rows, not all rows
    assert pa.ipc.open_stream(nothing.content).read_all().column_names == ["region", "amount"]
    assert amounts(rows(query(carnet_stack, people["analyst"], source))) == [10, 20, 60]
    # Filters and aggregates run over the person's rows only.
    total = {"group_by": ["region"], "aggregates": {"amount": "sum"}, "order_by": ["region"]}
    assert rows(query(carnet_stack, people["analyst"], source, total)) == [{"region": "EU", "amount": 90}]
    everything = rows(query(carnet_stack, people["admin"], source, total))
    assert everything == [
        {"region": "APAC", "amount": 40},
        {"region": "EU", "amount": 90},
        {"region": "US", "amount": 80},
    ]
    # A filter of their own cannot widen what the rules give.
    us_only = {"where": [["region", "=", "US"]]}
    assert rows(query(carnet_stack, people["analyst"], source, us_only)) == []


def test_sql_across_sources_and_derived_sources_keep_the_rules(carnet_stack, people, sales, created):
    source = sales["source"]
    text = f"SELECT region, sum(amount) AS total FROM {{{source}}} GROUP BY region ORDER BY region"
    assert rows(sql(carnet_stack, people["analyst"], text)) == [{"region": "EU", "total": 90}]
    assert len(rows(sql(carnet_stack, people["studio"], text))) == 3
    assert rows(sql(carnet_stack, people["viewer_kernel"], text)) == []

    derived = unique("rls-derived")
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={
            "name": derived,
            "kind": "derived",
            "options": {"sql": f"SELECT * FROM {{{source}}} WHERE amount > 15"},
        },
        headers=people["studio"],
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.sources.add(made.json()["id"])
    assert amounts(rows(query(carnet_stack, people["analyst"], derived))) == [20, 60]
    assert amounts(rows(query(carnet_stack, people["studio"], derived))) == [20, 30, 40, 50, 60]
    assert rows(query(carnet_stack, people["viewer_kernel"], derived)) == []


def test_an_admin_reads_as_a_member_on_the_record(carnet_stack, people, sales):
    source = sales["source"]
    seen = rows(query(carnet_stack, people["admin"], source, as_user=people["analyst_id"]))
    assert amounts(seen) == [10, 20, 60]
    assert (
        rows(sql(carnet_stack, people["admin"], f"SELECT * FROM {{{source}}}", as_user=people["viewer_id"]))
        == []
    )
    with session_scope(carnet_stack.settings.db_url) as session:
        recorded = session.scalars(
            select(AuditEvent.target)
            .where(AuditEvent.action == "query.as_user")
            .order_by(AuditEvent.id.desc())
        ).all()
    assert f"user/{people['viewer_id']}" == recorded[0] and f"user/{people['analyst_id']}" in recorded
    # Only admins; an unknown or another org's person is not found.
    refused = query(carnet_stack, people["studio"], source, as_user=people["analyst_id"])
    assert assert_json_error(refused, 403)["message"] == "Only admins may read as another person"
    assert_json_error(query(carnet_stack, people["admin"], source, as_user=999_999_999), 404)
    assert_json_error(query(carnet_stack, people["admin"], source, as_user="x"), 404)


def test_restricted_people_cannot_read_the_ruled_table_directly(carnet_stack, people, sales):
    preview = f"warehouse/tables/{sales['table']}/preview"
    refused = requests.get(api_url(carnet_stack, preview), headers=people["analyst"], timeout=30)
    assert "row-level rules" in assert_json_error(refused, 403)["message"]
    allowed = requests.get(api_url(carnet_stack, preview), headers=people["studio"], timeout=30)
    assert allowed.status_code == 200 and len(allowed.json()["rows"]) == 6


def test_restricted_people_do_not_see_the_row_count_of_a_ruled_table(carnet_stack, people, sales):
    """The list and the description of warehouse tables: a table with row rules has no row count for a
    restricted person (the count of all rows is what the rules keep from them); others see it."""
    plain = unique("rls_plain").replace("-", "_")
    load(carnet_stack, people["studio"], plain, {"n": [1, 2, 3]})

    def listed(who) -> dict:
        answer = requests.get(api_url(carnet_stack, "warehouse/tables"), headers=people[who], timeout=30)
        assert answer.status_code == 200, answer.text
        return {t["name"]: t for t in answer.json()["tables"]}

    def described(who, table) -> dict:
        answer = requests.get(
            api_url(carnet_stack, f"warehouse/tables/{table}"), headers=people[who], timeout=30
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    ruled = sales["table"]
    for who, expected in (("analyst", None), ("studio", 6), ("admin", 6)):
        tables = listed(who)
        assert tables[ruled]["rows"] == expected, who
        assert described(who, ruled)["rows"] == expected, who
        # The columns stay: the source over the table shows them anyway.
        assert [c["name"] for c in described(who, ruled)["columns"]] == ["region", "amount"]
        assert tables[plain]["rows"] == 3 and described(who, plain)["rows"] == 3, who
    # Kernel tokens of apps do not read the warehouse's tables at all.
    refused = requests.get(
        api_url(carnet_stack, "warehouse/tables"), headers=people["viewer_kernel"], timeout=30
    )
    assert_json_error(refused, 403)


def test_attributes_reload_from_a_warehouse_table(carnet_stack, people, sales, created):
    table = unique("rls_people").replace("-", "_")
    load(
        carnet_stack,
        people["studio"],
        table,
        {"email": [ANALYST, ANALYST, "nobody@elsewhere.example"], "region": ["EU", "US", "EU"]},
    )
    # The viewer gets a region by hand first: the table, which does not list them, takes it away.
    assert set_attributes(
        carnet_stack, people["admin"], people["viewer_id"], {"region": ["APAC"], "team": ["a"]}
    )
    reloaded = requests.post(
        api_url(carnet_stack, "user-attributes/reload"),
        json={"table": table},
        headers=people["admin"],
        timeout=60,
    )
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["attributes"] == ["region"] and reloaded.json()["unknown_emails"] == [
        "nobody@elsewhere.example"
    ]

    def attributes(user_id):
        return requests.get(
            api_url(carnet_stack, f"users/{user_id}/attributes"), headers=people["admin"], timeout=30
        ).json()["attributes"]

    assert attributes(people["analyst_id"]) == {"region": ["EU", "US"]}
    assert attributes(people["viewer_id"]) == {"team": ["a"]}  # other attributes untouched
    assert amounts(rows(query(carnet_stack, people["analyst"], sales["source"]))) == [10, 20, 30, 50, 60]
    assert (
        set_attributes(carnet_stack, people["admin"], people["analyst_id"], {"region": ["EU"]}).status_code
        == 200
    )
    # Not a table of this shape: clear errors, nothing changed.
    missing = requests.post(
        api_url(carnet_stack, "user-attributes/reload"),
        json={"table": "no_such_table"},
        headers=people["admin"],
        timeout=30,
    )
    assert_json_error(missing, 404)
    load(carnet_stack, people["studio"], table, {"email": [1, 2], "region": ["EU", "US"]})
    wrong = requests.post(
        api_url(carnet_stack, "user-attributes/reload"),
        json={"table": table},
        headers=people["admin"],
        timeout=30,
    )
    assert "login email" in assert_json_error(wrong, 400)["message"]
    assert attributes(people["analyst_id"]) == {"region": ["EU"]}


def test_a_rule_on_a_missing_column_fails_closed(carnet_stack, people, sales, created):
    name = unique("rls-broken")
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": name, "kind": "warehouse_table", "options": {"table": sales["table"]}},
        headers=people["studio"],
        timeout=30,
    )
    created.sources.add(made.json()["id"])
    requests.put(
        api_url(carnet_stack, f"sources/{name}/row-rules"),
        json={"rules": [{"column": "country", "attribute": "region"}]},
        headers=people["studio"],
        timeout=30,
    )
    broken = query(carnet_stack, people["analyst"], name)
    assert "row rule on 'country'" in assert_json_error(broken, 400)["message"]
    assert len(rows(query(carnet_stack, people["studio"], name))) == 6  # unrestricted readers are unaffected


@pytest.mark.parametrize(
    "attributes,field",
    [
        pytest.param("EU", "attributes", id="not an object"),
        pytest.param({"re gion": ["EU"]}, "attributes", id="bad name"),
        pytest.param({"region": [1]}, "attributes.region", id="not text"),
        pytest.param({"region": [""]}, "attributes.region", id="empty value"),
        pytest.param({"region": ["x" * 201]}, "attributes.region", id="long value"),
        pytest.param({"region": ["E\u200bU"]}, "attributes.region", id="hidden character"),
        pytest.param({"region": ["v"] * 501}, "attributes.region", id="too many values"),
    ],
)
def test_bad_attributes_are_refused(carnet_stack, people, attributes, field):
    refused = set_attributes(carnet_stack, people["admin"], people["viewer_id"], attributes)
    assert assert_json_error(refused, 400)["field"] == field


@pytest.mark.parametrize(
    "rules,field",
    [
        pytest.param({"column": "region"}, "row_rules", id="not a list"),
        pytest.param([{"column": "region"}], "row_rules[0]", id="no attribute"),
        pytest.param([{"column": "region", "attribute": "region", "x": 1}], "row_rules[0]", id="extra key"),
        pytest.param([{"column": "", "attribute": "region"}], "row_rules[0].column", id="empty column"),
        pytest.param(
            [{"column": "region", "attribute": "a b"}], "row_rules[0].attribute", id="bad attribute"
        ),
    ],
)
def test_bad_rules_are_refused_and_the_rules_stay(carnet_stack, people, sales, rules, field):
    refused = requests.put(
        api_url(carnet_stack, f"sources/{sales['source']}/row-rules"),
        json={"rules": rules},
        headers=people["studio"],
        timeout=30,
    )
    assert assert_json_error(refused, 400)["field"] == field
    kept = requests.get(
        api_url(carnet_stack, f"sources/{sales['source']}/row-rules"), headers=people["studio"], timeout=30
    )
    assert kept.json()["rules"] == [{"column": "region", "attribute": "region"}]


@pytest.fixture(scope="module")
def pg_orders(pg_url, carnet_stack, people, created):
    """A PostgreSQL database with orders by region, a connection to it and a sql_table source over it."""
    from sqlalchemy import delete

    from carnet.db.models import Connection, DataSource

    orders = (
        "CREATE TABLE orders (id int PRIMARY KEY, region text, amount int)",
        "INSERT INTO orders VALUES (1, 'EU', 5), (2, 'US', 7), (3, 'EU', 11), (4, NULL, 13)",
    )
    with scratch_pg_database(pg_url, "carnet_rls", *orders) as (_url, settings):
        with session_scope(carnet_stack.settings.db_url) as session:
            connection = Connection(
                org_id=created.org_id("acme"), name=unique("rls-pg"), kind="sql", settings=settings
            )
            session.add(connection)
            session.flush()
            source = DataSource(
                org_id=connection.org_id,
                name=unique("rls-pg-orders"),
                kind="sql_table",
                options={"table": "orders"},
                connection_id=connection.id,
                row_rules=[{"column": "region", "attribute": "region"}],
            )
            session.add(source)
            session.flush()
            name, connection_id = source.name, connection.id
        yield name
        with session_scope(carnet_stack.settings.db_url) as session:
            session.execute(delete(DataSource).where(DataSource.connection_id == connection_id))
            session.execute(delete(Connection).where(Connection.id == connection_id))


def test_rules_on_a_sql_server_source_run_on_the_server(carnet_stack, people, pg_orders):
    assert sorted(r["id"] for r in rows(query(carnet_stack, people["analyst"], pg_orders))) == [1, 3]
    assert sorted(r["id"] for r in rows(query(carnet_stack, people["studio"], pg_orders))) == [1, 2, 3, 4]
    assert rows(query(carnet_stack, people["viewer_kernel"], pg_orders)) == []
    total = {"aggregates": {"amount": "sum"}}
    assert rows(query(carnet_stack, people["analyst"], pg_orders, total)) == [{"amount": 16}]
    # SQL over the source (which alone could run on the server whole) is filtered too.
    text = f"SELECT count(*) AS n FROM {{{pg_orders}}}"
    assert rows(sql(carnet_stack, people["analyst"], text)) == [{"n": 2}]
    assert rows(sql(carnet_stack, people["studio"], text)) == [{"n": 4}]


def test_an_admin_previews_an_app_as_a_member_in_the_viewer(carnet_stack, people, sales, created):
    """The Viewer renders the app with the member's identity in its kernel (their rows), the page stays the
    admin's, says it is a preview, and the audit log records it; only admins may ask."""
    import nbformat

    source = sales["source"]
    cell = f"import carnet\nprint('ROWS', sorted(carnet.sources[{source!r}].df()['amount'].tolist()))"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    made = requests.post(
        api_url(carnet_stack, "apps"),
        json={"slug": unique("rls-app"), "title": "Sales by region", "notebook": notebook},
        headers=people["studio"],
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.apps.add(made.json()["id"])
    page = f"{carnet_stack.url}/services/carnet-viewer/apps/{made.json()['id']}"

    def render(headers, **params):
        return requests.get(page, headers=headers, params=params, timeout=180)

    own = render(people["admin"])
    assert own.status_code == 200 and "ROWS [10, 20, 30, 40, 50, 60]" in own.text
    assert "Preview as" not in own.text
    as_analyst = render(people["admin"], as_user=people["analyst_id"])
    assert as_analyst.status_code == 200, as_analyst.text[:300]
    assert "ROWS [10, 20, 60]" in as_analyst.text and f"Preview as {ANALYST}" in as_analyst.text
    as_viewer = render(people["admin"], as_user=people["viewer_id"])
    assert "ROWS []" in as_viewer.text  # no attribute: no rows
    assert render(people["studio"], as_user=people["analyst_id"]).status_code == 403
    assert render(people["admin"], as_user=999_999_999).status_code == 404
    with session_scope(carnet_stack.settings.db_url) as session:
        previews = session.execute(
            select(AuditEvent.actor, AuditEvent.details).where(AuditEvent.action == "app.preview_as")
        ).all()
    assert ("admin@acme.example", ANALYST) in [(actor, details["user"]) for actor, details in previews]


def test_the_raw_data_route_keeps_the_rules_too(carnet_stack, people, sales, created):
    """GET sources/<name>/data (the rows as they are) is filtered like a query for restricted people,
    also through a derived source over the ruled one."""

    def data(headers, name, **params):
        return requests.get(
            api_url(carnet_stack, f"sources/{name}/data"), headers=headers, params=params, timeout=60
        )

    assert amounts(rows(data(people["analyst"], sales["source"]))) == [10, 20, 60]
    assert rows(data(people["viewer_kernel"], sales["source"])) == []
    assert len(rows(data(people["analyst"], sales["source"], limit=2))) == 2
    assert amounts(rows(data(people["studio"], sales["source"]))) == [10, 20, 30, 40, 50, 60]
    derived = unique("rls-derived-data")
    made = requests.post(
        api_url(carnet_stack, "sources"),
        json={"name": derived, "kind": "derived", "options": {"sql": f"SELECT * FROM {{{sales['source']}}}"}},
        headers=people["studio"],
        timeout=30,
    )
    assert made.status_code == 201, made.text
    created.sources.add(made.json()["id"])
    assert amounts(rows(data(people["analyst"], derived))) == [10, 20, 60]
    assert len(rows(data(people["studio"], derived))) == 6
