"""carnet.filters.bind with real ipywidgets (no front end needed): the URL's value starts the widget when it
fits what the widget offers, anything else is ignored, and every change marks the widget with the class the
Viewer's page script turns into the page's address."""

from __future__ import annotations

import datetime as dt
from urllib.parse import unquote

import ipywidgets as widgets
import pytest

from carnet.kernel_helpers.filters import CLASS_PREFIX, bind, url_values


def mark(widget) -> str:
    marks = [c for c in widget._dom_classes if c.startswith(CLASS_PREFIX)]
    assert len(marks) == 1, widget._dom_classes
    return unquote(marks[0][len(CLASS_PREFIX) :])


def test_a_dropdown_starts_at_the_urls_option_and_marks_each_change():
    region = bind(
        widgets.Dropdown(options=["North", "South", "East, inner"], value="North"),
        "region",
        "region=South&x=1",
    )
    assert region.value == "South" and mark(region) == "region=South"
    region.value = "East, inner"  # a label with a comma survives: one value, not a list
    assert mark(region) == "region=East, inner"
    again = bind(widgets.Dropdown(options=["North", "East, inner"]), "region", "region=East%2C%20inner")
    assert again.value == "East, inner"


def test_values_the_widget_does_not_offer_are_ignored():
    pairs = widgets.Dropdown(options=[("Europe", "EU"), ("Americas", "AM")], value="AM")
    assert bind(pairs, "area", "area=Mars").value == "AM"  # not an option: the notebook's default stays
    assert (
        bind(widgets.Dropdown(options=[("Europe", "EU")]), "area", "area=EU").value == "EU"
    )  # value or label
    slider = bind(widgets.IntSlider(value=5, min=0, max=10), "n", "n=99")
    assert slider.value == 5 and mark(slider) == "n=5"
    assert bind(widgets.IntSlider(value=5, min=0, max=10), "n", "n=7").value == 7
    assert bind(widgets.IntSlider(value=5, min=0, max=10), "n", "n=seven").value == 5
    assert bind(widgets.FloatText(value=1.5), "f", "f=2.25").value == 2.25
    assert bind(widgets.Checkbox(value=False), "on", "on=true").value is True
    assert bind(widgets.Text(value="a"), "q", "q=" + "z" * 500).value == "z" * 200


def test_several_choices_and_dates():
    picked = bind(widgets.SelectMultiple(options=["a", "b", "c"], value=("a",)), "tags", "tags=b,c,nope")
    assert picked.value == ("b", "c") and mark(picked) == "tags=b,c"
    day = bind(widgets.DatePicker(value=dt.date(2024, 1, 1)), "day", "day=2024-02-29")
    assert day.value == dt.date(2024, 2, 29) and mark(day) == "day=2024-02-29"
    assert bind(widgets.DatePicker(value=dt.date(2024, 1, 1)), "day", "day=2024-02-30").value == dt.date(
        2024, 1, 1
    )


def test_the_query_string_comes_from_voila_and_names_are_checked(monkeypatch):
    monkeypatch.setenv("QUERY_STRING", "region=South&region=North&as_user=3")
    assert url_values("region") == ["South", "North"]
    assert bind(widgets.Dropdown(options=["North", "South"]), "region").value == "South"
    with pytest.raises(ValueError, match="Invalid URL parameter name"):
        bind(widgets.Dropdown(options=["a"]), "bad name")
    other = widgets.Dropdown(options=["a", "b"])
    other.add_class("mine")
    bind(other, "k", "")
    assert "mine" in other._dom_classes and mark(other) == "k=a"
