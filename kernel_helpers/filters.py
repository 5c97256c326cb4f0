"""Filter values in the app's URL: ``carnet.filters.bind(region_dropdown, "region")``.

A viewer opening ``.../apps/7?region=EU`` gets the dropdown set to EU (when EU is one of its options), and
each change of the widget is written back into the page's address (``history.replaceState``), so the link
they copy opens the app with the same filters. Values from the URL are checked against what the widget
offers (an option, a number within its bounds, a date); anything else is ignored, never an error.

How the page learns a value: the kernel sets a CSS class on the widget, ``carnet-url-v-<name>=<value>``
percent-encoded (``carnet-url-v-region%3DEU``); the Viewer's page script (voila_templates/carnet/static/
carnet.js) watches those classes and rewrites the query string. Voila hands the request's query string to
the kernel as ``QUERY_STRING``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from urllib.parse import parse_qs, quote

CLASS_PREFIX = "carnet-url-v-"
__all__ = ["bind", "prepared", "url_values"]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
MAX_TEXT = 200


def url_values(name: str, query: str | None = None, split: bool = False) -> list[str]:
    """The values of ``name`` in the app's query string; with ``split``, comma-separated ones too (several
    choices of one widget)."""
    query = os.environ.get("QUERY_STRING", "") if query is None else query
    values: list[str] = []
    for raw in parse_qs(query, keep_blank_values=False).get(name, []):
        values.extend((part for part in raw.split(",") if part) if split else [raw])
    return values


def _option_values(widget) -> list:
    # ipywidgets Selection widgets: options may be labels or (label, value) pairs.
    labels = list(getattr(widget, "_options_labels", ()))
    values = list(getattr(widget, "_options_values", ()))
    return list(zip(labels, values, strict=False))


def _from_url(widget, texts: list[str]):
    """The widget value ``texts`` stand for, or None when they do not fit the widget."""
    if not texts:
        return None
    if hasattr(widget, "_options_labels"):
        pairs = _option_values(widget)

        def pick(text):
            return next((value for label, value in pairs if label == text or str(value) == text), None)

        if isinstance(widget.value, tuple):  # SelectMultiple and friends
            picked = tuple(v for v in (pick(t) for t in texts) if v is not None)
            return picked or None
        return pick(texts[0])
    current = widget.value
    text = texts[0]
    if isinstance(current, bool):
        return {"true": True, "false": False}.get(text.lower())
    if isinstance(current, int | float):
        try:
            number = type(current)(text)
        except ValueError:
            return None
        low, high = getattr(widget, "min", None), getattr(widget, "max", None)
        if (low is not None and number < low) or (high is not None and number > high):
            return None
        return number
    if isinstance(current, dt.date) or type(widget).__name__ == "DatePicker":
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            return None
    if isinstance(current, str):
        return text[:MAX_TEXT]
    return None


def _to_url(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, tuple | list):
        return [str(v) for v in value]
    if isinstance(value, dt.date):
        return [value.isoformat()]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return [str(value)]


def _label_of(widget, value) -> str:
    for label, option in _option_values(widget):
        if option == value:
            return label
    return str(value)


def _url_class(widget, name: str) -> str:
    value = widget.value
    if hasattr(widget, "_options_labels"):
        several = isinstance(value, tuple)
        parts = [_label_of(widget, v) for v in value] if several else [_label_of(widget, value)]
        parts = [] if value is None else parts
    else:
        parts = _to_url(value)
    return CLASS_PREFIX + quote(f"{name}={','.join(parts)}", safe="")


def bind(widget, name: str, query: str | None = None):
    """Start ``widget`` at the URL's value of ``name`` (if it fits) and keep the URL in step with it.
    Returns the widget, so ``bind(widgets.Dropdown(...), "region")`` can be written inline."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"Invalid URL parameter name {name!r}: letters, digits, - and _")
    several = isinstance(widget.value, tuple) and hasattr(widget, "_options_labels")
    chosen = _from_url(widget, url_values(name, query, split=several))
    if chosen is not None:
        widget.value = chosen

    def show(_change=None):
        classes = [c for c in widget._dom_classes if not c.startswith(CLASS_PREFIX)]
        widget._dom_classes = (*classes, _url_class(widget, name))

    show()
    widget.observe(show, names="value")
    return widget


def prepared(widget, output, draw, **options):
    """``draw(value)`` shown in ``output`` for the widget's value, kept per value and made ahead for the other
    options while the kernel is idle (carnet/kernel_helpers/prepared.py)."""
    from carnet.kernel_helpers.prepared import prepared as prepare  # noqa: PLC0415 - only apps using it

    return prepare(widget, output, draw, **options)
