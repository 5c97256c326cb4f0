"""Publishing apps and the gallery's search and favourites, on the real stack.

What is checked: tags are normalized and bad ones refused naming the field; PATCH changes metadata only and
refuses other fields; thumbnails are PNG/JPEG only (decided by their bytes), at most 1 MB (413 by
Content-Length and while streaming), served as images that cannot run script, and another org's app is
unknown; versions are listed and a rollback makes a new version the Viewer serves; a snapshot does not change
when the source notebook does; search, tag and favourites filters narrow only what the person may open.
"""

from __future__ import annotations

import json
import re
import socket
import stat
from pathlib import Path

import nbformat
import pytest
import requests
from sqlalchemy import func, select

from carnet.db import session_scope
from carnet.db.models import App, AppFavourite
from tests.api_support import UNKNOWN_ID, api_url, assert_json_error, auth, tiny_notebook, tiny_png, unique

VIEWER = "viewer@acme.example"
ANALYST = "analyst@acme.example"
STUDIO = "studio@acme.example"
ADMIN = "admin@acme.example"
NO_SUCH_APP = {"status": 404, "message": "No such app"}
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.fixture(scope="module")
def people(hub_token):
    return {email: auth(hub_token(email)) for email in (VIEWER, ANALYST, STUDIO, ADMIN)}


def marked_notebook(marker: str) -> dict:
    notebook = tiny_notebook()
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(f"Marker {marker}"))
    return notebook


def publish(stack, headers, created, expected=201, **fields) -> requests.Response:
    body = {"slug": unique("pub"), "title": unique("Published"), "notebook": tiny_notebook(), **fields}
    response = requests.post(api_url(stack, "apps"), json=body, headers=headers, timeout=30)
    assert response.status_code == expected, response.text
    if response.status_code == 201:
        created.apps.add(response.json()["id"])
    return response


