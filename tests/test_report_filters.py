"""A report for a payload of filter values (scheduler/kinds/report.py ``config.filters``): on the real stack,
the PDF mailed by a report job shows the app as the Viewer shows it for the job's filter values (they travel
in the print page's URL as in an app's URL, carnet.filters.bind); a webhook's payload ``filters`` replaces
them for its run; bad filters are a 400 naming the field, at creation and for a payload (the run fails,
naming it)."""

from __future__ import annotations

import io

import pytest
import requests
from pypdf import PdfReader

from tests.api_support import api_url, assert_json_error, auth, unique
from tests.helpers import wait_until
from tests.test_viewer_url_filters_browser import publish_region_app

pytestmark = pytest.mark.slow

ANALYST = "analyst@acme.example"


@pytest.fixture(scope="module")
def filtered_app(carnet_stack, hub_token):
    yield from publish_region_app(
        carnet_stack, hub_token, "print(f'Report for region {region.value}')", "Regional"
    )


def pdf_text_of(message) -> str:
    [pdf] = [part for part in message.walk() if part.get_content_type() == "application/pdf"]
    return "\n".join(
        page.extract_text() for page in PdfReader(io.BytesIO(pdf.get_payload(decode=True))).pages
    )


def mail_to(smtp_server, recipient: str):
    return wait_until(
        lambda: next((m for m in smtp_server.messages if recipient in m["To"]), None),
        timeout=240,
        what=f"the report mail to {recipient}",
    )


def test_a_report_is_printed_for_its_filter_values_and_a_webhook_payload_replaces_them(
    carnet_stack, hub_token, smtp_server, filtered_app
):
    headers = auth(hub_token(ANALYST))
    recipient = f"{unique('regional')}@acme.example"
    made = requests.post(
        api_url(carnet_stack, "jobs"),
        json={
            "name": unique("regional report"),
            "app_id": filtered_app,
            "cron": None,
            "recipients": [recipient],
            "config": {"filters": {"region": "South"}},
        },
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["config"] == {"filters": {"region": "South"}}
    try:
        assert requests.post(api_url(carnet_stack, f"jobs/{job['id']}/runs"), headers=headers, timeout=30).ok
        text = pdf_text_of(mail_to(smtp_server, recipient))
        assert "Report for region South" in text and "region North" not in text

        hook = requests.post(api_url(carnet_stack, f"jobs/{job['id']}/webhook"), headers=headers, timeout=30)
        assert hook.status_code == 201, hook.text
        smtp_server.messages.clear()
        called = requests.post(hook.json()["url"], json={"filters": {"region": "East"}}, timeout=30)
        assert called.status_code == 202, called.text
        text = pdf_text_of(mail_to(smtp_server, recipient))
        assert "Report for region East" in text and "region South" not in text

        # A payload's filters are checked when the run starts: the run fails naming them, nothing is mailed.
        smtp_server.messages.clear()
        bad = requests.post(hook.json()["url"], json={"filters": {"region": "x" * 600}}, timeout=30)
        run_url = api_url(carnet_stack, f"jobs/{job['id']}/runs/{bad.json()['run_id']}")
        run = wait_until(
            lambda: (
                (r := requests.get(run_url, headers=headers, timeout=30).json())["status"] == "failed" and r
            ),
            timeout=120,
            what="the run with bad filters to fail",
        )
        assert "payload.filters.region" in run["error"] and run["attempt"] == 1
        assert not [m for m in smtp_server.messages if recipient in m["To"]], "no report for a failed run"
        notice = mail_to(smtp_server, ANALYST)  # the job's owner is told, with the error
        assert (
            "failed" in notice["Subject"]
            and "payload.filters.region" in notice.get_payload(decode=True).decode()
        )
    finally:
        requests.delete(api_url(carnet_stack, f"jobs/{job['id']}"), headers=headers, timeout=30)


@pytest.mark.parametrize(
    "filters, field",
    [
        pytest.param("South", "config.filters", id="not-an-object"),
        pytest.param({"re gion": "South"}, "config.filters.re gion", id="bad-name"),
        pytest.param({"region": {"a": 1}}, "config.filters.region", id="object-value"),
        pytest.param({"region": []}, "config.filters.region", id="empty-list"),
        pytest.param({"region": "x" * 501}, "config.filters.region", id="too-long"),
    ],
)
def test_bad_filters_are_refused_naming_the_field(carnet_stack, hub_token, filtered_app, filters, field):
    headers = auth(hub_token(ANALYST))
    name = unique("bad filters")
    response = requests.post(
        api_url(carnet_stack, "jobs"),
        json={
            "name": name,
            "app_id": filtered_app,
            "cron": None,
            "recipients": ["x@acme.example"],
            "config": {"filters": filters},
        },
        headers=headers,
        timeout=30,
    )
    assert assert_json_error(response, 400)["field"] == field
    listed = requests.get(api_url(carnet_stack, "jobs"), headers=headers, timeout=30).json()["jobs"]
    assert name not in [job["name"] for job in listed]
