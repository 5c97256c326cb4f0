"""HTML outputs drawn by the Viewer itself (voila_templates/carnet's static outputs) are written into the page
as they are, between the template's own elements. A fragment must not reach outside its output: an unclosed
``<div>`` would swallow the cells after it, a stray ``</div>`` would close the template's tab panel, an
unfinished ``<!--`` would hide the rest of the page. Voila's front end had the browser parse each output
into a node of its own, which contains all of that; ``balanced`` does the same on the server: end tags
without their start are dropped, elements left open are closed at the fragment's end, text that is not
markup (an unfinished tag or comment) is escaped. Registered as the Jinja filter ``carnet_balanced``
(``EXPORTER_FILTERS``, set as ``VoilaExporter.filters`` by extension/viewer_config.py)."""

from __future__ import annotations

from html.parser import HTMLParser

# Elements without content (no end tag) and elements whose content the browser's parser never ends.
VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
NEVER_ENDING = frozenset({"plaintext"})


class _Balancer(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.parts: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in NEVER_ENDING:
            return
        self.parts.append(self.get_starttag_text())
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in NEVER_ENDING:
            self.parts.append(self.get_starttag_text())

    def handle_endtag(self, tag):
        if tag not in self.open:
            return  # no start in this fragment: it would close an element of the page
        while self.open:
            last = self.open.pop()
            self.parts.append(f"</{last}>")
            if last == tag:
                break

    def handle_data(self, data):
        # Outside <script>/<style>, data never holds "<" but for markup the parser could not finish.
        self.parts.append(data if self.cdata_elem else data.replace("<", "&lt;"))

    def handle_entityref(self, name):
        self.parts.append(f"&{name};")

    def handle_charref(self, name):
        self.parts.append(f"&#{name};")

    def handle_comment(self, data):
        self.parts.append(f"<!--{data}-->")

    def handle_decl(self, decl):
        pass  # a doctype inside an output means nothing

    def handle_pi(self, data):
        pass

    def unknown_decl(self, data):
        pass


def balanced(html: str) -> str:
    """``html`` as a fragment that opens and closes only its own elements (see the module's docstring)."""
    parser = _Balancer()
    parser.feed(html or "")
    parser.close()
    return "".join(parser.parts) + "".join(f"</{tag}>" for tag in reversed(parser.open))


# The Viewer's Jinja filters for its Voila template (``c.VoilaExporter.filters``); without them the template
# leaves HTML outputs to Voila's front end.
EXPORTER_FILTERS = {"carnet_balanced": "carnet.extension.html_fragments.balanced"}