def get_app(stack, headers, app_id) -> dict:
    response = requests.get(api_url(stack, f"apps/{app_id}"), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def audit(stack, admin, action: str, app_id: int) -> list[dict]:
    events = requests.get(api_url(stack, f"audit?action={action}"), headers=admin, timeout=30).json()
    return [e for e in events["events"] if e["action"] == action and e["target"] == f"app/{app_id}"]


def open_in_viewer(stack, headers, app_id) -> str:
    response = requests.get(f"{stack.url}/services/carnet-viewer/apps/{app_id}", headers=headers, timeout=120)
    assert response.status_code == 200, response.text[:500]
    return response.text


# -- tags and metadata ---------------------------------------------------------------------------------------
def test_tags_are_trimmed_lowercased_deduplicated_and_kept_on_republish(carnet_stack, people, created):
    first = publish(carnet_stack, people[ANALYST], created, tags=[" Sales ", "sales", "EU", "Été 2026"])
    assert first.json()["tags"] == ["sales", "eu", "été 2026"]
    assert first.json()["versions"] == 1 and first.json()["favourite"] is False
    assert first.json()["thumbnail_url"] is None
    slug, app_id = first.json()["slug"], first.json()["id"]
    # Re-publishing without tags or description keeps them; with tags, replaces them.
    again = publish(carnet_stack, people[ANALYST], created, slug=slug, title="Renamed", description="Hello")
    assert (again.json()["id"], again.json()["tags"], again.json()["version"]) == (
        app_id,
        first.json()["tags"],
        2,
    )
    third = publish(carnet_stack, people[ANALYST], created, slug=slug, title="Renamed", tags=["ops"])
    assert (third.json()["tags"], third.json()["description"], third.json()["versions"]) == (
        ["ops"],
        "Hello",
        3,
    )


BAD_TAGS = [
    pytest.param("sales", id="not a list"),
    pytest.param([1], id="a number"),
    pytest.param([""], id="empty"),
    pytest.param(["   "], id="blank"),
    pytest.param(["x" * 41], id="41 characters"),
    pytest.param([f"t{i}" for i in range(21)], id="21 tags"),
    pytest.param(["eu\u202esu"], id="bidi override"),
    pytest.param(["zero\u200bwidth"], id="zero width space"),
    pytest.param(["line\nbreak"], id="newline inside"),
    pytest.param(["nul\x00"], id="nul"),
    pytest.param([None], id="null"),
]


@pytest.mark.parametrize("tags", BAD_TAGS)
@pytest.mark.parametrize("how", ["publish", "patch"])
def test_bad_tags_are_a_400_naming_the_field_and_change_nothing(carnet_stack, people, created, tags, how):
    app = publish(carnet_stack, people[ANALYST], created, tags=["kept"]).json()
    if how == "publish":
        body = {"slug": app["slug"], "title": "Changed", "notebook": tiny_notebook(), "tags": tags}
        response = requests.post(
            api_url(carnet_stack, "apps"), json=body, headers=people[ANALYST], timeout=30
        )
    else:
        response = requests.patch(
            api_url(carnet_stack, f"apps/{app['id']}"),
            json={"tags": tags},
            headers=people[ANALYST],
            timeout=30,
        )
    assert assert_json_error(response, 400)["field"] == "tags"
    after = get_app(carnet_stack, people[ANALYST], app["id"])
    assert (after["tags"], after["title"], after["version"]) == (["kept"], app["title"], 1)


def test_patch_changes_metadata_without_a_new_version_and_refuses_other_fields(carnet_stack, people, created):
    app = publish(carnet_stack, people[ANALYST], created, tags=["a"]).json()
    url = api_url(carnet_stack, f"apps/{app['id']}")
    for field in ("slug", "visibility", "org_id", "current_version", "published_by", "thumbnail_path"):
        response = requests.patch(
            url, json={"title": "Sneaky", field: "x"}, headers=people[ANALYST], timeout=30
        )
        assert assert_json_error(response, 400)["field"] == field
    assert (
        assert_json_error(requests.patch(url, json={"title": ""}, headers=people[ANALYST], timeout=30), 400)[
            "field"
        ]
        == "title"
    )
    assert get_app(carnet_stack, people[ANALYST], app["id"])["title"] == app["title"]
    # Viewers may open the app but not change it.
    denied = requests.patch(url, json={"title": "Viewer's"}, headers=people[VIEWER], timeout=30)
    assert_json_error(denied, 403)

    response = requests.patch(
        url,
        json={"title": "  New title ", "description": "Now described", "tags": ["B", "b", "c"]},
        headers=people[ANALYST],
        timeout=30,
    )
    assert response.status_code == 200, response.text
    after = get_app(carnet_stack, people[VIEWER], app["id"])
    assert (after["title"], after["description"], after["tags"]) == ("New title", "Now described", ["b", "c"])
    assert (after["version"], after["versions"], after["slug"]) == (1, 1, app["slug"])
    events = audit(carnet_stack, people[ADMIN], "app.update", app["id"])
    assert len(events) == 1
    assert events[0]["actor"] == ANALYST and events[0]["details"]["tags"] == {"from": ["a"], "to": ["b", "c"]}
    # The Viewer's header shows the new title at once, though the snapshot still holds the old one.
    page = open_in_viewer(carnet_stack, people[VIEWER], app["id"])
    assert '<span class="carnet-app-title">New title</span>' in page


# -- thumbnails ---------------------------------------------------------------------------------------------
def put_thumbnail(stack, headers, app_id, data, content_type="image/png") -> requests.Response:
    return requests.put(
        api_url(stack, f"apps/{app_id}/thumbnail"),
        data=data,
        headers={**headers, "Content-Type": content_type},
        timeout=60,
    )


def thumbnail_files(stack, app: dict) -> list[Path]:
    folder = stack.settings.published_dir / str(app["org_id"]) / str(app["id"])
    return sorted(folder.glob("thumbnail-*"))


def test_thumbnail_png_round_trip_then_jpeg_then_delete(carnet_stack, people, created):
    app = publish(carnet_stack, people[ANALYST], created).json()
    with session_scope(carnet_stack.settings.db_url) as session:
        app["org_id"] = session.get(App, app["id"]).org_id
    png = tiny_png()
    put = put_thumbnail(carnet_stack, people[ANALYST], app["id"], png)
    assert put.status_code == 200, put.text
    assert put.json()["thumbnail_url"].startswith(f"/services/carnet/api/v1/apps/{app['id']}/thumbnail?v=")

    got = requests.get(carnet_stack.url + put.json()["thumbnail_url"], headers=people[VIEWER], timeout=30)
    assert got.status_code == 200 and got.content == png
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    csp = got.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp
    [stored] = thumbnail_files(carnet_stack, app)
    assert stored.suffix == ".png" and stat.S_IMODE(stored.stat().st_mode) == 0o444

    # A JPEG replaces it (whatever Content-Type the client claims) and the PNG file is gone.
    replaced = put_thumbnail(carnet_stack, people[STUDIO], app["id"], JPEG, content_type="image/png")
    assert replaced.status_code == 200, replaced.text
    got = requests.get(
        api_url(carnet_stack, f"apps/{app['id']}/thumbnail"), headers=people[VIEWER], timeout=30
    )
    assert (got.headers["Content-Type"], got.content) == ("image/jpeg", JPEG)
    assert [p.suffix for p in thumbnail_files(carnet_stack, app)] == [".jpg"]
    assert len(audit(carnet_stack, people[ADMIN], "app.thumbnail", app["id"])) == 2

    # A viewer may look at it but not change it.
    assert_json_error(put_thumbnail(carnet_stack, people[VIEWER], app["id"], png), 403)
    gone = requests.delete(
        api_url(carnet_stack, f"apps/{app['id']}/thumbnail"), headers=people[ANALYST], timeout=30
    )
    assert gone.status_code == 204
    assert get_app(carnet_stack, people[VIEWER], app["id"])["thumbnail_url"] is None
    missing = requests.get(
        api_url(carnet_stack, f"apps/{app['id']}/thumbnail"), headers=people[VIEWER], timeout=30
    )
    assert_json_error(missing, 404)
    assert thumbnail_files(carnet_stack, app) == []
    assert len(audit(carnet_stack, people[ADMIN], "app.thumbnail_delete", app["id"])) == 1


@pytest.mark.parametrize(
    "data,content_type",
    [
        pytest.param(SVG, "image/svg+xml", id="svg"),
        pytest.param(b"<html><script>alert(1)</script></html>", "image/png", id="html claiming png"),
        pytest.param(b"\x89PNX\r\n\x1a\n" + b"\x00" * 32, "image/png", id="png with a wrong signature"),
        pytest.param(b"\x89PNG\r\n\x1a\n<svg onload=alert(1)>", "image/png", id="png signature then svg"),
        pytest.param(b"GIF89a" + b"\x00" * 32, "image/gif", id="gif"),
        pytest.param(b"", "image/png", id="empty"),
    ],
)
def test_thumbnails_that_are_not_png_or_jpeg_are_refused(carnet_stack, people, created, data, content_type):
    app = publish(carnet_stack, people[ANALYST], created).json()
    response = put_thumbnail(carnet_stack, people[ANALYST], app["id"], data, content_type)
    assert assert_json_error(response, 400)["field"] == "thumbnail"
    assert get_app(carnet_stack, people[ANALYST], app["id"])["thumbnail_url"] is None


def declared_only(stack, headers, path: str, length: int) -> tuple[bytes, dict]:
    """Send only the request's headers, announcing ``length`` bytes, straight to the Carnet service (the Hub's
    proxy holds an answer back until the body is sent), and read the answer: a 413 must come back without a
    byte of the body."""
    port = stack.ports["SERVICE"]
    lines = [f"PUT {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: image/png"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {length}", "Connection: close"]
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while not (answer.rstrip().endswith(b"}") or answer.endswith(b"\r\n0\r\n\r\n")):
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():  # the proxy may re-frame the answer: take the JSON out of the chunks
        payload = payload[payload.index(b"{") : payload.rindex(b"}") + 1]
    return head, json.loads(payload)


def test_a_thumbnail_over_1_mb_is_a_413_declared_or_streamed(carnet_stack, people, created):
    app = publish(carnet_stack, people[ANALYST], created).json()
    too_big = tiny_png() + b"\x00" * (1024 * 1024)
    path = f"/services/carnet/api/v1/apps/{app['id']}/thumbnail"
    head, body = declared_only(carnet_stack, people[ANALYST], path, len(too_big))
    assert head.startswith(b"HTTP/1.1 413"), head
    assert body == {
        "status": 413,
        "message": "The thumbnail is larger than 1048576 bytes",
        "limit": 1048576,
    }

    def chunks():  # no Content-Length: counted while it arrives
        for start in range(0, len(too_big), 64 * 1024):
            yield too_big[start : start + 64 * 1024]

    streamed = put_thumbnail(carnet_stack, people[ANALYST], app["id"], chunks())
    assert_json_error(streamed, 413)
    assert get_app(carnet_stack, people[ANALYST], app["id"])["thumbnail_url"] is None
    # Exactly at the limit is fine.
    at_limit = tiny_png() + b"\x00" * (1024 * 1024 - len(tiny_png()))
    assert put_thumbnail(carnet_stack, people[ANALYST], app["id"], at_limit).status_code == 200


def test_another_orgs_app_thumbnail_is_unknown(carnet_stack, people, created):
    theirs = created.publish_app("globex", title="Globex thumbnail app")
    for method in ("GET", "PUT", "DELETE"):
        answers = [
            requests.request(
                method,
                api_url(carnet_stack, f"apps/{app_id}/thumbnail"),
                data=tiny_png() if method == "PUT" else None,
                headers={**people[ADMIN], "Content-Type": "image/png"},
                timeout=30,
            )
            for app_id in (theirs, UNKNOWN_ID)
        ]
        assert answers[0].status_code == answers[1].status_code == 404, method
        assert answers[0].json() == answers[1].json() == NO_SUCH_APP
    with session_scope(carnet_stack.settings.db_url) as session:
        assert session.get(App, theirs).thumbnail_path is None


# -- versions and rollback ----------------------------------------------------------------------------------
def test_versions_are_listed_and_a_restore_is_a_new_version_the_viewer_serves(
    carnet_stack, people, created, tmp_path
):
    # The author's notebook on disk: publishing snapshots it, so editing the file changes nothing.
    source = tmp_path / "report.ipynb"
    nbformat.write(nbformat.from_dict(marked_notebook("FIRST-7f3a")), source)
    first = publish(carnet_stack, people[ANALYST], created, notebook=nbformat.read(source, 4), note="initial")
    app_id, slug = first.json()["id"], first.json()["slug"]
    nbformat.write(nbformat.from_dict(marked_notebook("EDITED-55c1")), source)
    page = open_in_viewer(carnet_stack, people[VIEWER], app_id)
    assert "FIRST-7f3a" in page and "EDITED-55c1" not in page

    second = publish(
        carnet_stack, people[STUDIO], created, slug=slug, title="Two", notebook=nbformat.read(source, 4)
    )
    assert second.json()["version"] == 2
    assert "EDITED-55c1" in open_in_viewer(carnet_stack, people[VIEWER], app_id)

    versions_url = api_url(carnet_stack, f"apps/{app_id}/versions")
    listed = requests.get(versions_url, headers=people[ANALYST], timeout=30).json()["versions"]
    assert [(v["version"], v["created_by"], v["note"], v["current"]) for v in listed] == [
        (2, STUDIO, "", True),
        (1, ANALYST, "initial", False),
    ]
    assert all(v["created_at"] for v in listed)
    assert_json_error(requests.get(versions_url, headers=people[VIEWER], timeout=30), 403)

    restore = api_url(carnet_stack, f"apps/{app_id}/versions/1/restore")
    assert_json_error(requests.post(restore, headers=people[VIEWER], timeout=30), 403)
    restored = requests.post(restore, headers=people[ANALYST], timeout=30)
    assert restored.status_code == 201, restored.text
    assert (restored.json()["version"], restored.json()["versions"], restored.json()["title"]) == (
        3,
        3,
        "Two",
    )
    page = open_in_viewer(carnet_stack, people[VIEWER], app_id)
    assert "FIRST-7f3a" in page and "EDITED-55c1" not in page
    listed = requests.get(versions_url, headers=people[ANALYST], timeout=30).json()["versions"]
    assert [(v["version"], v["note"], v["current"]) for v in listed] == [
        (3, "Restored version 1", True),
        (2, "", False),
        (1, "initial", False),
    ]
    [event] = audit(carnet_stack, people[ADMIN], "app.restore", app_id)
    assert (event["details"]["restored"], event["details"]["version"]) == (1, 3)

    for version in ("4", "0", "abc", "99999999999999999999"):
        unknown = requests.post(
            api_url(carnet_stack, f"apps/{app_id}/versions/{version}/restore"),
            headers=people[ANALYST],
            timeout=30,
        )
        assert assert_json_error(unknown, 404)["message"] == "No such version", version
    bad_note = requests.post(restore, json={"version": 2}, headers=people[ANALYST], timeout=30)
    assert assert_json_error(bad_note, 400)["field"] == "version"
    assert get_app(carnet_stack, people[ANALYST], app_id)["version"] == 3


# -- search, tags and favourites ----------------------------------------------------------------------------
def listing(stack, headers, **params) -> list[dict]:
    response = requests.get(api_url(stack, "apps"), params=params, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["apps"]


def titles(apps: list[dict]) -> list[str]:
    return [a["title"].split(" ")[0] for a in apps]


@pytest.fixture(scope="module")
def catalog(carnet_stack, people, created):
    """Five apps sharing a unique word: in a title, a description or a tag; Delta is restricted to the
    analyst, Epsilon to the viewer."""
    word = unique("zq").replace("-", "")
    specs = {
        "Alpha": {"title": f"Alpha {word}", "tags": ["finance", "eu"]},
        "Beta": {"title": "Beta report", "description": f"Quarterly {word.upper()} numbers", "tags": ["ops"]},
        "Gamma": {"title": "Gamma board", "tags": [word]},
        "Delta": {"title": f"Delta {word}", "tags": ["finance"]},
        "Epsilon": {"title": f"Epsilon {word}"},
    }
    apps = {
        name: publish(carnet_stack, people[STUDIO], created, **spec).json() for name, spec in specs.items()
    }
    for name, person in (("Delta", ANALYST), ("Epsilon", VIEWER)):
        shared = requests.put(
            api_url(carnet_stack, f"apps/{apps[name]['id']}/sharing"),
            json={"visibility": "restricted", "users": [person], "groups": []},
            headers=people[STUDIO],
            timeout=30,
        )
        assert shared.status_code == 200, shared.text
    return {"word": word, "apps": apps}


def test_search_matches_title_description_and_tags_within_what_one_may_open(carnet_stack, people, catalog):
    word = catalog["word"]
    assert titles(listing(carnet_stack, people[VIEWER], q=word.upper())) == [
        "Alpha",
        "Beta",
        "Epsilon",
        "Gamma",
    ]
    assert titles(listing(carnet_stack, people[ANALYST], q=word)) == ["Alpha", "Beta", "Delta", "Gamma"]
    assert titles(listing(carnet_stack, people[ADMIN], q=f"  {word} ")) == [
        "Alpha",
        "Beta",
        "Delta",
        "Epsilon",
        "Gamma",
    ]
    assert listing(carnet_stack, people[VIEWER], q=word + "nothing") == []
    # The tag filter: every tag named must be there (names are normalized like tags).
    assert titles(listing(carnet_stack, people[ANALYST], q=word, tag="FINANCE")) == ["Alpha", "Delta"]
    assert titles(listing(carnet_stack, people[VIEWER], q=word, tag="finance")) == ["Alpha"]
    assert titles(listing(carnet_stack, people[VIEWER], q=word, tag=["finance", "eu"])) == ["Alpha"]
    assert listing(carnet_stack, people[VIEWER], q=word, tag=["finance", "ops"]) == []

    response = requests.get(
        api_url(carnet_stack, "apps"), params={"tag": "x" * 41}, headers=people[VIEWER], timeout=30
    )
    assert assert_json_error(response, 400)["field"] == "tag"
    response = requests.get(
        api_url(carnet_stack, "apps"), params={"q": "x" * 201}, headers=people[VIEWER], timeout=30
    )
    assert assert_json_error(response, 400)["field"] == "q"


def favourite_rows(stack, app_id: int) -> int:
    with session_scope(stack.settings.db_url) as session:
        return session.scalar(select(func.count(AppFavourite.id)).where(AppFavourite.app_id == app_id))


def test_favourites_come_first_filter_and_are_idempotent(carnet_stack, people, catalog, login):
    word, apps = catalog["word"], catalog["apps"]
    gamma = api_url(carnet_stack, f"apps/{apps['Gamma']['id']}/favourite")
    for _ in range(2):  # idempotent
        marked = requests.put(gamma, headers=people[VIEWER], timeout=30)
        assert marked.status_code == 200 and marked.json()["favourite"] is True
    assert favourite_rows(carnet_stack, apps["Gamma"]["id"]) == 1
    listed = listing(carnet_stack, people[VIEWER], q=word)
    assert titles(listed) == ["Gamma", "Alpha", "Beta", "Epsilon"]
    assert [a["favourite"] for a in listed] == [True, False, False, False]
    assert titles(listing(carnet_stack, people[VIEWER], q=word, favourites="true")) == ["Gamma"]
    # Another person's favourites are their own.
    assert titles(listing(carnet_stack, people[ANALYST], q=word))[0] == "Alpha"
    assert listing(carnet_stack, people[ANALYST], q=word, favourites="true") == []

    # The gallery page shows the same list, filtered, and its star form unmarks.
    browser = login(VIEWER)
    page = browser.get(f"{carnet_stack.url}/services/carnet/viewer/", params={"q": word}, timeout=30)
    assert page.status_code == 200
    ids = [int(i) for i in re.findall(r'data-app-id="(\d+)"', page.text)]
    assert ids == [apps[n]["id"] for n in ("Gamma", "Alpha", "Beta", "Epsilon")]
    assert f'data-app-id="{apps["Delta"]["id"]}"' not in page.text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    star = browser.post(
        f"{carnet_stack.url}/services/carnet/viewer/apps/{apps['Gamma']['id']}/favourite",
        data={"_xsrf": xsrf, "on": "0", "back": f"?q={word}"},
        timeout=30,
        allow_redirects=False,
    )
    assert star.status_code == 303 and star.headers["Location"].endswith(f"/services/carnet/viewer/?q={word}")
    assert listing(carnet_stack, people[VIEWER], q=word, favourites="true") == []

    for _ in range(2):
        unmarked = requests.delete(gamma, headers=people[VIEWER], timeout=30)
        assert unmarked.status_code == 200 and unmarked.json()["favourite"] is False
    assert favourite_rows(carnet_stack, apps["Gamma"]["id"]) == 0
    bad = requests.get(
        api_url(carnet_stack, "apps"), params={"favourites": "maybe"}, headers=people[VIEWER], timeout=30
    )
    assert assert_json_error(bad, 400)["field"] == "favourites"


def test_an_app_one_may_not_open_cannot_be_a_favourite(carnet_stack, people, catalog, created):
    delta = catalog["apps"]["Delta"]["id"]  # restricted to the analyst
    globex = created.publish_app("globex", title="Globex favourite")
    for method in ("PUT", "DELETE"):
        for app_id in (delta, globex):
            theirs = requests.request(
                method, api_url(carnet_stack, f"apps/{app_id}/favourite"), headers=people[VIEWER], timeout=30
            )
            unknown = requests.request(
                method,
                api_url(carnet_stack, f"apps/{UNKNOWN_ID}/favourite"),
                headers=people[VIEWER],
                timeout=30,
            )
            assert_json_error(theirs, 404)
            assert theirs.json() == unknown.json() == NO_SUCH_APP
    assert favourite_rows(carnet_stack, delta) == favourite_rows(carnet_stack, globex) == 0
