"""The ``ga4`` source kind against a local stand-in of Google's servers (tests/ga4_standin.py).

GA4 is verified ONLY against that stand-in, never against Google: these tests run Carnet's kind with
Google's real client library (REST transport) and google-auth's real service-account token exchange, signed
with a throw-away RSA key made here; the stand-in plays the token endpoint and the Data API on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import json
import sys

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from carnet.errors import ConnectionFailed, QueryFailed, QueryTimeout, RowLimitExceeded, ValidationError
from carnet.kinds.ga4 import GA4ClientMissing, GA4Kind, GA4QuotaExhausted
from carnet.settings import CarnetSettings
from carnet.sources import ReadLimits, SourceContext, source_kinds
from tests.ga4_standin import TODAY, GA4StandIn, metric_value

PROPERTY, QUOTA_PROPERTY = "123456", "777"
PAGE = 50  # the stand-in's page cap: small, so that a year of dates spans many pages


def make_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def service_account_json(key, token_uri: str, **changes) -> str:
    """A key file shaped like the one Google's console gives."""
    info = {
        "type": "service_account",
        "project_id": "carnet-tests",
        "private_key_id": "3f1c0ffee5d1e9a7b0c4d2e8f6a1b3c5d7e9f0a2",
        "private_key": pem(key),
        "client_email": "reports@carnet-tests.iam.gserviceaccount.com",
        "client_id": "104200000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return json.dumps({**info, **changes})


@pytest.fixture(scope="module")
def key():
    return make_key()


@pytest.fixture(scope="module")
def standin(key):
    with GA4StandIn(
        key.public_key(),
        properties={PROPERTY, QUOTA_PROPERTY},
        quota_exhausted={QUOTA_PROPERTY},
        max_page_rows=PAGE,
    ) as server:
        yield server


@pytest.fixture
def settings(standin, tmp_path):
    return CarnetSettings(
        data_dir=str(tmp_path), ga4_api_endpoint=standin.url, ga4_token_uri=standin.token_uri
    )


@pytest.fixture
def make_ctx(settings, standin, key):
    """A context as the service builds it: checked options, the decrypted key in ``secrets``."""

    def make(options=None, *, secret=None, max_rows=10_000_000, timeout=30.0, **changes):
        options = {"property_id": PROPERTY, "dimensions": ["country"], "metrics": ["activeUsers"], **changes}
        secret = secret or service_account_json(key, standin.token_uri)
        checked = GA4Kind().validate_options({**options, "service_account_json": secret})
        checked.pop("service_account_json")  # the API stores it apart, encrypted
        return SourceContext(
            settings=settings,
            org_id=1,
            name="traffic",
            kind="ga4",
            options=checked,
            secrets={"service_account_json": secret},
            limits=ReadLimits(timeout_seconds=timeout, max_rows=max_rows),
        )

    return make


def key_parts(secret: str) -> list[str]:
    """What must never show: the private key, each line of its body, its id."""
    info = json.loads(secret)
    lines = [line for line in info["private_key"].splitlines() if "PRIVATE KEY" not in line]
    return [info["private_key"], info["private_key_id"], *lines]


def test_registered_through_the_entry_point():
    assert isinstance(source_kinds.get("ga4"), GA4Kind)
    assert GA4Kind.secret_fields == {"service_account_json"}


def test_dimensions_and_metrics_become_typed_columns(make_ctx, standin):
    tokens_before = len(standin.token_requests)
    ctx = make_ctx(
        dimensions=["date", "country"],
        metrics=["activeUsers", "bounceRate", "averageSessionDuration", "totalRevenue"],
        date_ranges=[{"start_date": "2026-01-01", "end_date": "2026-01-10"}],
    )
    table = GA4Kind().read(ctx)
    assert table.schema == pa.schema(
        [
            ("date", pa.date32()),
            ("country", pa.string()),
            ("activeUsers", pa.int64()),
            ("bounceRate", pa.float64()),
            ("averageSessionDuration", pa.float64()),
            ("totalRevenue", pa.float64()),
        ]
    )
    assert table.num_rows == 10 * 3
    rows = table.to_pylist()
    assert {r["date"] for r in rows} == {dt.date(2026, 1, d) for d in range(1, 11)}
    # Values are the stand-in's, converted from the API's strings without loss.
    first = rows[0]
    api_values = [first["date"].strftime("%Y%m%d"), first["country"]]
    assert first["activeUsers"] == int(metric_value("activeUsers", api_values))
    assert first["totalRevenue"] == float(metric_value("totalRevenue", api_values))
    # The key was exchanged for a token at the stand-in's token endpoint (JWT bearer grant), once per read.
    assert len(standin.token_requests) == tokens_before + 1
    assert standin.token_requests[-1]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert GA4Kind().columns(ctx) == [
        {"name": "date", "type": "DATE"},
        {"name": "country", "type": "VARCHAR"},
        {"name": "activeUsers", "type": "BIGINT"},
        {"name": "bounceRate", "type": "DOUBLE"},
        {"name": "averageSessionDuration", "type": "DOUBLE"},
        {"name": "totalRevenue", "type": "DOUBLE"},
    ]


def test_reads_every_page_until_row_count(make_ctx, standin):
    ctx = make_ctx(
        dimensions=["date", "country"], date_ranges=[{"start_date": "2025-01-01", "end_date": "2025-12-31"}]
    )
    first = len(standin.reports)
    table = GA4Kind().read(ctx)
    assert table.num_rows == 365 * 3
    assert len(set(zip(table["date"].to_pylist(), table["country"].to_pylist(), strict=True))) == 365 * 3
    # Each page starts where the stand-in's short answer stopped (proto JSON leaves offset 0 out).
    offsets = [body.get("offset", 0) for _, body in standin.reports[first:]]
    assert [int(o) for o in offsets] == list(range(0, 365 * 3, PAGE))

    # options.limit stops the read there, asking only for what is left.
    first = len(standin.reports)
    limited = GA4Kind().read(make_ctx(**{**ctx.options, "limit": 120}))
    assert limited.num_rows == 120
    assert [int(b["limit"]) for _, b in standin.reports[first:]] == [120, 70, 20]
    assert limited.to_pylist() == table.slice(0, 120).to_pylist()


def test_report_bigger_than_max_rows_is_refused_after_one_page(make_ctx, standin):
    ctx = make_ctx(
        max_rows=1000,
        dimensions=["date", "country"],
        date_ranges=[{"start_date": "2025-01-01", "end_date": "2025-12-31"}],
    )
    first = len(standin.reports)
    with pytest.raises(RowLimitExceeded) as raised:
        GA4Kind().read(ctx)
    assert raised.value.status == 413 and "1,095 rows" in raised.value.message
    assert len(standin.reports) == first + 1


def test_date_ranges_are_passed_through(make_ctx, standin):
    ranges = [
        {"start_date": "7daysAgo", "end_date": "today"},
        {"start_date": "2025-12-01", "end_date": "2025-12-03"},
    ]
    table = GA4Kind().read(make_ctx(dimensions=["date"], date_ranges=ranges))
    _, body = standin.reports[-1]
    assert body["dateRanges"] == [
        {"startDate": "7daysAgo", "endDate": "today"},
        {"startDate": "2025-12-01", "endDate": "2025-12-03"},
    ]
    # Several ranges: the API adds its dateRange dimension, which becomes a column too.
    by_range: dict[str, set] = {}
    for row in table.to_pylist():
        by_range.setdefault(row["dateRange"], set()).add(row["date"])
    assert by_range["date_range_0"] == {TODAY - dt.timedelta(days=n) for n in range(8)}
    assert by_range["date_range_1"] == {dt.date(2025, 12, d) for d in (1, 2, 3)}


def test_dimension_filter_and_order(make_ctx, standin):
    ctx = make_ctx(
        dimensions=["country", "deviceCategory"],
        dimension_filter={
            "all": [
                {"field": "country", "in": ["France", "japan"]},  # case-insensitive unless asked
                {"not": {"field": "deviceCategory", "equals": "tablet"}},
            ]
        },
        order_bys=[{"metric": "activeUsers", "desc": True}],
    )
    rows = GA4Kind().read(ctx).to_pylist()
    assert {(r["country"], r["deviceCategory"]) for r in rows} == {
        (c, d) for c in ("France", "Japan") for d in ("desktop", "mobile")
    }
    users = [r["activeUsers"] for r in rows]
    assert users == sorted(users, reverse=True)
    _, body = standin.reports[-1]
    assert body["orderBys"] == [{"metric": {"metricName": "activeUsers"}, "desc": True}]


def test_api_errors_become_typed_errors_without_the_key(make_ctx, standin):
    cases = [
        (dict(property_id="999"), ConnectionFailed, 502, "refused access to property 999"),
        (dict(dimensions=["notADimension"]), QueryFailed, 400, "notADimension is not a valid dimension"),
        (dict(property_id=QUOTA_PROPERTY), GA4QuotaExhausted, 429, "quota exhausted for property 777"),
    ]
    for changes, error, status, text in cases:
        ctx = make_ctx(**changes)
        with pytest.raises(error) as raised:
            GA4Kind().read(ctx)
        assert raised.value.status == status
        assert text in raised.value.message
        for part in key_parts(ctx.secrets["service_account_json"]):
            assert part not in raised.value.message


def test_a_key_google_refuses_is_a_clear_error_that_never_shows_it(make_ctx, standin):
    # Signed by a key the token endpoint does not know; the stand-in's answer names the key id (the JWT's
    # "kid"), as a token endpoint may: Carnet must hide it.
    stranger = service_account_json(make_key(), standin.token_uri)
    with pytest.raises(ConnectionFailed) as raised:
        GA4Kind().read(make_ctx(secret=stranger))
    assert "Google refused the service account" in raised.value.message
    assert "invalid_grant" in raised.value.message
    assert "***" in raised.value.message  # the key id, redacted
    for part in key_parts(stranger):
        assert part not in raised.value.message

    # A key file whose key cannot be loaded: a 400 about the key, without the key.
    info = json.loads(stranger)
    broken = json.dumps({**info, "private_key": info["private_key"].replace("\n", "\n#", 3)})
    with pytest.raises(ValidationError) as raised:
        GA4Kind().read(make_ctx(secret=broken))
    assert raised.value.fields["field"] == "options.service_account_json"
    for part in key_parts(broken):
        assert part not in raised.value.message


def test_token_uri_must_be_the_operators(make_ctx, standin, key):
    # A key file naming another token endpoint would send its signed assertion there: refused unsent.
    elsewhere = service_account_json(key, "http://127.0.0.1:9/token")
    first = len(standin.token_requests)
    with pytest.raises(ValidationError) as raised:
        GA4Kind().read(make_ctx(secret=elsewhere))
    assert "CARNET_GA4_TOKEN_URI" in raised.value.message
    assert len(standin.token_requests) == first


def test_users_cannot_choose_the_api_endpoint(make_ctx, standin, key):
    options = {
        "property_id": PROPERTY,
        "metrics": ["activeUsers"],
        "api_endpoint": "https://collector.example",
        "service_account_json": service_account_json(key, standin.token_uri),
    }
    with pytest.raises(ValidationError) as raised:
        GA4Kind().validate_options(options)
    assert raised.value.status == 400
    assert raised.value.fields["field"] == "options.api_endpoint"
    # Reads go to the operator's endpoint (the stand-in) only.
    first = len(standin.reports)
    GA4Kind().read(make_ctx())
    assert len(standin.reports) == first + 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"property_id": "UA-1234"}, "options.property_id"),
        ({"metrics": []}, "options.metrics"),
        ({"dimensions": [f"d{n}" for n in range(10)]}, "options.dimensions"),
        ({"dimensions": ["country; drop"]}, "options.dimensions"),
        ({"date_ranges": [{"start_date": "2026-02-30", "end_date": "today"}]}, "options.date_ranges"),
        ({"date_ranges": [{"start_date": "2026-02-01", "end_date": "2026-01-01"}]}, "options.date_ranges"),
        ({"dimension_filter": {"field": "city", "equals": "Lyon"}}, "options.dimension_filter"),
        ({"dimension_filter": {"field": "country", "like": "F%"}}, "options.dimension_filter"),
        ({"order_bys": [{"metric": "sessions"}]}, "options.order_bys"),
        ({"limit": 0}, "options.limit"),
        ({"colour": "blue"}, "options.colour"),
        ({"service_account_json": "not json"}, "options.service_account_json"),
    ],
)
def test_bad_options_are_400_naming_the_option(changes, field, key, standin):
    options = {
        "property_id": PROPERTY,
        "dimensions": ["country"],
        "metrics": ["activeUsers"],
        "service_account_json": service_account_json(key, standin.token_uri),
        **changes,
    }
    with pytest.raises(ValidationError) as raised:
        GA4Kind().validate_options(options)
    assert raised.value.status == 400
    assert raised.value.fields["field"] == field


def test_slow_api_is_a_timeout(make_ctx, standin):
    standin.delay_seconds = 2.0
    try:
        with pytest.raises(QueryTimeout) as raised:
            GA4Kind().read(make_ctx(timeout=0.7))
    finally:
        standin.delay_seconds = 0
    assert raised.value.status == 504


def test_missing_package_names_the_extra(monkeypatch, make_ctx):
    ctx = make_ctx()
    # The one simulated failure: the package is installed here, so its import is made to fail (None in
    # sys.modules makes `import` raise ImportError), as on an installation without carnet[ga4].
    monkeypatch.setitem(sys.modules, "google.analytics.data_v1beta", None)
    for call in (lambda: GA4Kind().validate_options({"property_id": PROPERTY}), lambda: GA4Kind().read(ctx)):
        with pytest.raises(GA4ClientMissing) as raised:
            call()
        assert raised.value.status == 400
        assert raised.value.message == "Google Analytics 4 sources need: pip install carnet[ga4]"
